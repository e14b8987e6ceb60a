"""Shared fixtures for the registry tests: a tiny base model, tiny LoRA adapters, a real `mlflow server`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

PROMPT = "a portrait photo of a person"


def make_lora_adapter(base_dir: Path, adapter_dir: Path, *, seed: int = 0, scale: float = 0.5) -> Path:
    """A real diffusers-format LoRA on the tiny UNet, with non-zero B so it changes the output."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(base_dir, subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        adapter_dir, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        safe_serialization=True,
    )
    (adapter_dir / "adapter_info.json").write_text(json.dumps({"method": "lora", "format": "lora"}))
    return adapter_dir


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    from spf_lib.models.factory import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("base") / "tiny-sd")


@pytest.fixture(scope="session")
def lora_adapter(tiny_base, tmp_path_factory) -> Path:
    return make_lora_adapter(tiny_base, tmp_path_factory.mktemp("adapter") / "adapter")


_PLATFORM_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID",
                  "SPF_MODEL_NAME", "SPF_EXPERIMENT")


def _use_embedded(mp: pytest.MonkeyPatch, home: Path) -> Path:
    for k in _PLATFORM_VARS:
        mp.delenv(k, raising=False)
    mp.setenv("SPF_HOME", str(home))
    mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return home


@pytest.fixture(scope="module")
def embedded_store(tmp_path_factory) -> Path:
    """One embedded sqlite store per test module (creating its tables costs seconds); tests use distinct names."""
    return tmp_path_factory.mktemp("spf-home")


@pytest.fixture
def embedded(embedded_store, monkeypatch) -> Path:
    """The embedded default: sqlite under SPF_HOME, no injected platform variables."""
    return _use_embedded(monkeypatch, embedded_store)


def generate(model_uri: str, **params) -> bytes:
    """Load ``model_uri`` through pyfunc (as a serving tool would) and return the first PNG."""
    from spf_lib.registry import load_model

    model = load_model(model_uri)
    out = model.predict({"prompt": [PROMPT]}, params={"num_inference_steps": 2, **params})
    return out[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on loopback (sqlite backend, proxied artifacts) that a test may stop and restart."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = root / "server.log"

    def start(self, timeout: float | None = None) -> None:
        # ~11 s on an idle machine; a niced test on a machine someone else keeps busy needs longer
        timeout = timeout if timeout is not None else float(os.environ.get("SPF_TEST_SERVER_START_S", "90"))
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        # MLflow 3's server also starts a job runner and 8 Huey consumer processes (server-side jobs) that nothing
        # here uses: measured ~37 more CPU-seconds in the server's first minute (59 vs 22), at every start and
        # restart, on a 2-core machine. Tracking, registry and artifact requests are served the same without them.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                 "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts",
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop only the process group we started (uvicorn/gunicorn workers included)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        import signal

        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def served(mlflow_server, monkeypatch) -> MlflowServer:
    """Point the process at the running server (a platform would inject the same variable)."""
    for k in ("MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return mlflow_server


GOOD = {"pollution": 0.20, "clip_t": 0.30, "id_sim": 0.80, "clip_t_gain": 0.05}
WORSE = {"pollution": 0.40, "clip_t": 0.30, "id_sim": 0.80, "clip_t_gain": 0.05}  # pollution up by 0.2 > epsilon 0.01
BETTER = {"pollution": 0.10, "clip_t": 0.32, "id_sim": 0.85, "clip_t_gain": 0.06}


def lineage_for(name: str, n: int, data_rev: str) -> dict:
    return {"data_rev": data_rev, "data_hash": f"md5-{data_rev}", "kfp_run_id": f"{name}-run-{n}",
            "pipeline_name": "spf-portrait", "pipeline_version": "v1", "config_hash": f"{n:064x}"}


def promotion_scenario(name: str, adapter: Path, base: Path) -> None:
    """register → promote → generate from champion; a worse challenger is refused and nothing moves; a better
    one is promoted; lineage names the right data revision; rollback restores the previous champion."""
    import io

    import mlflow
    from PIL import Image

    from spf_lib.registry import lineage, mlflow_session, promote, register_model, rollback

    v1 = register_model(adapter, str(base), metrics=GOOD, lineage=lineage_for(name, 1, "rev-A"), model_name=name)
    first = promote(name)
    assert first.passed and first.champion_before is None and first.champion_after == v1.version, first.message
    png = generate(f"models:/{name}@champion")
    assert Image.open(io.BytesIO(png)).size == (64, 64)

    v2 = register_model(adapter, str(base), metrics=WORSE, lineage=lineage_for(name, 2, "rev-B"), model_name=name)
    with mlflow_session():
        client = mlflow.MlflowClient()  # same URIs as the registry functions use
    before = {str(v.version): (sorted(v.aliases), dict(v.tags)) for v in
              (client.get_model_version(name, x) for x in (v1.version, v2.version))}
    refused = promote(name)
    assert not refused.passed and [c.metric for c in refused.checks if not c.passed] == ["pollution"]
    assert "gate failed for version 2" in refused.message and "pollution=0.4" in refused.message
    after = {str(v.version): (sorted(v.aliases), dict(v.tags)) for v in
             (client.get_model_version(name, x) for x in (v1.version, v2.version))}
    assert after == before  # nothing changed on fail
    assert lineage(f"models:/{name}@champion")["version"] == v1.version

    v3 = register_model(adapter, str(base), metrics=BETTER, lineage=lineage_for(name, 3, "rev-C"), model_name=name)
    third = promote(name)
    assert third.passed and (third.champion_before, third.champion_after) == (v1.version, v3.version)
    champ = lineage(f"models:/{name}@champion")
    assert champ["lineage"]["data_rev"] == "rev-C" and champ["metrics"]["pollution"] == 0.10
    assert champ["run"]["run_id"] == v3.run_id and champ["run"]["metrics"]["clip_t"] == 0.32
    assert lineage(f"models:/{name}@previous-champion")["lineage"]["data_rev"] == "rev-A"
    assert lineage(f"models:/{name}/{v2.version}")["lineage"]["data_rev"] == "rev-B"

    back = rollback(name)
    assert (back.restored, back.demoted) == (v1.version, v3.version)
    assert lineage(f"models:/{name}@champion")["lineage"]["data_rev"] == "rev-A"
    assert f"from version {v3.version} to version {v1.version}" in back.message
