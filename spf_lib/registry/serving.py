"""Load a registered version the way a serving tool would (pyfunc), against our configured registry."""

from __future__ import annotations

from spf_lib.registry.session import RetryPolicy, mlflow_session, redact_uri, with_retries
from spf_lib.settings import Settings


def load_model(model_uri: str, *, settings: Settings | None = None, retry: RetryPolicy | None = None):
    """``mlflow.pyfunc.load_model`` with the tracking/registry URIs of ``settings``; predict returns PNG bytes."""
    import mlflow.pyfunc

    with mlflow_session(settings) as s:
        return with_retries(f"load {model_uri}", lambda: mlflow.pyfunc.load_model(model_uri),
                            target=redact_uri(s.tracking_uri), policy=retry)
