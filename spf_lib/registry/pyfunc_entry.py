"""Models-from-code entry point of the identity-method pyfunc: MLflow executes this file when loading the model."""

import mlflow

from spf_lib.registry.pyfunc_model import SpfAdapterModel

mlflow.models.set_model(SpfAdapterModel())
