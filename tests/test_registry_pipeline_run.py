"""One MLflow run per pipeline run: found by its kfp_run_id tag or created, a child per branch, classic UI view."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _registry_helpers import embedded, embedded_store  # noqa: F401

pytestmark = pytest.mark.integration


def test_parent_and_branch_runs_are_found_again(embedded, tmp_path):  # noqa: F811
    from spf_lib.registry.session import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, pipeline_run

    with pipeline_run("run-aaaa1111", "spf-portrait-2026-12-02-10-00-00") as parent:
        parent.log_metrics({"n_kept": 5})
        exp = parent.client.get_experiment(parent.experiment_id)
        assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    with pipeline_run("run-aaaa1111", branch="spf") as spf, pipeline_run("run-aaaa1111", branch="lora") as lora:
        spf.log_artifact(_file(tmp_path / "a.txt"), artifact_path="comparison")
        assert spf.parent_run_id == lora.parent_run_id == parent.run_id
        assert spf.run_id != lora.run_id
        run = spf.client.get_run(spf.run_id)
        assert run.info.run_name == "spf" and run.data.tags["mlflow.parentRunId"] == parent.run_id
    with pipeline_run("run-aaaa1111") as again, pipeline_run("run-aaaa1111", branch="spf") as spf_again:
        assert again.run_id == parent.run_id and spf_again.run_id == spf.run_id
        assert again.client.get_run(again.run_id).info.run_name == "spf-portrait-2026-12-02-10-00-00"
        assert "comparison/a.txt" in {a.path for a in again.client.list_artifacts(spf.run_id, "comparison")}
    with pipeline_run("run-bbbb2222") as other:
        assert other.run_id != parent.run_id


def test_a_racing_duplicate_is_resolved_to_the_oldest(embedded):  # noqa: F811
    import mlflow

    from spf_lib.registry.session import BRANCH_TAG, KFP_RUN_TAG, PIPELINE_BRANCH, mlflow_session, pipeline_run

    with pipeline_run("run-race") as first:
        pass
    with mlflow_session():
        # what a second task does when it created its run between the first task's create and search
        late = mlflow.MlflowClient().create_run(first.experiment_id, tags={KFP_RUN_TAG: "run-race",
                                                                          BRANCH_TAG: PIPELINE_BRANCH})
    with pipeline_run("run-race") as again:
        assert again.run_id == first.run_id != late.info.run_id


def test_the_last_branch_to_end_closes_the_parent(embedded):  # noqa: F811
    from spf_lib.registry.session import end_pipeline_run, pipeline_run

    with pipeline_run("run-end", branch="spf") as spf, pipeline_run("run-end", branch="lora") as lora:
        end_pipeline_run(spf)
        assert spf.client.get_run(spf.parent_run_id).info.status == "RUNNING"
        end_pipeline_run(lora)
        assert spf.client.get_run(spf.parent_run_id).info.status == "FINISHED"


def test_a_placeholder_run_id_is_refused(embedded):  # noqa: F811
    from spf_lib.errors import SpfError
    from spf_lib.registry.session import pipeline_run

    with pytest.raises(SpfError, match="placeholder"), pipeline_run("{{$.pipeline_job_uuid}}"):
        pass


def _file(path: Path) -> Path:
    path.write_text("evidence")
    return path


def test_ui_links_open_the_classic_view():
    """MLflow 3.17 reads the view from ?workflowType= (default GenAI/Traces), not only from the experiment tag."""
    from spf_lib.registry.session import ui_url

    classic = "?workflowType=machine_learning"
    assert ui_url("http://u:p@h:5000/", experiment_id="3") == f"http://***@h:5000/#/experiments/3{classic}"
    assert ui_url("http://h", experiment_id="3", run_id="r").endswith(f"/#/experiments/3/runs/r{classic}")
    assert ui_url("http://h", model="m", version="2") == f"http://h/#/models/m/versions/2{classic}"
