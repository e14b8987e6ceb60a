"""KFP component: fine-tune the base model on the prepared data (LoRA, SPF, Celeb Basis, Beyond Inserting)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._common import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_model(
    prepared: Input[Dataset],
    base_model: str,
    method: str,
    train_config: dict,
    pipeline_name: str,
    pipeline_version: str,
    kfp_run_id: str,
    model: Output[Model],
    train_metrics: Output[Metrics],
    pipeline_run_name: str = "",
    branch: str = "",
) -> NamedTuple("TrainOutputs", [("lineage_json", str), ("mlflow_run_id", str), ("final_loss", float)]):
    import json
    from collections import namedtuple

    from pipelines.runtime import checkpoint_dir, train_launch_prefix, visible_gpu_count
    from spf_lib.lineage import code_revision, make_lineage
    from spf_lib.settings import quiet_third_parties
    from spf_lib.stages import train_stage

    quiet_third_parties()
    lineage = make_lineage(
        data_rev=prepared.metadata.get("data_rev"), data_hash=prepared.metadata.get("data_hash"),
        code_rev=code_revision(), pipeline_name=pipeline_name, pipeline_version=pipeline_version,
        kfp_run_id=kfp_run_id, method=method, base_model=base_model,
    )
    # On the cluster checkpoints live on a PVC per run, so a retried pod resumes; locally in the output folder.
    work = checkpoint_dir(kfp_run_id, default=model.path)
    launcher = train_launch_prefix() if visible_gpu_count() > 1 else None
    # MLflow: the branch's child run of this pipeline run (named after it); evaluate/register find it in metadata
    summary = train_stage(prepared.path, base_model, method, train_config, model.path, lineage,
                          work_dir=None if work == model.path else work, launcher=launcher,
                          mlflow_branch=branch, pipeline_run_name=pipeline_run_name or None,
                          data_repo=prepared.metadata.get("data_repo"))
    model.metadata.update({**summary["lineage"], "format": "spf-adapter",
                           "mlflow_run_id": str(summary.get("mlflow_run_id") or "")})
    final_loss = float(summary.get("final_loss") or 0.0)
    train_metrics.log_metric("final_loss", final_loss)
    train_metrics.log_metric("steps", float(summary.get("steps") or 0))
    out = namedtuple("TrainOutputs", ["lineage_json", "mlflow_run_id", "final_loss"])
    return out(json.dumps(summary["lineage"]), str(summary.get("mlflow_run_id") or ""), final_loss)
