"""A corpus of bad inputs across `spf data prepare`, `train`, `evaluate`, `register`, `promote` and `rollback`,
generated here. Each one, run through the real entry point: a non-zero exit, exactly one `error:` line that names
what is wrong, no traceback, nothing written outside the output, and the previous good output left as it was."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from tests._data_helpers import two_portraits
from tests._registry_helpers import make_lora_adapter
from tests._train_helpers import make_dataset

pytestmark = pytest.mark.slow


def _snapshot(root: Path, skip: set[Path]) -> dict[str, tuple[int, int]]:
    out = {}
    for p in root.rglob("*"):
        if any(p == s or s in p.parents for s in skip) or not p.is_file():
            continue
        st = p.stat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _safetensors_header_only(path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 10)  # truncated: 10 of 64 bytes


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """Good inputs and previous good outputs that every bad input must leave alone."""
    root = tmp_path_factory.mktemp("corpus")
    w = {"root": root, "base": tiny_model_dir}
    w["images"] = two_portraits(root / "images-in")
    w["data"] = make_dataset(root / "data", n=2)
    _write(w["data"] / "prepare_summary.json", json.dumps({"qa_passed": True, "qa_failed": []}))
    w["adapter"] = make_lora_adapter(tiny_model_dir, root / "adapter")
    # previous good outputs (written by spf: they carry its marker)
    from spf_lib.io import MARKER

    for name, files in (("prep-out", {"prepare_summary.json": '{"qa_passed": true}', "manifest.parquet": "x"}),
                        ("train-out", {"train_summary.json": "{}", "adapter/adapter_info.json": "{}", ".spf.lock": ""}),
                        ("eval-out", {"metrics.json": '{"pollution": 0.1}'})):
        for rel, text in files.items():
            _write(root / name / rel, text)
        _write(root / name / MARKER, "{}")
    _write(root / "user-folder" / "NOTES.txt", "mine")
    _write(root / "a-file", "plain")
    w["metrics"] = _write(root / "metrics.json", json.dumps({"pollution": 0.2, "clip_t": 0.3, "id_sim": 0.8}))
    return w


def _cases(w: dict) -> list[tuple[str, list[str], str, Path | None]]:
    """(id, argv, substring the error line must contain, the output folder the command was given)."""
    r = w["root"]
    bad = r / "bad"
    cases: list[tuple[str, list[str], str, Path | None]] = []
    prep_out = r / "prep-out"

    # -- spf data prepare: config fields (pydantic names the value), paths, captions
    prep_cfgs = {
        "size-float": ("size: 100.5", "size=100.5"), "phrase-int": ("target_phrase: 123", "target_phrase=123"),
        "blur-str": ('min_blur: "x"', "min_blur='x'"), "size-small": ("size: 8", "size=8"),
        "padding": ("padding: 5", "padding=5"), "multiface": ("multi_face: all", "multi_face='all'"),
        "upsample": ("upsample: 9", "upsample=9"), "unknown": ("sizee: 512", "sizee"),
        "workers": ("workers: -1", "workers=-1"), "tolerance": ("qa_tolerance: 2", "qa_tolerance=2"),
        "forbidden": ("forbidden_words: abc", "forbidden_words='abc'"),
        "phrase-comma": ('target_phrase: "a, b"', "target_phrase='a, b'"),
        "maxpix": ("max_pixels: 0", "max_pixels=0"), "toplist": ("[1, 2]", "expected a mapping"),
        "yaml": ("size: [1", "not valid yaml"), "minkept": ("min_kept: -3", "min_kept=-3"),
    }
    for cid, (text, want) in prep_cfgs.items():
        cfg = _write(bad / f"prep-{cid}.yaml", text)
        cases.append((f"prepare-{cid}", ["data", "prepare", "--input", str(w["images"]), "--output", str(prep_out),
                                         "--config", str(cfg)], want, prep_out))
    cfg_bin = _write(bad / "prep-binary.yaml", b"size: \xff\xfe\n")
    cases.append(("prepare-config-not-utf8", ["data", "prepare", "--input", str(w["images"]), "--output",
                                              str(prep_out), "--config", str(cfg_bin)], "cannot read config", prep_out))
    dup = bad / "dup-captions"
    _write(dup / "images" / "a.png", (w["images"] / "images" / "astronaut.png").read_bytes())
    _write(dup / "captions.jsonl", '{"file": "images/a.png", "caption": "one"}\n'
                                   '{"file": "images/a.png", "caption": "two"}\n')
    empty = bad / "empty-in"
    empty.mkdir(parents=True, exist_ok=True)
    for cid, inp, out, want in (
        ("input-missing", r / "nope", prep_out, "not a folder"), ("input-file", r / "a-file", prep_out, "not a folder"),
        ("output-file", w["images"], r / "a-file", "not a folder"),
        ("output-user-folder", w["images"], r / "user-folder", "not written by spf"),
        ("output-inside-input", w["images"], w["images"] / "out", "inside the input"),
        ("no-images", empty, prep_out, "no images found"), ("dup-captions", dup, prep_out, "listed twice"),
        ("output-unwritable", w["images"], Path("/sys/spf-corpus-out"), "cannot write"),
        ("output-mount-point", w["images"], Path("/dev/shm"), "mount point"),
    ):
        cases.append((f"prepare-{cid}", ["data", "prepare", "--input", str(inp), "--output", str(out)], want, out))
    cases.append(("prepare-size-not-int", ["data", "prepare", "--input", str(w["images"]), "--output",
                                           str(prep_out), "--size", "big"], "Invalid value for '--size'", prep_out))
    cases.append(("prepare-unknown-flag", ["data", "prepare", "--input", str(w["images"]), "--output",
                                           str(prep_out), "--sise", "5"], "No such option", prep_out))
    cases.append(("prepare-size-flag", ["data", "prepare", "--input", str(w["images"]), "--output", str(prep_out),
                                        "--size", "0"], "size=0", prep_out))

    # -- spf train
    train_out = r / "train-out"
    base = ["train", "--base-model", str(w["base"]), "--data", str(w["data"]), "--output", str(train_out),
            "--steps", "1", "--resolution", "64", "--device", "cpu"]
    cases += [("train-method", base + ["--method", "foo"], "--method 'foo'", train_out),
              ("train-missing-base", ["train", "--data", str(w["data"]), "--output", str(train_out)],
               "missing --base-model", train_out),
              ("train-steps0", base[:-6] + ["--steps", "0"], "steps=0", train_out),
              ("train-resolution", base[:-4] + ["--resolution", "100"], "multiple of 8", train_out),
              ("train-cuda7", base[:-2] + ["--device", "cuda:7"], "cuda:7", train_out),
              ("train-device-gpu", base[:-2] + ["--device", "gpu"], "device='gpu'", train_out),
              ("train-batch0", base + ["--batch-size", "0"], "batch_size=0", train_out),
              ("train-fp16-cpu", base + ["--mixed-precision", "fp16"], "fp16", train_out),
              ("train-resume-missing", base + ["--resume", "step-000999"], "not a complete checkpoint", train_out),
              ("train-output-file", base[:5] + ["--output", str(r / "a-file")] + base[7:], "not a folder", None),
              ("train-output-unwritable", base[:5] + ["--output", "/sys/spf-corpus-train"] + base[7:],
               "cannot", None)]
    for cid, text, want in (("lr-str", '{"lr": "fast"}', "lr='fast'"), ("unknown", '{"stepz": 3}', "stepz"),
                            ("toplist", "[1]", "mapping"), ("json", "{", "cannot parse"),
                            ("method", '{"method": "dreambooth"}', "method='dreambooth'")):
        cfg = _write(bad / f"train-{cid}.json", text)
        cases.append((f"train-config-{cid}", base + ["--config", str(cfg)], want, train_out))
    data_cases = {}
    d = bad / "data-nomanifest"
    d.mkdir(parents=True, exist_ok=True)
    data_cases["no-manifest"] = (d, "manifest.parquet: missing")
    d = make_dataset(bad / "data-qa-failed", n=2)
    _write(d / "prepare_summary.json", json.dumps({"qa_passed": False, "qa_failed": ["min_kept"]}))
    data_cases["qa-failed"] = (d, "data QA failed")
    d = make_dataset(bad / "data-corrupt", n=2)
    _write(d / "manifest.parquet", b"PAR1 not really")
    data_cases["corrupt-parquet"] = (d, "cannot read parquet")
    d = make_dataset(bad / "data-nocrop", n=2)
    (d / "crops" / "000.png").unlink()
    data_cases["missing-crop"] = (d, "does not exist")
    data_cases["data-missing"] = (bad / "no-data", "missing")
    for cid, (d, want) in data_cases.items():
        cases.append((f"train-{cid}", base[:3] + ["--data", str(d)] + base[5:], want, train_out))
    models = {}
    m = bad / "model-badindex"
    _write(m / "model_index.json", "{not json")
    models["model-index-not-json"] = (m, "model_index.json: not valid JSON")
    m = bad / "model-wrongindex"
    _write(m / "model_index.json", '{"_class_name": "Nope", "unet": ["diffusers", "Nothing"]}')
    models["model-index-wrong"] = (m, "cannot load")
    models["model-missing"] = (bad / "no-model" / "x", "does not exist")
    models["model-empty"] = (empty, "no model_index.json")
    for cid, (m, want) in models.items():
        cases.append((f"train-{cid}", ["train", "--base-model", str(m)] + base[3:], want, train_out))

    # -- spf evaluate
    eval_out = r / "eval-out"
    ev = ["evaluate", "--base", str(w["base"]), "--adapter", str(w["adapter"]), "--output", str(eval_out),
          "--steps", "1", "--device", "cpu"]
    adapters = {}
    import shutil

    def adapter_copy(cid: str) -> Path:
        dst = bad / f"adapter-{cid}"
        if not dst.exists():
            shutil.copytree(w["adapter"], dst)
        return dst

    a = adapter_copy("corrupt")
    _write(a / "pytorch_lora_weights.safetensors", b"\x00garbage" * 3)
    adapters["corrupt-safetensors"] = (a, "not a readable safetensors")
    a = adapter_copy("truncated")
    _safetensors_header_only(a / "pytorch_lora_weights.safetensors")
    adapters["truncated-safetensors"] = (a, "not a readable safetensors")
    from safetensors.torch import save_file
    import torch

    a = adapter_copy("wrongkey")
    save_file({"unet.nothing.lora_A.weight": torch.zeros(4, 4)}, str(a / "pytorch_lora_weights.safetensors"))
    adapters["wrong-key-safetensors"] = (a, "does not load into this base model")
    a = adapter_copy("wrongshape")
    from safetensors.torch import load_file

    sd = load_file(str(w["adapter"] / "pytorch_lora_weights.safetensors"))
    k0 = sorted(sd)[0]
    sd[k0] = torch.zeros(sd[k0].shape[0] + 3, *sd[k0].shape[1:])
    save_file(sd, str(a / "pytorch_lora_weights.safetensors"))
    adapters["wrong-shape-safetensors"] = (a, "does not load into this base model")
    a = adapter_copy("loader")
    _write(a / "adapter_info.json", json.dumps({"method": "x", "format": "x", "loader": "spf_lib.methods.nope:load"}))
    adapters["unknown-loader"] = (a, "unknown loader")
    a = adapter_copy("loader-outside")
    _write(a / "adapter_info.json", json.dumps({"method": "x", "format": "x", "loader": "os:system"}))
    adapters["loader-outside"] = (a, "outside spf_lib.methods")
    a = adapter_copy("noinfo")
    (a / "adapter_info.json").unlink()
    adapters["no-adapter-info"] = (a, "adapter_info.json: missing")
    a = adapter_copy("info-bytes")
    _write(a / "adapter_info.json", b"\xff\xfe{}")
    adapters["adapter-info-not-utf8"] = (a, "not UTF-8")
    adapters["adapter-missing"] = (bad / "no-adapter", "does not exist")
    for cid, (a, want) in adapters.items():
        cases.append((f"evaluate-{cid}", ev[:3] + ["--adapter", str(a)] + ev[5:], want, eval_out))
    cases += [("evaluate-output-user-folder", ev[:5] + ["--output", str(r / "user-folder")] + ev[7:],
               "holds no metrics.json", None),
              ("evaluate-output-file", ev[:5] + ["--output", str(r / "a-file")] + ev[7:], "not a folder", None),
              ("evaluate-output-unwritable", ev[:5] + ["--output", "/sys/spf-corpus-eval"] + ev[7:], "cannot write",
               None),
              ("evaluate-cuda7", ev[:-2] + ["--device", "cuda:7"], "cuda:7", eval_out),
              ("evaluate-missing", ["evaluate", "--base", str(w["base"])], "missing", None)]
    es = _write(bad / "evalset.yaml", "items: [1")
    cases.append(("evaluate-evalset-yaml", ev + ["--eval-set", str(es)], "evalset.yaml", eval_out))

    # -- spf register (fails before any MLflow write)
    reg = ["register", "--adapter", str(w["adapter"]), "--base-model", str(w["base"]), "--name", "corpus"]
    metric_files = {
        "not-utf8": (b'{"pollution": 0.1, "x": "\xff"}', "not UTF-8"), "not-json": (b"{", "not valid JSON"),
        "list": (b"[1]", "expected a JSON object"), "pollution-list": (b'{"pollution": [1]}', "'pollution' = [1]"),
        "pollution-neg": (b'{"pollution": -5}', "pollution=-5 is outside"),
        "clip-99": (b'{"clip_t": 99}', "clip_t=99 is outside"),
        "pollution-str": (b'{"pollution": "0.1"}', "is a string"),
        "other-adapter": (json.dumps({"pollution": 0.1, "adapter": {"hash": "0" * 64, "dir": "elsewhere"}}).encode(),
                          "metrics were computed for adapter"),
    }
    for cid, (content, want) in metric_files.items():
        f = _write(bad / f"metrics-{cid}.json", content)
        cases.append((f"register-metrics-{cid}", reg + ["--metrics", str(f)], want, None))
    lin_bad = _write(bad / "lineage.json", "{nope")
    cases += [("register-adapter-missing", ["register", "--adapter", str(bad / "none"), "--base-model",
                                            str(w["base"])], "not a folder", None),
              ("register-metrics-missing", reg + ["--metrics", str(bad / "none.json")], "no such file", None),
              ("register-lineage", reg + ["--lineage", "noequals"], "KEY=VALUE", None),
              ("register-lineage-file", reg + ["--lineage-file", str(lin_bad)], "not valid JSON", None),
              ("register-name", reg[:-1] + ["a/b"], "model name", None),
              ("register-base-credentials", reg[:3] + ["--base-model", "https://u:hunter2@example.com/m"] + reg[5:],
               "credentials", None),
              ("register-base-missing", reg[:3] + ["--base-model", str(bad / "no-model")] + reg[5:],
               "does not exist", None)]

    # -- spf promote / rollback
    rules_bad = {"missing": (bad / "none.yaml", "no such file"), "yaml": ("rules: [", "not valid YAML"),
                 "unknown": ("rulez: []", "rulez"), "better": ("rules: [{metric: x, better: up, bound: 1}]", "better"),
                 "nocheck": ("rules: [{metric: x, better: lower}]", "give epsilon, bound or both")}
    for cid, (content, want) in rules_bad.items():
        path = content if isinstance(content, Path) else _write(bad / f"rules-{cid}.yaml", content)
        cases.append((f"promote-rules-{cid}", ["promote", "corpus-model", "--rules", str(path)], want, None))
    cases += [("promote-unknown-model", ["promote", "corpus-unknown"], "corpus-unknown", None),
              ("promote-eps-negative", ["promote", "corpus-model", "--pollution-eps", "-1"], "epsilon", None),
              ("promote-on-missing", ["promote", "corpus-model", "--on-missing", "maybe"], "on_missing", None),
              ("promote-no-challenger", ["promote", "corpus-model"], "challenger", None),
              ("rollback-unknown-model", ["rollback", "corpus-unknown"], "corpus-unknown", None),
              ("rollback-no-champion", ["rollback", "corpus-model"], "nothing to roll back", None),
              ("rollback-to-not-a-version", ["rollback", "corpus-model", "--to", "v2"], "--to 'v2'", None),
              ("rollback-to-no-champion", ["rollback", "corpus-model", "--to", "1"], "nothing to roll back", None),
              ("rollback-key-blank", ["rollback", "corpus-model", "--idempotency-key", " "], "--idempotency-key",
               None),
              ("rollback-key-quote", ["rollback", "corpus-model", "--idempotency-key", "it's"], "--idempotency-key",
               None)]
    return cases


@pytest.fixture(scope="module")
def store(world, tmp_path_factory):
    """An embedded registry with one model that has a version but no champion or challenger."""
    import mlflow

    from spf_lib.registry import mlflow_session
    from spf_lib.settings import Settings

    home = world["root"] / "spf-home"
    os.environ["SPF_HOME"] = str(home)
    try:
        with mlflow_session(Settings.from_env()) as s:
            c = mlflow.MlflowClient()
            c.create_registered_model("corpus-model")
            c.create_model_version("corpus-model", "s3://corpus/model")
            uri = s.tracking_uri
    finally:
        os.environ.pop("SPF_HOME", None)
    return home, uri


def test_bad_input_corpus(world, store, monkeypatch, capsys):
    from spf_lib.cli.main import main

    home, _ = store
    monkeypatch.setenv("SPF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = world["root"]
    cases = _cases(world)
    keep = {p: _tree(root / p) for p in ("prep-out", "train-out", "eval-out", "user-folder")}
    failures = []
    for cid, argv, want, _out in cases:
        before = _snapshot(root, {home / "mlflow.db"})
        code = 0
        try:
            main(argv)
        except SystemExit as e:
            code = int(e.code or 0)
        except BaseException as e:  # noqa: BLE001 - an escaped exception IS the traceback we are hunting
            failures.append(f"{cid}: escaped {type(e).__name__}: {str(e)[:200]}")
            continue
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        if code == 0:
            failures.append(f"{cid}: exit 0")
        if "Traceback" in err or len(lines) != 1:
            failures.append(f"{cid}: expected one error line, got {err[-600:]!r}")
        elif want.lower() not in lines[0].lower():
            failures.append(f"{cid}: error line does not name {want!r}: {lines[0]}")
        after = _snapshot(root, {home / "mlflow.db"})
        if after != before:
            changed = sorted(set(after.items()) ^ set(before.items()))[:4]
            failures.append(f"{cid}: files written or changed: {changed}")
        for p, tree in keep.items():
            if _tree(root / p) != tree:
                failures.append(f"{cid}: previous output {p} changed")
    with capsys.disabled():
        from collections import Counter

        per = Counter(" ".join(argv[:2]) if argv[0] == "data" else argv[0] for _, argv, _, _ in cases)
        tracebacks = sum("escaped" in f or "Traceback" in f for f in failures)
        print(f"\nbad-input corpus: {len(cases)} inputs ({dict(per)}), {tracebacks} tracebacks, "
              f"{len(failures)} failures")
    assert len(cases) >= 60
    assert not failures, "\n".join(failures)
