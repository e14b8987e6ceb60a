"""Celeb Basis (Yuan et al., NeurIPS 2023): an identity as 2 x k coefficients over a basis of celebrity-name tokens.

Modules: ``basis`` (names → basis tensor), ``encoder`` (pluggable frozen face encoder), ``model`` (the MLP),
``method`` (training-loop plugin), ``adapter`` (loader used by ``spf_lib.methods.load_adapter``), ``tokens``
(placeholder-token helpers shared with Beyond Inserting). See docs/identity-methods.md.
"""
