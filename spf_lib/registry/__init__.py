"""MLflow registration with lineage, the champion/challenger promotion gate, rollback and lineage lookup.

No module here imports mlflow at import time (except ``pyfunc_model``, which only MLflow loads).
"""

from spf_lib.registry.register import CHALLENGER, RegisteredVersion, register_model

__all__ = ["CHALLENGER", "RegisteredVersion", "register_model"]
