"""KFP component: original vs tuned on fixed prompts and seeds; ID, CLIP and pollution scores; HTML report."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components._common import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def evaluate_model(
    model: Input[Model],
    prepared: Input[Dataset],
    base_model: str,
    eval_config: dict,
    evaluation: Output[Artifact],
    eval_metrics: Output[Metrics],
    report: Output[HTML],
) -> str:
    import json
    from pathlib import Path

    from spf_lib.settings import quiet_third_parties
    from spf_lib.stages import evaluate_stage

    quiet_third_parties()
    adapter_dir = Path(model.path) / "adapter"
    # prepared: the identity methods' reference faces (its crops) travel from the prepare task
    evaluate_stage(adapter_dir, base_model, eval_config, evaluation.path,
                   mlflow_run_id=model.metadata.get("mlflow_run_id") or None, prepared_dir=prepared.path)
    metrics = json.loads((Path(evaluation.path) / "metrics.json").read_text())
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            eval_metrics.log_metric(key, float(value))
    page = Path(evaluation.path) / "report.html"
    if page.is_file():  # KFP's viewer shows one file: the report with its PNGs inlined (spf_lib/eval/report.py)
        from spf_lib.eval.report import inline_images

        Path(report.path).write_text(inline_images(page.read_text(encoding="utf-8"), page.parent), encoding="utf-8")
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, type(None)))}
    return json.dumps({**flat, "unavailable": metrics.get("unavailable", {})})
