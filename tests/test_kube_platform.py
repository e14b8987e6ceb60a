"""The compiled pipeline YAML carries what Kubeflow needs to place and protect each task.

No `from __future__ import annotations`: pipelines defined here need real annotations.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
from kfp import dsl

from pipelines import platform
from tests._kube_helpers import compile_to, prep, tiny_pipeline

CANARY = "canary-SECRET-value-9f8e7d"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict, str]:
    # Credentials present in the compiling process must not leak into the package.
    old = {k: os.environ.get(k) for k in ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "KF_PIPELINES_TOKEN")}
    os.environ.update({k: CANARY for k in old})
    try:
        path = tmp_path_factory.mktemp("yaml") / "p.yaml"
        spec, platform_spec = compile_to(tiny_pipeline, path)
        return spec, platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"], path.read_text()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _container(spec: dict, name: str) -> dict:
    return spec["deploymentSpec"]["executors"][f"exec-{name}"]["container"]


def _task(spec: dict, name: str) -> dict:
    return spec["root"]["dag"]["tasks"][name]


def test_gpu_resources_come_from_pipeline_parameters(compiled):
    spec, _, _ = compiled
    train = _container(spec, "fit")["resources"]
    assert "pipelinechannel--accelerator_type" in train["accelerator"]["resourceType"]
    assert "pipelinechannel--accelerator_count" in train["accelerator"]["resourceCount"]
    assert train["resourceCpuRequest"] == "8" and train["resourceMemoryLimit"] == "64Gi"
    evaluate = _container(spec, "score")["resources"]
    assert evaluate["accelerator"]["resourceCount"] == "1"
    assert "accelerator" not in _container(spec, "prep")["resources"]
    assert "accelerator" not in _container(spec, "record")["resources"]


def test_node_selector_and_tolerations_are_per_run(compiled):
    _, k8s, _ = compiled
    for gpu_task in ("exec-fit", "exec-score"):
        assert k8s[gpu_task]["nodeSelector"] == {"nodeSelectorJson": {"componentInputParameter": "node_selector"}}
        assert k8s[gpu_task]["tolerations"] == [{"tolerationJson": {"componentInputParameter": "tolerations"}}]
    assert "nodeSelector" not in k8s["exec-prep"] and "tolerations" not in k8s["exec-record"]


def test_secrets_are_referenced_by_name_and_key(compiled):
    _, k8s, _ = compiled
    for name in ("exec-fit", "exec-score", "exec-record"):
        refs = {r["secretNameParameter"]["componentInputParameter"]: r for r in k8s[name]["secretAsEnv"]}
        assert set(refs) == {"s3_secret_name", "mlflow_secret_name"}
        assert {e["envVar"] for e in refs["s3_secret_name"]["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert refs["s3_secret_name"]["optional"] is False and refs["mlflow_secret_name"]["optional"] is True
    prep_refs = [r["secretNameParameter"].get("componentInputParameter") or r["secretName"]
                 for r in k8s["exec-prep"]["secretAsEnv"]]
    assert prep_refs == ["s3_secret_name", "spf-git"]  # + the optional private-data-repo token (issue 16)
    assert k8s["exec-fit"]["configMapAsEnv"][0]["configMapName"] == "spf-config"


def test_no_secret_value_in_the_package(compiled):
    spec, _, text = compiled
    assert CANARY not in text
    for executor in spec["deploymentSpec"]["executors"].values():
        for env in executor["container"].get("env", []):
            assert "SECRET" not in env["name"] and "PASSWORD" not in env["name"] and "TOKEN" not in env["name"]


def test_shm_checkpoint_volume_and_timeout_on_train(compiled):
    spec, k8s, _ = compiled
    for gpu_task in ("exec-fit", "exec-score"):
        (shm,) = k8s[gpu_task]["emptyDirMounts"]
        assert shm == {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "16Gi", "volumeName": "dshm"}
    (pvc,) = k8s["exec-fit"]["pvcMount"]
    assert pvc["mountPath"] == platform.CHECKPOINT_MOUNT and pvc["constant"] == "spf-checkpoints"
    assert k8s["exec-fit"]["activeDeadlineSeconds"] == "86400"
    env = {e["name"]: e["value"] for e in _container(spec, "fit")["env"]}
    assert env["SPF_CHECKPOINT_ROOT"] == platform.CHECKPOINT_MOUNT and env["SPF_RESUME"] == "latest"
    # the run id reaches the train task so retries of one run share a checkpoint folder
    run_id = _task(spec, "fit")["inputs"]["parameters"]["kfp_run_id"]["runtimeValue"]["constant"]
    assert run_id == "{{$.pipeline_job_uuid}}"


def test_retry_and_caching_policy(compiled):
    spec, _, _ = compiled
    assert _task(spec, "prep")["cachingOptions"] == {"enableCache": True}
    # data_rev is an input of the cached step, so the cache is keyed on the data revision
    assert _task(spec, "prep")["inputs"]["parameters"]["data_rev"] == {"componentInputParameter": "data_rev"}
    for name in ("fit", "score", "record"):
        assert not _task(spec, name)["cachingOptions"].get("enableCache", False)
    train_retry = _task(spec, "fit")["retryPolicy"]
    assert train_retry == {"backoffDuration": "60s", "backoffFactor": 2.0, "backoffMaxDuration": "3600s",
                           "maxRetryCount": 3}
    assert _task(spec, "score")["retryPolicy"]["maxRetryCount"] == 2


def test_bad_constants_are_rejected_naming_the_key():
    with pytest.raises(ValueError, match="accelerator_count"):
        @dsl.pipeline(name="bad")
        def bad() -> None:
            platform.configure_train(prep(data_rev="x"), {"accelerator_count": -1})
    with pytest.raises(ValueError, match="node_selector"):
        @dsl.pipeline(name="bad2")
        def bad2() -> None:
            platform.configure_evaluate(prep(data_rev="x"), {"node_selector": "pool=a100"})
    with pytest.raises(ValueError, match="shm_size"):
        @dsl.pipeline(name="bad3")
        def bad3(size: str = "1Gi") -> None:
            platform.configure_train(prep(data_rev="x"), {"shm_size": size})


def test_constant_node_pool_compiles_inline(tmp_path):
    @dsl.pipeline(name="const-pool")
    def p() -> None:
        platform.configure_train(
            prep(data_rev="x"),
            {"accelerator_count": 4, "node_selector": {"pool": "a100"}, "checkpoint_pvc": "",
             "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]},
        )

    spec, k8s = compile_to(p, tmp_path / "c.yaml")
    ex = k8s["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-prep"]
    assert ex["nodeSelector"]["nodeSelectorJson"]["runtimeValue"]["constant"] == {"pool": "a100"}
    assert ex["tolerations"] == [{"effect": "NoSchedule", "key": "k", "operator": "Exists"}]
    assert "pvcMount" not in ex
    assert spec["deploymentSpec"]["executors"]["exec-prep"]["container"]["resources"]["accelerator"]["resourceCount"] == "4"


def test_checkpoint_dir_per_run(monkeypatch, tmp_path):
    monkeypatch.delenv("SPF_CHECKPOINT_ROOT", raising=False)
    assert platform.checkpoint_dir("run-1", default=str(tmp_path)) == str(tmp_path)
    monkeypatch.setenv("SPF_CHECKPOINT_ROOT", "/mnt/checkpoints")
    # env set but no volume mounted there (what the local runner does): stay in the default folder
    monkeypatch.setattr(os.path, "ismount", lambda p: False)
    assert platform.checkpoint_dir("run-1", default="x") == "x"
    monkeypatch.setattr(os.path, "ismount", lambda p: p == "/mnt/checkpoints")
    assert platform.checkpoint_dir("run-1", default="x") == "/mnt/checkpoints/run-1"
    assert platform.checkpoint_dir("../../etc", default="x") == "/mnt/checkpoints/.._.._etc"


def test_launch_prefix_shapes():
    assert platform.train_launch_prefix(1) == [sys.executable, "-m"]
    four = platform.train_launch_prefix(4)
    assert four[four.index("--num_processes") + 1] == "4" and "--multi_gpu" in four and four[-1] == "-m"
    env = {"PET_NNODES": "2", "PET_NODE_RANK": "1", "MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456"}
    multi = platform.launch_prefix_from_env(env, num_gpus=8)
    assert multi[multi.index("--num_processes") + 1] == "16"
    assert multi[multi.index("--machine_rank") + 1] == "1"
    assert multi[multi.index("--main_process_ip") + 1] == "job-master-0"
    with pytest.raises(ValueError, match="main_process_ip"):
        platform.train_launch_prefix(2, num_machines=2, machine_rank=0)
    with pytest.raises(ValueError, match="machine_rank"):
        platform.train_launch_prefix(2, num_machines=2, machine_rank=2, main_process_ip="h")


def test_accelerate_launch_prefix_really_runs(tmp_path):
    """The launcher prefix is a working command: accelerate starts the module with its distributed env."""
    probe = tmp_path / "probe_mod.py"
    # each rank writes its own file: two processes printing at once can interleave on one stdout line
    probe.write_text("import os, json, pathlib; r = os.environ.get('RANK'); "
                     "pathlib.Path(f'rank-{r}.json').write_text(json.dumps({'RANK': r, 'WORLD_SIZE': "
                     "os.environ.get('WORLD_SIZE')}))\n")
    assert platform.train_launch_prefix(0) == [sys.executable, "-m"]  # 0 GPUs: one plain process
    # two processes on this CPU-only host stand in for two GPUs (same launcher, gloo instead of NCCL)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [*platform.train_launch_prefix(2, main_process_port=port), "probe_mod"]
    out = subprocess.run(cmd, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    seen = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank-*.json"))]
    assert [s["RANK"] for s in seen] == ["0", "1"] and {s["WORLD_SIZE"] for s in seen} == {"2"}


@pytest.mark.slow
def test_same_pipeline_runs_locally(tmp_path, monkeypatch):
    """GPU, node-pool and secret settings compile in but are ignored by the local runner."""
    import kfp.local

    monkeypatch.chdir(tmp_path)
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
                   raise_on_error=True)
    task = tiny_pipeline(data_rev="rev-42")
    assert task is not None
    outputs = list((tmp_path / "root").rglob("weights.txt"))
    assert outputs and outputs[0].read_text() == "trained on rev-42"
    # the train task's env said SPF_CHECKPOINT_ROOT=/mnt/checkpoints, but nothing is mounted there locally
    assert list((tmp_path / "root").rglob("checkpoints")), "checkpoints should stay under the task's output"
