"""Registration against the embedded sqlite default: loads through pyfunc and generates; lineage, injected
platform variables, idempotency, secrets and an unreachable server."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path

import pytest

from spf_lib.errors import SpfError
from spf_lib.registry import RetryPolicy, lineage, load_model, mlflow_session, register_model
from tests._registry_helpers import (  # noqa: F401
    PROMPT,
    embedded,
    embedded_store,
    free_port,
    generate,
    lora_adapter,
    make_lora_adapter,
    tiny_base,
)

LINEAGE = {"data_rev": "abc123", "data_hash": "d41d8cd98f00b204e9800998ecf8427e", "kfp_run_id": "run-1",
           "pipeline_name": "spf-portrait", "pipeline_version": "v1", "config_hash": "f" * 64}


def test_register_lora_then_generate(embedded, lora_adapter, tiny_base, tmp_path, monkeypatch):
    import mlflow
    from PIL import Image

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # nothing may land in the current directory (MLflow's ./mlruns, ./mlflow.db defaults)

    eval_dir = tmp_path / "eval"
    pairs = {}
    for kind in ("original", "tuned", "diff"):
        (eval_dir / "images" / kind).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), (80 * i, 40, 200)).save(eval_dir / "images" / kind / f"base_{i}_s0.png")
            pairs[f"base_{i}_s0"] = {"kind": "base", "prompt": f"prompt {i}", "seed": 0}
    (eval_dir / "pairs.json").write_text(json.dumps(pairs))
    (eval_dir / "report.html").write_text("<html><body>report <img src='images/tuned/base_0_s0.png'></body></html>")
    rv = register_model(lora_adapter, str(tiny_base), metrics={"pollution": 0.1, "clip_t": None,
                                                               "unavailable": {"clip_t": "no CLIP weights"}},
                        lineage=LINEAGE, model_name="portrait", eval_dir=eval_dir)
    assert (rv.name, rv.version, rv.aliases, rv.created) == ("portrait", "1", ("challenger",), True)
    assert (embedded / "mlflow.db").is_file()
    with mlflow_session():
        client = mlflow.MlflowClient()
        mv = client.get_model_version_by_alias("portrait", "challenger")
        run = client.get_run(rv.run_id)
        card = Path(mlflow.artifacts.download_artifacts(run_id=rv.run_id, artifact_path="model_card",
                                                        dst_path=str(tmp_path / "card")))
        mlmodel = Path(mlflow.artifacts.download_artifacts(f"{rv.model_uri}/MLmodel", dst_path=str(tmp_path / "m")))
    assert str(mv.version) == rv.version and mv.tags["data_rev"] == "abc123" and mv.tags["method"] == "lora"
    assert mv.tags["metric.pollution"] == "0.1" and mv.tags["metric.clip_t"] == "unavailable: no CLIP weights"
    assert run.data.tags["data_hash"] == LINEAGE["data_hash"] and run.data.metrics == {"pollution": 0.1}
    assert run.data.params["config_hash"] == "f" * 64 and run.info.status == "FINISHED"
    assert {p.name for p in card.iterdir()} == {"README.md", "card.html", "summary_grid.png", "report"}
    assert {p.name for p in (card / "report").iterdir()} == {"report.html", "report_single_file.html", "images"}
    text = (card / "README.md").read_text()
    assert "abc123" in text and "unavailable: no CLIP weights" in text and "![summary grid]" in text
    assert "data:image/png;base64," in (card / "card.html").read_text()
    grid = Image.open(card / "summary_grid.png")
    assert grid.width > 2 * 192 and grid.height > 3 * 192  # 3 labelled rows of original | tuned, enlarged
    assert mv.description.startswith("**lora** adapter") and "| pollution | 0.1 |" in mv.description
    ml = mlmodel.read_text()
    assert "diffusers:" in ml and "adapter_type: lora" in ml and str(tiny_base) in ml and "signature" in ml
    png = generate("models:/portrait@challenger")
    assert Image.open(io.BytesIO(png)).size == (64, 64)
    assert list(cwd.iterdir()) == []
    with mlflow_session():
        logged = mlflow.MlflowClient().get_logged_model(mv.source.removeprefix("models:/"))
    assert logged.experiment_id == run.info.experiment_id and logged.source_run_id == rv.run_id
    assert Path(logged.artifact_location.removeprefix("file://")).is_relative_to(embedded)


def test_pipeline_registration_checks_whose_metrics_they_are(embedded, lora_adapter, tiny_base, tmp_path):
    """The register stage reads the evaluation's metrics.json: the evaluated adapter's hash must reach registration,
    so metrics of another adapter are refused and the gate reads matching ones as verified."""
    import mlflow

    from spf_lib.io import sha256_tree
    from spf_lib.registry.register import METRICS_ADAPTER_HASH_TAG
    from spf_lib.stages import register_stage

    def eval_dir(name: str, adapter_hash: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"pollution": 0.1, "target_rate": 0.5,
                                                    "adapter": {"hash": adapter_hash, "dir": "trained"}}))
        return d

    gate = json.dumps({"rules": [{"metric": "pollution", "better": "lower", "bound": 0.5}]})
    with pytest.raises(SpfError, match="metrics were computed for adapter 000000000000"):
        register_stage(lora_adapter, eval_dir("other", "0" * 64), str(tiny_base), "whose", LINEAGE, True, gate)
    own = sha256_tree(lora_adapter)
    out = register_stage(lora_adapter, eval_dir("own", own), str(tiny_base), "whose", LINEAGE, True, gate)
    assert out["promotion"]["passed"] and out["promotion"]["champion_after"] == out["registered"]["version"]
    assert any(c["reason"] == f"metrics belong to adapter {own[:12]}" for c in out["promotion"]["checks"])
    with mlflow_session():
        mv = mlflow.MlflowClient().get_model_version("whose", out["registered"]["version"])
    assert mv.tags[METRICS_ADAPTER_HASH_TAG] == own


def test_same_kfp_run_is_registered_once(embedded, lora_adapter, tiny_base):
    import mlflow

    lin = {**LINEAGE, "kfp_run_id": "kfp-once"}
    first = register_model(lora_adapter, str(tiny_base), metrics={}, lineage=lin, model_name="once")
    again = register_model(lora_adapter, str(tiny_base), metrics={}, lineage=lin, model_name="once")
    assert (again.version, again.run_id, again.created) == (first.version, first.run_id, False)
    other = register_model(lora_adapter, str(tiny_base), metrics={}, lineage={**lin, "kfp_run_id": "kfp-2"},
                           model_name="once")
    assert other.created and other.version == str(int(first.version) + 1)
    with mlflow_session():
        assert len(mlflow.MlflowClient().search_model_versions("name = 'once'")) == 2


def test_injected_experiment_and_run_are_honoured(embedded, lora_adapter, tiny_base, monkeypatch):
    import mlflow

    with mlflow_session():
        client = mlflow.MlflowClient()
        exp = client.create_experiment("platform-exp", artifact_location=(embedded / "platform-art").as_uri())
        run = client.create_run(exp, run_name="kfp-task")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", exp)
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    rv = register_model(lora_adapter, str(tiny_base), metrics={"pollution": 0.3}, lineage={"data_rev": "inj"},
                        model_name="injected")
    assert rv.run_id == run.info.run_id
    with mlflow_session():
        after = mlflow.MlflowClient().get_run(run.info.run_id)
    assert after.info.experiment_id == exp and after.info.status == "RUNNING"  # the platform owns its run
    assert after.data.tags["data_rev"] == "inj" and after.data.metrics["pollution"] == 0.3
    assert lineage("models:/injected/1")["run"]["experiment_id"] == exp


def test_secrets_never_reach_params_tags_or_artifacts(embedded, lora_adapter, tiny_base, tmp_path, monkeypatch):
    import mlflow

    secrets = ["SuperSecret123", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "ghp_" + "Z9y8X7w6" * 4]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secrets[1])
    lin = {**LINEAGE, "kfp_run_id": "kfp-secret", "remote": f"s3://ak:{secrets[0]}@minio:9000/bucket",
           "aws_secret_access_key": secrets[1], "note": f"pushed with {secrets[2]}"}
    rv = register_model(lora_adapter, str(tiny_base), metrics={"pollution": 0.1}, lineage=lin, model_name="sec")
    with mlflow_session():
        client = mlflow.MlflowClient()
        run = client.get_run(rv.run_id)
        mv = client.get_model_version("sec", rv.version)
        run_art = Path(mlflow.artifacts.download_artifacts(run_id=rv.run_id, dst_path=str(tmp_path / "r")))
        model_art = Path(mlflow.artifacts.download_artifacts(rv.model_uri, dst_path=str(tmp_path / "m")))
    texts = [json.dumps(run.data.params), json.dumps(run.data.tags), json.dumps(mv.tags)]
    texts += [p.read_bytes().decode("latin-1") for d in (run_art, model_art) for p in d.rglob("*") if p.is_file()]
    assert len(texts) > 8
    for s in secrets:
        assert not any(s in t for t in texts), s
    assert mv.tags["remote"] == "s3://ak:***@minio:9000/bucket" and mv.tags["aws_secret_access_key"] == "***"


def test_identity_adapter_is_logged_as_code_pyfunc(embedded, tiny_base, tmp_path, monkeypatch):
    """A non-LoRA format goes through spf_lib.methods.load_adapter, including its prompt rewrite."""
    from PIL import Image

    from spf_lib.methods import LORA_WEIGHTS, AdapterHandle

    seen: list[str] = []

    class Handle(AdapterHandle):
        def prompt(self, text: str) -> str:
            seen.append(text.replace("<sks>", "person"))
            return seen[-1]

    def load(pipe, adapter_dir, info):
        pipe.load_lora_weights(str(adapter_dir), weight_name=LORA_WEIGHTS, adapter_name="spf")
        return Handle(pipe=pipe, info=info)

    mod = types.ModuleType("spf_lib.methods.fake_identity")
    mod.load = load
    monkeypatch.setitem(sys.modules, "spf_lib.methods.fake_identity", mod)
    adapter = make_lora_adapter(tiny_base, tmp_path / "identity")
    (adapter / "adapter_info.json").write_text(json.dumps(
        {"method": "celeb-basis", "format": "identity", "loader": "spf_lib.methods.fake_identity:load"}))
    rv = register_model(adapter, str(tiny_base), metrics={}, lineage={"kfp_run_id": "id-1"}, model_name="ident")
    model = load_model("models:/ident@challenger")
    out = model.predict({"prompt": ["a photo of <sks>"]}, params={"num_inference_steps": 2, "seed": 3})
    assert Image.open(io.BytesIO(out[0])).size == (64, 64) and seen[-1] == "a photo of person"
    assert lineage(rv.model_uri)["lineage"]["method"] == "celeb-basis"


def test_spf_adapter_with_target_token_rows_is_served_with_them(embedded, tiny_base, tmp_path):
    """MLflow's diffusers pyfunc would load only the LoRA: an SPF adapter carrying target-token rows is logged as our
    pyfunc, and the served pipeline's embedding table holds the rows."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    adapter = make_lora_adapter(tiny_base, tmp_path / "spf")
    info = json.loads((adapter / "adapter_info.json").read_text())
    dim = json.loads((Path(tiny_base) / "text_encoder" / "config.json").read_text())["hidden_size"]
    ids, rows = [5, 7], torch.full((2, dim), 0.5)
    rows[1] = -0.25
    save_file({"text_encoder.ids": torch.tensor(ids), "text_encoder.vectors": rows},
              str(adapter / "target_tokens.safetensors"))
    info.update(method="spf", target_tokens={"file": "target_tokens.safetensors", "tokens": {"text_encoder": ["x"]}})
    (adapter / "adapter_info.json").write_text(json.dumps(info))
    rv = register_model(adapter, str(tiny_base), metrics={}, lineage={"kfp_run_id": "tok-1"}, model_name="tok")
    model = load_model("models:/tok@challenger")
    assert "diffusers" not in model.metadata.flavors and "python_function" in model.metadata.flavors
    table = model.unwrap_python_model().pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(table[ids], rows.to(table.dtype))
    out = model.predict({"prompt": [PROMPT]}, params={"num_inference_steps": 2, "seed": 3})
    assert Image.open(io.BytesIO(out[0])).size == (64, 64)
    assert lineage(rv.model_uri)["lineage"]["method"] == "spf"


