"""KFP component: one labelled picture, original | baseline | chosen method on the same prompts and seeds."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Output

from components._common import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def compare_models(
    evaluation: Input[Artifact],
    baseline_evaluation: Input[Artifact],
    method: str,
    baseline_method: str,
    kfp_run_id: str,
    comparison: Output[Artifact],
    picture: Output[HTML],
    pipeline_run_name: str = "",
) -> str:
    import json
    from pathlib import Path

    from spf_lib.settings import quiet_third_parties
    from spf_lib.stages import compare_stage

    quiet_third_parties()
    # Without a baseline the same evaluation comes in twice (KFP has no optional input here); draw it once.
    columns = {baseline_method: baseline_evaluation.path} if baseline_method else {}
    columns[method] = evaluation.path
    result = compare_stage(columns, comparison.path, kfp_run_id=kfp_run_id, run_name=pipeline_run_name)
    Path(picture.path).write_text(Path(result["html"]).read_text(encoding="utf-8"), encoding="utf-8")
    comparison.metadata.update({"picture": result["picture"], "columns": result["columns"]})
    return json.dumps(result)
