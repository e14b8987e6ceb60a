"""Beyond Inserting (Li et al., arXiv 2402.00631): V* → per-stage (K, V) tokens + a face-wise attention loss.

Modules: ``module`` (the trainable token generator), ``inject`` (stage processors, packing, attention loss),
``method`` (training-loop plugin), ``adapter`` (loader for ``spf_lib.methods.load_adapter``).
See docs/identity-methods.md for the paper-vs-ours choices.
"""
