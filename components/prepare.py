"""KFP component: pull the DVC-versioned data at a revision, crop faces, run the Great Expectations suite."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Metrics, Output

from components._common import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def prepare_data(
    data_repo: str,
    data_rev: str,
    prepare_config: dict,
    prepared: Output[Dataset],
    qa_report: Output[HTML],
    qa_metrics: Output[Metrics],
) -> NamedTuple("PrepareOutputs", [("data_rev", str), ("data_hash", str), ("n_kept", int), ("n_rejected", int)]):
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from spf_lib.settings import quiet_third_parties
    from spf_lib.stages import prepare_stage

    quiet_third_parties()
    summary = prepare_stage(data_repo, data_rev, prepare_config, prepared.path)
    prepared.metadata.update({k: summary[k] for k in ("data_rev", "data_hash", "data_repo", "n_kept", "n_rejected")})
    report = Path(prepared.path) / "qa" / "report.html"
    if report.is_file():
        shutil.copyfile(report, qa_report.path)
    else:
        Path(qa_report.path).write_text("<html><body>no QA report was written</body></html>")
    for key in ("n_input", "n_kept", "n_rejected"):
        if isinstance(summary.get(key), (int, float)):
            qa_metrics.log_metric(key, summary[key])
    out = namedtuple("PrepareOutputs", ["data_rev", "data_hash", "n_kept", "n_rejected"])
    return out(summary["data_rev"], summary["data_hash"], int(summary["n_kept"]), int(summary["n_rejected"]))
