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


@pytest.fixture
def embedded(tmp_path, monkeypatch) -> Path:
    """The embedded default: sqlite under a fresh SPF_HOME, no injected platform variables."""
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID",
              "SPF_MODEL_NAME", "SPF_EXPERIMENT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SPF_HOME", str(tmp_path / "spf-home"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return tmp_path / "spf-home"


def generate(model_uri: str, **params) -> bytes:
    """Load ``model_uri`` through pyfunc (as a serving tool would) and return the first PNG."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(model_uri)
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

    def start(self, timeout: float = 90) -> None:
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
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