def test_unreachable_server_ends_in_one_clear_error(lora_adapter, tiny_base, monkeypatch):
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(SpfError, match=rf"register m: MLflow tracking server http://127.0.0.1:{port} "
                                       r"unreachable after 2 attempts"):
        register_model(lora_adapter, str(tiny_base), metrics={}, lineage={}, model_name="m",
                       retry=RetryPolicy(attempts=2, initial_delay=0.1))


def test_bad_inputs_are_one_line_errors(embedded, lora_adapter, tiny_base, tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(SpfError, match="adapter_info.json"):
        register_model(tmp_path / "a", "x/y", metrics={}, lineage={})
    with pytest.raises(SpfError, match="metric 'clip_t' = '0.3' is a string"):
        register_model(lora_adapter, str(tiny_base), metrics={"clip_t": "0.3"}, lineage={})
    with pytest.raises(SpfError, match="model name 'a/b'"):
        register_model(lora_adapter, str(tiny_base), metrics={}, lineage={}, model_name="a/b")
    with pytest.raises(SpfError, match="base model ./missing: folder does not exist"):
        register_model(lora_adapter, "./missing", metrics={}, lineage={})


def test_credentials_in_base_model_or_adapter_info_are_refused(embedded, lora_adapter, tmp_path):
    import shutil

    with pytest.raises(SpfError, match="--base-model: the reference contains credentials"):
        register_model(lora_adapter, "s3://AKIAABCDEFGHIJKLMNOP:pw@host/models/sd", metrics={}, lineage={})
    leaky = tmp_path / "leaky"
    shutil.copytree(lora_adapter, leaky)
    (leaky / "adapter_info.json").write_text(json.dumps(
        {"method": "lora", "format": "lora", "placeholder_token": "<sks>", "hub": "hf_" + "q1W2e3R4" * 3}))
    with pytest.raises(SpfError, match=r"leaky/adapter_info.json: hub look like credentials"):
        register_model(leaky, "x/y", metrics={}, lineage={})
