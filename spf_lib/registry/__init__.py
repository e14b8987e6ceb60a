"""MLflow registration with lineage, the champion/challenger promotion gate, rollback and lineage lookup.

No module here imports mlflow at import time (except ``pyfunc_model``, which only MLflow loads).
"""

from spf_lib.registry.gate import CHALLENGER, CHAMPION, PREVIOUS, GateRules, MetricRule
from spf_lib.registry.lineage import format_lineage, lineage
from spf_lib.registry.promotion import GateFailed, PromotionResult, RollbackResult, promote, rollback
from spf_lib.registry.register import RegisteredVersion, register_model
from spf_lib.registry.serving import load_model
from spf_lib.registry.session import RetryPolicy, mlflow_session

__all__ = ["CHALLENGER", "CHAMPION", "PREVIOUS", "GateFailed", "GateRules", "MetricRule", "PromotionResult",
           "RegisteredVersion", "RetryPolicy", "RollbackResult", "format_lineage", "lineage", "load_model",
           "mlflow_session", "promote", "register_model", "rollback"]
