"""The spf-portrait pipeline: prepare → train → evaluate → register (+ promotion gate).

(No ``from __future__ import annotations`` here: kfp reads the real annotation objects.)

One DAG for the laptop and the cluster: locally kfp's SubprocessRunner ignores the Kubernetes settings that
``pipelines.platform`` attaches; on Kubeflow they place training on GPU node pools.
"""


import os
from typing import NamedTuple

from kfp import dsl

from components.compare import compare_models
from components.evaluate import evaluate_model
from components.prepare import prepare_data
from components.register import register_model
from components.train import train_model
from pipelines import platform

PIPELINE_NAME = "spf-portrait"
# SPF_PIPELINE_RETRIES=N overrides every task's retries in the compiled DAG (pipelines.local uses build_pipeline).
_RETRIES = os.environ.get("SPF_PIPELINE_RETRIES")
RETRY_OVERRIDES = {} if _RETRIES is None else {f"{s}_retries": int(_RETRIES)
                                                for s in ("prepare", "train", "eval", "register")}
LOCAL_RETRIES = {f"{s}_retries": 0 for s in ("prepare", "train", "eval", "register")}


def pipeline_version() -> str:
    """``<package version>+g<short sha>`` (``.dirty`` when the tree has changes): the KFP pipeline version name."""
    from spf_lib import __version__
    from spf_lib.lineage import code_revision

    rev = code_revision()
    if rev == "unknown":
        return __version__
    sha = rev.split("-")[0][:8]
    return f"{__version__}+g{sha}" + (".dirty" if rev.endswith("-dirty") else "")


def build_pipeline(retry_overrides: dict | None = None):
    """The pipeline with ``retry_overrides`` (e.g. ``{"train_retries": 0}``) applied to every task.

    kfp builds the DAG when the function is decorated, so per-task settings that differ between the cluster
    (retries with minutes of backoff for preemptible nodes) and a local run (fail at once) need a fresh
    decoration; ``pipelines.local`` builds its own fail-fast copy whatever was imported before it.
    """
    retry_overrides = dict(retry_overrides or {})

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Fine-tune a portrait text-to-image model on DVC-versioned data without semantic pollution; "
        "evaluate against the original; register in MLflow and promote by alias.",
    )
    def portrait_pipeline(
        data_repo: str,
        base_model: str,
        data_rev: str = "HEAD",
        method: str = "spf",
        baseline_method: str = "",
        prepare_config: dict = {},  # noqa: B006 - KFP reads the default; PrepareConfig fields (docs/operations.md)
        train_config: dict = {},  # noqa: B006 - TrainConfig fields
        eval_config: dict = {},  # noqa: B006 - EvalConfig fields
        model_name: str = "spf-portrait",
        promote: bool = True,
        gate_rules: dict = {},  # noqa: B006 - GateRules fields ({} = the registry's default rules)
        pipeline_version: str = "dev",
        accelerator_type: str = "nvidia.com/gpu",
        accelerator_count: int = 1,
        eval_accelerator_count: int = 1,
        node_selector: dict = {},  # noqa: B006 - e.g. {"cloud.google.com/gke-accelerator": "nvidia-l4"}
        tolerations: list = [],  # noqa: B006 - Kubernetes toleration objects for the GPU pool's taints
        s3_secret_name: str = "spf-s3",
        mlflow_secret_name: str = "spf-mlflow",
    ) -> NamedTuple("PipelineOutputs", [("registration", str), ("metrics", str), ("data_rev", str),
                                              ("n_kept", int), ("n_rejected", int), ("final_loss", float),
                                              ("comparison", str)]):
        params = {
            "accelerator_type": accelerator_type, "accelerator_count": accelerator_count,
            "eval_accelerator_count": eval_accelerator_count, "node_selector": node_selector,
            "tolerations": tolerations, "s3_secret_name": s3_secret_name, "mlflow_secret_name": mlflow_secret_name,
            **retry_overrides,
        }
        prep = prepare_data(data_repo=data_repo, data_rev=data_rev, prepare_config=prepare_config)
        prep.set_display_name("prepare data (faces + QA)")
        platform.configure_prepare(prep, params)

        train = train_model(
            prepared=prep.outputs["prepared"], base_model=base_model, method=method,
            train_config=train_config, pipeline_name=PIPELINE_NAME, pipeline_version=pipeline_version,
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, pipeline_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        )
        train.set_display_name("train adapter")
        platform.configure_train(train, params)

        ev = evaluate_model(model=train.outputs["model"], prepared=prep.outputs["prepared"], base_model=base_model,
                            eval_config=eval_config)
        ev.set_display_name("evaluate vs original")
        platform.configure_evaluate(ev, params)

        reg = register_model(
            model=train.outputs["model"], evaluation=ev.outputs["evaluation"], base_model=base_model,
            model_name=model_name, lineage_json=train.outputs["lineage_json"],
            mlflow_run_id=train.outputs["mlflow_run_id"], promote=promote, gate_rules=gate_rules,
        )
        reg.set_display_name("register + promotion gate")
        platform.configure_register(reg, params)

        # The baseline branch: same prepared data, same eval set and seeds, evaluated but never registered, so the
        # comparison shows what the chosen method avoids (e.g. LoRA's pollution beside SPF's).
        with dsl.If(baseline_method != "", name="with-baseline"):
            btrain = train_model(
                prepared=prep.outputs["prepared"], base_model=base_model, method=baseline_method,
                train_config=train_config, pipeline_name=PIPELINE_NAME, pipeline_version=pipeline_version,
                kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, pipeline_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            )
            btrain.set_display_name("train baseline adapter")
            platform.configure_train(btrain, params)
            bev = evaluate_model(model=btrain.outputs["model"], prepared=prep.outputs["prepared"],
                                 base_model=base_model, eval_config=eval_config)
            bev.set_display_name("evaluate baseline vs original")
            platform.configure_evaluate(bev, params)
            cmp = compare_models(evaluation=ev.outputs["evaluation"], baseline_evaluation=bev.outputs["evaluation"],
                                 method=method, baseline_method=baseline_method,
                                 kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                 pipeline_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
            cmp.set_display_name("comparison picture")
            platform.configure_compare(cmp, params)
        with dsl.Else(name="without-baseline"):
            solo = compare_models(evaluation=ev.outputs["evaluation"], baseline_evaluation=ev.outputs["evaluation"],
                                  method=method, baseline_method="", kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                  pipeline_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
            solo.set_display_name("comparison picture")
            platform.configure_compare(solo, params)
        outputs = NamedTuple("PipelineOutputs", [("registration", str), ("metrics", str), ("data_rev", str),
                                                 ("n_kept", int), ("n_rejected", int), ("final_loss", float),
                                                 ("comparison", str)])
        return outputs(reg.outputs["summary"], ev.outputs["Output"], prep.outputs["data_rev"], prep.outputs["n_kept"],
                       prep.outputs["n_rejected"], train.outputs["final_loss"],
                       dsl.OneOf(cmp.outputs["Output"], solo.outputs["Output"]))

    return portrait_pipeline


portrait_pipeline = build_pipeline(RETRY_OVERRIDES)


def compile_pipeline(output: str, version: str | None = None) -> str:
    """Compile to YAML with ``pipeline_version`` defaulted to this code's version."""
    from kfp import compiler

    version = version or pipeline_version()
    compiler.Compiler().compile(
        portrait_pipeline, package_path=output, pipeline_name=PIPELINE_NAME,
        pipeline_parameters={"pipeline_version": version},
    )
    return output
