"""Shared fixtures for the kube/infra tests: a small pipeline wired like the real one, compile helpers.

No `from __future__ import annotations` here: KFP reads the component annotations as real types.
"""


from pathlib import Path

import yaml
from kfp import compiler, dsl

from pipelines import platform

REPO = Path(__file__).resolve().parent.parent
IMAGE = "ghcr.io/spf-portrait/spf:test"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prep(data_rev: str, out: dsl.Output[dsl.Dataset]) -> str:
    from pathlib import Path

    Path(out.path).mkdir(parents=True, exist_ok=True)
    (Path(out.path) / "rev.txt").write_text(data_rev)
    return data_rev


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def fit(data: dsl.Input[dsl.Dataset], kfp_run_id: str, model: dsl.Output[dsl.Model]) -> str:
    import os
    from pathlib import Path

    from pipelines.runtime import checkpoint_dir

    ckpt = checkpoint_dir(kfp_run_id, default=os.path.join(model.path, "checkpoints"))
    Path(ckpt).mkdir(parents=True, exist_ok=True)
    rev = (Path(data.path) / "rev.txt").read_text()
    Path(model.path, "weights.txt").write_text(f"trained on {rev}")
    return ckpt


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def score(model: dsl.Input[dsl.Model]) -> float:
    from pathlib import Path

    return float(len(Path(model.path, "weights.txt").read_text()))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def record(value: float) -> str:
    return f"registered {value}"


@dsl.pipeline(name="spf-kube-test")
def tiny_pipeline(
    data_rev: str = "abc123",
    accelerator_type: str = "nvidia.com/gpu",
    accelerator_count: int = 2,
    node_selector_json: dict = {"cloud.google.com/gke-accelerator": "nvidia-l4"},  # noqa: B006 - KFP default
    tolerations_json: list = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],  # noqa: B006
    s3_secret_name: str = "spf-s3",
    mlflow_secret_name: str = "spf-mlflow",
) -> None:
    params = {
        "accelerator_type": accelerator_type,
        "accelerator_count": accelerator_count,
        "node_selector_json": node_selector_json,
        "tolerations_json": tolerations_json,
        "s3_secret_name": s3_secret_name,
        "mlflow_secret_name": mlflow_secret_name,
        "data_rev": data_rev,  # not a platform key: ignored by the hooks
    }
    p = prep(data_rev=data_rev)
    platform.configure_prepare(p, params)
    t = fit(data=p.outputs["out"], kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    platform.configure_train(t, params)
    e = score(model=t.outputs["model"])
    platform.configure_evaluate(e, params)
    r = record(value=e.output)
    platform.configure_register(r, params)


def compile_to(pipeline, path: Path) -> list[dict]:
    """Compile and return the YAML documents (pipeline spec, then the platform spec)."""
    compiler.Compiler().compile(pipeline, package_path=str(path))
    return list(yaml.safe_load_all(path.read_text()))
