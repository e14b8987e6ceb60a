"""KFP component: register the adapter in MLflow with lineage and metrics, then run the promotion gate."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from components._common import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register_model(
    model: Input[Model],
    evaluation: Input[Artifact],
    base_model: str,
    model_name: str,
    lineage_json: str,
    mlflow_run_id: str,
    promote: bool,
    gate_rules: dict,
) -> NamedTuple("RegisterOutputs", [("model_uri", str), ("version", str), ("promoted", bool), ("summary", str)]):
    import json
    from collections import namedtuple
    from pathlib import Path

    from spf_lib.settings import quiet_third_parties
    from spf_lib.stages import register_stage

    quiet_third_parties()
    result = register_stage(Path(model.path) / "adapter", evaluation.path, base_model, model_name,
                            json.loads(lineage_json), promote, gate_rules, run_id=mlflow_run_id or None)
    reg = result["registered"]
    promoted = bool(result["promotion"] and result["promotion"].get("passed"))
    out = namedtuple("RegisterOutputs", ["model_uri", "version", "promoted", "summary"])
    return out(f"models:/{reg['name']}/{reg['version']}", str(reg["version"]), promoted, json.dumps(result))
