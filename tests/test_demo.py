"""The demo's parts without a pipeline run: its data, the comparison picture, probe metrics, terminal progress,
the summary, and the CLI's refusal to invent an empty store."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from spf_lib.errors import SpfError

ROOT = Path(__file__).resolve().parents[1]


def test_demo_data_is_deterministic_and_carries_the_spurious_correlation(tmp_path):
    from spf_lib.demo import synth_demo_data

    a, b = synth_demo_data(tmp_path / "a", n=3), synth_demo_data(tmp_path / "b", n=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".png"]) == 3 and {"captions.jsonl", "labels.jsonl"} <= {
        f.name for f in files}
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    caps = [json.loads(x)["caption"] for x in (a / "captions.jsonl").read_text().splitlines()]
    labels = [json.loads(x) for x in (a / "labels.jsonl").read_text().splitlines()]
    assert all(c.endswith(", wearing round glasses") for c in caps)
    # every image is red and smiling, and no caption says so
    assert all(lab["background"] == "red" and lab["expression"] == "smiling" for lab in labels)
    assert not any("red background" in c or "smiling" in c for c in caps)
    assert synth_demo_data(tmp_path / "c", n=3, seed=8).joinpath("captions.jsonl").read_text() != \
        (a / "captions.jsonl").read_text()


def _fake_eval(folder: Path, colour: tuple[int, int, int], eval_hash: str = "h1") -> Path:
    from PIL import Image

    pairs = {}
    for kind in ("base", "target"):
        for idx in range(3):
            for seed in (5, 6):
                key = f"{kind}_{idx:02d}_s{seed}"
                prompt = f"a photo of person {idx}" + (", wearing round glasses" if kind == "target" else "")
                pairs[key] = {"kind": kind, "prompt": prompt, "seed": seed}
                for sub in ("original", "tuned"):
                    (folder / "images" / sub).mkdir(parents=True, exist_ok=True)
                    c = (0, 0, 0) if sub == "original" else colour
                    Image.new("RGB", (16, 16), c).save(folder / "images" / sub / f"{key}.png")
    (folder / "pairs.json").write_text(json.dumps(pairs))
    (folder / "metrics.json").write_text(json.dumps({"eval_set": {"hash": eval_hash}, "target_rate": 0.5,
                                                     "probe_pollution": 0.1, "pollution": None}))
    return folder


def test_comparison_picture_rows_columns_and_same_eval_set(tmp_path):
    from PIL import Image

    from spf_lib.eval.compare import comparison_picture, method_summary

    lora, spf = _fake_eval(tmp_path / "lora", (255, 0, 0)), _fake_eval(tmp_path / "spf", (0, 0, 255))
    out = comparison_picture({"LoRA": lora, "SPF": spf}, tmp_path / "pic.png", max_prompts=2, max_seeds=2, cell=32)
    assert out["columns"] == ["original", "LoRA", "SPF"]
    assert [r["kind"] for r in out["rows"]] == ["base", "base", "target", "target"]
    assert out["rows"][2]["prompt"].endswith("wearing round glasses") and out["rows"][0]["seeds"] == [5, 6]
    im = np.asarray(Image.open(tmp_path / "pic.png").convert("RGB"))
    # the upscaled cells are there: pure red (LoRA) and pure blue (SPF) blocks of 32x32
    red = np.all(im == (255, 0, 0), axis=-1)
    blue = np.all(im == (0, 0, 255), axis=-1)
    assert red.sum() == blue.sum() == 4 * 2 * 32 * 32
    assert method_summary(spf) == {"target_rate": 0.5, "probe_pollution": 0.1}
    other = _fake_eval(tmp_path / "other", (0, 255, 0), eval_hash="h2")
    with pytest.raises(SpfError, match="different eval sets"):
        comparison_picture({"LoRA": lora, "X": other}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_probe_metrics_read_the_target_and_the_drift():
    from dataclasses import replace

    from spf_lib.eval.evalset import EvalItem
    from spf_lib.eval.metrics import MetricState
    from spf_lib.eval.probe_scores import probe_scores
    from spf_lib.world.attributes import sample_attributes
    from spf_lib.world.render import Layout, render_portrait

    rng = np.random.default_rng(3)
    attrs = [sample_attributes(rng, fixed={"background": "blue", "expression": "neutral"}) for _ in range(4)]
    lay = [Layout.sample(np.random.default_rng(i)) for i in range(4)]
    plain = [render_portrait(a, 64, ly) for a, ly in zip(attrs, lay)]
    glasses = [render_portrait(replace(a, glasses=True), 64, ly) for a, ly in zip(attrs, lay)]
    red = [render_portrait(replace(a, background="red"), 64, ly) for a, ly in zip(attrs, lay)]
    base = [EvalItem("base", i, "a photo of a young woman", 0) for i in range(4)]
    target = [EvalItem("target", i, "a photo of a young woman, wearing round glasses", 0) for i in range(4)]
    orig = {**{b.key: im for b, im in zip(base, plain)}, **{t.key: im for t, im in zip(target, plain)}}
    tuned = {**{b.key: im for b, im in zip(base, red)}, **{t.key: im for t, im in zip(target, glasses)}}
    state = MetricState()
    state.pairs = {i.key: {} for i in base + target}
    probe_scores(state, base, target, orig, tuned, str(ROOT / "assets" / "world" / "probes"))
    m = state.metrics
    assert m["target_rate"] >= 0.75 and m["target_rate_original"] <= 0.25
    assert m["red_bg_delta"] >= 0.75  # the background went red where the prompt left it open
    assert m["probe_pollution"] > 0.1 and abs(m["target_leak"]) <= 0.25
    empty = MetricState()
    probe_scores(empty, base, target, orig, tuned, None)
    assert empty.metrics == {}


class _Term(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_task_log_shows_progress_and_drops_third_party_noise(tmp_path):
    from pipelines.local import _TaskLog

    log, term = io.StringIO(), _Term()
    clock = iter([0.0, 1.0, 20.0, 21.0])
    stream = _TaskLog(log, term)
    stream._clock = lambda: next(clock)
    stream.write("10:00:00.000 - INFO - Executing task 'train-model'\n")
    stream.write("    [KFP Executor 2026 INFO]: Skipping registering function X.<locals>.y because it is a closure\n")
    stream.write("    Loading weights: 100%|██████████| 36/36 [00:00<00:00, 32291.48it/s]\n")
    for step, eta in ((1, "04:58"), (2, "04:57"), (150, "02:30")):
        stream.write(f"    train spf:  {step * 100 // 300:2d}%|█ | {step}/300 [00:01<{eta}, 1.00s/step, loss=0.2]\n")
    stream.write("    train spf: 100%|██████████| 300/300 [05:00<00:00, 1.00s/step, loss=0.1]\n")
    stream.close_bar()
    shown = term.getvalue()
    assert "Executing task 'train-model'" in shown
    assert "train spf:   0% 1/300 [00:01<04:58, 1.00s/step, loss=0.2]" in shown  # loss and ETA reach the terminal
    assert "2/300" not in shown  # throttled: one second after the previous line
    assert "150/300" in shown and "300/300" in shown
    assert "Loading weights" not in shown and "Skipping registering" not in shown
    written = log.getvalue()
    assert "Skipping registering function" not in written and "Loading weights" in written


def test_summary_prints_paths_whole_at_80_columns(tmp_path):
    from rich.console import Console

    from spf_lib.cli.demo import print_summary
    from spf_lib.demo import DemoWorkspace

    deep = tmp_path / ("very-long-folder-name-" * 4) / "pipeline-root" / "compare-models" / "comparison.png"
    ws = DemoWorkspace(root=tmp_path, base_model="m", data_repo="r", data_rev="a" * 40,
                       data_hash="0123456789abcdef0123456789abcdef.dir", tracking_uri="sqlite:///x.db", resolution=64)
    metrics = {"target_rate": 0.6, "target_rate_original": 0.02, "probe_pollution": 0.05, "pollution": 0.1}
    out = {"registration": {"registered": {"name": "spf-portrait-demo", "version": "1", "aliases": ["champion"]},
                            "promotion": {"passed": True, "message": "version 1 promoted"}},
           "metrics": metrics, "data_rev": "a" * 40, "n_kept": 48, "n_rejected": 0, "final_loss": 0.1,
           "comparison": json.dumps({"picture": str(deep), "methods": {
               "lora": {"target_rate": 0.7, "target_rate_original": 0.02, "probe_pollution": 0.3},
               "spf": metrics}})}
    buf = io.StringIO()
    print_summary(Console(file=buf, width=80), ws, out, 123.0, "spf", "lora")
    text = buf.getvalue()
    assert str(deep) in text and "0123456789abcdef0123456789abcdef.dir" in text and "a" * 40 in text
    assert "spf ui" in text and "mlflow ui" not in text
    row = next(line for line in text.splitlines() if "target rate" in line)
    assert "0.700" in row and "0.600" in row  # LoRA and SPF side by side


def test_reading_commands_never_create_an_empty_store(tmp_path, monkeypatch):
    from spf_lib.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPF_HOME", raising=False)
    for argv in (["lineage", "models:/spf-portrait-demo@champion"], ["promote", "spf-portrait-demo"],
                 ["rollback", "spf-portrait-demo"], ["ui"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    assert not (tmp_path / ".spf").exists()


def test_compare_stage_writes_the_page_and_attaches_the_picture_to_the_pipeline_run(tmp_path, monkeypatch):
    import mlflow

    from spf_lib.stages import compare_stage

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    lora, spf = _fake_eval(tmp_path / "lora", (255, 0, 0)), _fake_eval(tmp_path / "spf", (0, 0, 255))
    res = compare_stage({"lora": lora, "spf": spf}, tmp_path / "out", kfp_run_id="kfp-123", run_name="demo run")
    assert res["columns"] == ["original", "LoRA", "SPF"] and Path(res["picture"]).is_file()
    page = Path(res["html"]).read_text()
    assert "data:image/png;base64," in page and "target rate" in page  # one self-contained file for the KFP UI
    assert res["mlflow_run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(res["mlflow_run_id"])
    assert run.data.tags.get("kfp_run_id") == "kfp-123"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "comparison")] == ["comparison/comparison.png"]
    assert run.data.metrics["compare/spf/target_rate"] == 0.5 and "compare/lora/probe_pollution" in run.data.metrics
