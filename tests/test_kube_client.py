"""The client builds the request bodies Kubeflow's API expects (checked on the wire against a recording server)."""

import json
import subprocess
from pathlib import Path

import kfp_server_api
import pytest

from pipelines import client as kc
from pipelines import versioning
from spf_lib.errors import SpfError
from tests._kube_helpers import API, FakeKfp, compile_to, tiny_pipeline

TOKEN = "test-token-abc"


@pytest.fixture()
def kfp_server(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp writes a context file under ~/.config/kfp
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    with FakeKfp() as server:
        yield server


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pkg") / "spf.yaml"
    compile_to(tiny_pipeline, path)
    return path


def _model(req: dict, model: type):
    """Deserialize a recorded JSON body with kfp_server_api's own model (fails on unknown shapes)."""
    api = kfp_server_api.ApiClient()
    return api._ApiClient__deserialize(req["json"], model.__name__)


def test_token_from_env_goes_into_the_bearer_header(kfp_server, monkeypatch, package):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    client = kc.connect(kfp_server.host)
    kc.upload(client, package, "spf-portrait", "0.1.0-abc")
    assert {r["headers"].get("authorization") for r in kfp_server.requests} == {f"Bearer {TOKEN}"}


def test_namespace_reaches_the_experiment(kfp_server):
    kfp_server.multi_user = True
    client = kc.connect(kfp_server.host, namespace="team-a", token=TOKEN)
    client.create_experiment("nightly")
    (exp,) = kfp_server.calls("POST", f"{API}/experiments")
    assert _model(exp, kfp_server_api.V2beta1Experiment).namespace == "team-a"
    assert kfp_server.calls("GET", f"{API}/experiments")[0]["query"]["namespace"] == ["team-a"]


def test_upload_creates_pipeline_then_version_idempotently(kfp_server, package):
    client = kc.connect(kfp_server.host, token=TOKEN)
    ref = kc.upload(client, package, "spf-portrait", "0.1.0-abc", description="portrait")
    (create,) = kfp_server.calls("POST", f"{API}/pipelines")
    pipeline = _model(create, kfp_server_api.V2beta1Pipeline)
    assert pipeline.display_name == "spf-portrait" and pipeline.description == "portrait"
    (up,) = kfp_server.calls("POST", f"{API}/pipelines/upload_version")
    assert up["query"]["name"] == ["0.1.0-abc"] and up["query"]["pipelineid"] == [ref.pipeline_id]
    assert up["headers"]["content-type"].startswith("multipart/form-data")
    assert package.read_bytes() in up["raw"]  # the compiled YAML is what travels
    again = kc.upload(client, package, "spf-portrait", "0.1.0-abc")
    assert again == ref and len(kfp_server.calls("POST", f"{API}/pipelines/upload_version")) == 1
    kc.upload(client, package, "spf-portrait", "0.1.0-def")
    assert len(kfp_server.calls("POST", f"{API}/pipelines")) == 1  # second version, same pipeline
    assert len(kfp_server.versions[ref.pipeline_id]) == 2


def test_submit_a_version_and_a_package(kfp_server, package):
    client = kc.connect(kfp_server.host, token=TOKEN)
    ref = kc.upload(client, package, "spf-portrait", "0.1.0-abc")
    run_id = kc.submit(client, pipeline="spf-portrait", version="0.1.0-abc", experiment="nightly",
                       params={"data_rev": "c0ffee", "accelerator_count": 4})
    assert run_id.startswith("run-")
    (exp,) = kfp_server.calls("POST", f"{API}/experiments")
    assert _model(exp, kfp_server_api.V2beta1Experiment).display_name == "nightly"
    run = _model(kfp_server.calls("POST", f"{API}/runs")[0], kfp_server_api.V2beta1Run)
    assert run.pipeline_version_reference.pipeline_id == ref.pipeline_id
    assert run.pipeline_version_reference.pipeline_version_id == ref.version_id
    assert run.runtime_config.parameters == {"data_rev": "c0ffee", "accelerator_count": 4}
    assert run.pipeline_spec is None and run.experiment_id in kfp_server.experiments

    kc.submit(client, package=package, experiment="nightly", params={"data_rev": "beef"})
    assert len(kfp_server.calls("POST", f"{API}/experiments")) == 1  # experiment reused
    run2 = _model(kfp_server.calls("POST", f"{API}/runs")[1], kfp_server_api.V2beta1Run)
    # a package run carries the pipeline spec AND the platform spec (GPU pool, secrets) inline
    assert run2.pipeline_spec["pipeline_spec"]["pipelineInfo"]["name"] == "spf-kube-test"
    executors = run2.pipeline_spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "nodeSelector" in executors["exec-fit"]
    assert run2.pipeline_version_reference is None


def test_submit_newest_version_when_none_given(kfp_server, package):
    client = kc.connect(kfp_server.host, token=TOKEN)
    kc.upload(client, package, "spf-portrait", "0.1.0-aaa")
    newest = kc.upload(client, package, "spf-portrait", "0.1.0-bbb")
    kc.submit(client, pipeline="spf-portrait", params={})
    run = _model(kfp_server.calls("POST", f"{API}/runs")[0], kfp_server_api.V2beta1Run)
    assert run.pipeline_version_reference.pipeline_version_id == newest.version_id
    assert run.display_name == "spf-portrait-0.1.0-bbb"


def test_schedule_six_field_cron_follows_newest_version(kfp_server, package):
    client = kc.connect(kfp_server.host, token=TOKEN)
    ref = kc.upload(client, package, "spf-portrait", "0.1.0-abc")
    kc.schedule(client, pipeline="spf-portrait", cron="30 2 * * 1-5", params={"data_rev": "main-sha"})
    (req,) = kfp_server.calls("POST", f"{API}/recurringruns")
    body = req["json"]
    assert body["trigger"] == {"cron_schedule": {"cron": "0 30 2 * * 1-5"}}
    assert body["max_concurrency"] == 1 and body["no_catchup"] is True and body["mode"] == "ENABLE"
    # only the pipeline id: the backend picks the newest version at every trigger
    assert body["pipeline_version_reference"] == {"pipeline_id": ref.pipeline_id}
    rr = _model(req, kfp_server_api.V2beta1RecurringRun)
    assert rr.trigger.cron_schedule.cron == "0 30 2 * * 1-5" and rr.runtime_config.parameters == {
        "data_rev": "main-sha"}
    with pytest.raises(SpfError, match="already exists"):
        kc.schedule(client, pipeline="spf-portrait", cron="@daily")
    first_id = next(iter(kfp_server.recurring))
    kc.schedule(client, pipeline="spf-portrait", cron="@daily", replace=True)
    assert len(kfp_server.calls("DELETE", f"{API}/recurringruns/{first_id}")) == 1
    assert [r["trigger"]["cron_schedule"]["cron"] for r in kfp_server.recurring.values()] == ["0 0 0 * * *"]


def test_schedule_pinned_version_and_bad_cron_sends_nothing(kfp_server, package):
    client = kc.connect(kfp_server.host, token=TOKEN)
    ref = kc.upload(client, package, "spf-portrait", "0.1.0-abc")
    kc.schedule(client, pipeline="spf-portrait", cron="0 0 3 * * *", version="0.1.0-abc", job_name="pinned")
    body = kfp_server.calls("POST", f"{API}/recurringruns")[0]["json"]
    assert body["pipeline_version_reference"] == {"pipeline_id": ref.pipeline_id,
                                                  "pipeline_version_id": ref.version_id}
    before = len(kfp_server.requests)
    with pytest.raises(SpfError, match=r"cron field 3 of 6 \(hour\): 25 is out of range 0-23"):
        kc.schedule(client, pipeline="spf-portrait", cron="0 25 * * *")
    assert len(kfp_server.requests) == before


def test_unknown_pipeline_is_a_clear_error(kfp_server):
    client = kc.connect(kfp_server.host, token=TOKEN)
    with pytest.raises(SpfError, match="'nope' not found"):
        kc.submit(client, pipeline="nope")
    with pytest.raises(SpfError, match="exactly one"):
        kc.submit(client)


@pytest.mark.parametrize(
    ("given", "expected"),
    [("*/15 * * * *", "0 */15 * * * *"), ("0 0 3 * * MON-FRI", "0 0 3 * * MON-FRI"), ("@hourly", "0 0 * * * *"),
     ("0 0 0 ? JAN,JUL *", "0 0 0 ? JAN,JUL *"), ("  5   4 * * 0 ", "0 5 4 * * 0")],
)
def test_cron_normalisation(given, expected):
    assert versioning.six_field_cron(given) == expected


@pytest.mark.parametrize(
    ("bad", "message"),
    [("* * *", "has 3 fields"), ("61 * * * * *", r"field 1 of 6 \(second\): 61"),
     ("0 0 0 32 * *", r"field 4 of 6 \(day-of-month\)"), ("0 0 0 * 13 *", r"field 5 of 6 \(month\)"),
     ("0 0 0 * * FUNDAY", r"field 6 of 6 \(day-of-week\)"), ("0 ? * * * *", r"field 2 of 6.*'\?'"),
     ("0 10-5 * * * *", "runs backwards"), ("0 */0 * * * *", "step"), ("@sometimes", "unknown descriptor")],
)
def test_cron_errors_name_the_field(bad, message):
    with pytest.raises(SpfError, match=message):
        versioning.six_field_cron(bad)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def _repo(tmp_path: Path, md5: str) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    (repo / "data.dvc").write_text(f"outs:\n- md5: {md5}\n  size: 10\n  nfiles: 2\n  path: data\n")
    _git(repo, "add", "data.dvc")
    _git(repo, "commit", "-qm", "data")
    return repo


def test_version_name_from_package_version_and_git(tmp_path, package):
    repo = _repo(tmp_path, "a" * 32 + ".dir")
    sha = _git(repo, "rev-parse", "--short=12", "HEAD")
    assert versioning.version_name(package, repo) == f"0.1.0-{sha}"
    (repo / "data.dvc").write_text("outs: []\n")
    dirty = versioning.version_name(package, repo)
    assert dirty.startswith(f"0.1.0-{sha}-dirty-") and len(dirty.rsplit("-", 1)[1]) == 8
    assert versioning.version_name(None, tmp_path / "nowhere") == "0.1.0-unknown"


def _champion(tracking_uri: str, data_hash: str | None) -> None:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    c.create_registered_model("spf")
    mv = c.create_model_version("spf", source="file:///tmp/adapter")
    if data_hash:
        c.set_model_version_tag("spf", mv.version, "data_hash", data_hash)
    c.set_registered_model_alias("spf", "champion", mv.version)


@pytest.mark.integration
def test_retrain_only_when_data_changed(kfp_server, package, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    old, new = "1" * 32 + ".dir", "2" * 32 + ".dir"
    repo = _repo(tmp_path, old)
    client = kc.connect(kfp_server.host, token=TOKEN)
    kc.upload(client, package, "spf-portrait", "0.1.0-abc")

    first = kc.retrain_if_changed(lambda: client, dvc_file=repo / "data.dvc", model_name="spf", tracking_uri=uri,
                                  pipeline="spf-portrait")
    assert first.submitted and first.reason == "no champion yet"

    _champion(uri, old)
    calls = []
    same = kc.retrain_if_changed(lambda: calls.append(1), dvc_file=repo / "data.dvc", model_name="spf",
                                 tracking_uri=uri, pipeline="spf-portrait")
    assert not same.submitted and same.champion_hash == old and calls == []  # Kubeflow never contacted

    (repo / "data.dvc").write_text(f"outs:\n- md5: {new}\n  path: data\n")
    with pytest.raises(SpfError, match="uncommitted"):
        kc.retrain_if_changed(lambda: client, dvc_file=repo / "data.dvc", model_name="spf", tracking_uri=uri,
                              pipeline="spf-portrait")
    _git(repo, "commit", "-qam", "new data")
    changed = kc.retrain_if_changed(lambda: client, dvc_file=repo / "data.dvc", model_name="spf", tracking_uri=uri,
                                    pipeline="spf-portrait", params={"method": "spf"})
    assert changed.submitted and changed.current_hash == new and changed.champion_hash == old
    body = kfp_server.calls("POST", f"{API}/runs")[-1]["json"]
    assert body["runtime_config"]["parameters"] == {"method": "spf", "data_rev": _git(repo, "rev-parse", "HEAD")}


def test_dvc_file_errors(tmp_path):
    with pytest.raises(SpfError, match="not found"):
        versioning.dvc_data_hash(tmp_path / "data.dvc")
    (tmp_path / "data.dvc").write_text("outs:\n- path: data\n")
    with pytest.raises(SpfError, match=r"outs\[0\]\.md5"):
        versioning.dvc_data_hash(tmp_path / "data.dvc")
    (tmp_path / "data.dvc").write_text(json.dumps({"outs": [{"md5": "abc.dir"}]}))
    assert versioning.dvc_data_hash(tmp_path / "data.dvc") == "abc.dir"
