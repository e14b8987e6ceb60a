"""The four pipeline stages as plain functions over folders and JSON strings.

KFP components and the CLI call these, so a component body is only argument plumbing and every stage can be run
and tested without kfp. Each returns a JSON-serialisable dict that the component turns into outputs/metadata.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from spf_lib.errors import SpfError

log = logging.getLogger(__name__)


def parse_json_arg(text: str | dict | None, name: str) -> dict:
    """Parse a JSON-object argument, naming the argument when it is not valid. A dict (a KFP ``dict`` pipeline
    parameter arrives as one) is taken as is."""
    if isinstance(text, dict):
        return _ints_back(text)
    if not text or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpfError(f"{name}: not valid JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(value, dict):
        raise SpfError(f"{name}: expected a JSON object, got {type(value).__name__}")
    return value


def _ints_back(value: Any) -> Any:
    """KFP carries dict parameters as protobuf Structs, where every number is a double: ``steps: 40`` can arrive as
    ``40.0``. Whole floats become ints again (an int is valid wherever a float is)."""
    if isinstance(value, dict):
        return {k: _ints_back(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints_back(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def to_dict(obj: Any) -> dict:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if is_dataclass(obj):
        return json.loads(json.dumps(asdict(obj), default=str))
    return dict(obj)


def _build(cls: type, **kwargs: Any):
    """Build a config (pydantic or dataclass); unknown keys are an error naming them."""
    if hasattr(cls, "from_dict"):  # dataclass configs validate (and name the bad value) there
        return cls.from_dict(kwargs, source=cls.__name__)
    try:
        if hasattr(cls, "model_validate"):
            return cls.model_validate(kwargs)
        return cls(**kwargs)
    except TypeError as e:
        raise SpfError(f"{cls.__name__}: {e}") from e
    except ValueError as e:  # pydantic's ValidationError: one line naming the field and the bad value
        from spf_lib.train.config import format_validation_error

        errors = getattr(e, "errors", None)
        raise SpfError(f"{cls.__name__}: {format_validation_error(e) if errors else e}") from None


def prepare_stage(data_repo: str, data_rev: str, config_json: str, out_dir: str | Path) -> dict:
    """Pull ``data`` at ``data_rev`` from the DVC-tracked repo, then detect/align/crop faces and run the QA suite."""
    from spf_lib.data.dvc_io import pull_data
    from spf_lib.data.prepare import PrepareConfig, prepare_dataset

    overrides = parse_json_arg(config_json, "prepare_config")
    cfg = _build(PrepareConfig, **overrides)
    with tempfile.TemporaryDirectory(prefix="spf-pull-") as tmp:
        ref = pull_data(data_repo, data_rev, Path(tmp) / "data")
        result = prepare_dataset(ref.path, out_dir, cfg)
    summary = to_dict(result)
    from spf_lib.errors import redact_text

    # KFP metadata is shown in the UI and stored in the metadata DB: never a password from the repo URL
    summary.update({"data_rev": ref.rev, "data_hash": ref.data_hash, "data_repo": redact_text(data_repo)})
    return summary


def train_stage(data_dir: str | Path, base_model: str, method: str, config_json: str, out_dir: str | Path,
                lineage: dict[str, str], *, work_dir: str | Path | None = None,
                launcher: list[str] | None = None, mlflow_branch: str | None = None,
                pipeline_run_name: str | None = None, data_repo: str | None = None) -> dict:
    """Fine-tune ``base_model`` on a prepared dataset with the chosen method; the result lands in ``out_dir``.

    ``work_dir`` (a persistent volume on the cluster) holds checkpoints across retries of the same run: training
    resumes from its latest checkpoint and the finished adapter is copied to ``out_dir``. ``launcher`` is an argv
    prefix such as ``accelerate launch ... -m``: training then runs as ``spf train`` under it (one process per GPU).
    ``mlflow_branch`` (the pipeline passes it; "" = the method) logs training into that branch's child of the
    pipeline run's MLflow run (``session.pipeline_run``), with the data as its dataset input; evaluation and
    registration log into the same run later (``mlflow_run_id`` of the result).
    """
    import shutil
    import subprocess

    from spf_lib.io import write_json_atomic
    from spf_lib.lineage import config_hash
    from spf_lib.train.config import TrainConfig
    from spf_lib.train.run import train

    work = Path(work_dir or out_dir)
    overrides = parse_json_arg(config_json, "train_config")
    overrides.update({"method": method, "base_model": base_model, "data_dir": str(data_dir),
                      "output_dir": str(work)})
    if work_dir is not None:
        overrides["resume"] = "latest"
    cfg = _build(TrainConfig, **overrides)
    resolved = to_dict(cfg)
    lineage = {**lineage, "method": method, "config_hash": config_hash(
        {k: v for k, v in resolved.items() if k not in ("data_dir", "output_dir", "resume")})}
    run_id = None
    if mlflow_branch is not None and not os.environ.get("MLFLOW_RUN_ID"):  # a platform-injected run wins
        run_id = _branch_run(lineage, mlflow_branch or method, pipeline_run_name, data_dir, data_repo)
    if run_id:
        cfg = cfg.model_copy(update={"mlflow": True})
        resolved["mlflow"] = True
    try:
        with _env("MLFLOW_RUN_ID", run_id):  # the trainer (and a launched `spf train`) logs into the branch run
            if launcher:
                work.mkdir(parents=True, exist_ok=True)
                write_json_atomic(work / "launch_config.json", resolved)
                subprocess.run([*launcher, "spf_lib.cli.main", "train", "--config",
                                str(work / "launch_config.json")], check=True)
                out = json.loads((work / "train_summary.json").read_text())
            else:
                out = to_dict(train(cfg))
    except BaseException:
        if run_id:
            from spf_lib.registry.session import end_branch_run

            end_branch_run(run_id, "FAILED")
        raise
    if run_id:
        out["mlflow_run_id"] = run_id
    if work != Path(out_dir):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        shutil.copytree(work / "adapter", Path(out_dir) / "adapter", dirs_exist_ok=True)
        for name in ("train_config.json", "train_summary.json"):
            if (work / name).is_file():
                shutil.copyfile(work / name, Path(out_dir) / name)
    out["lineage"] = lineage
    return out


def evaluate_stage(adapter_dir: str | Path, base_model: str, config_json: str, out_dir: str | Path,
                   mlflow_run_id: str | None = None, prepared_dir: str | Path | None = None) -> dict:
    """Generate original vs tuned on fixed prompts and seeds; compute ID, CLIP and pollution scores.

    With ``mlflow_run_id`` (the pipeline's branch run from training) grids, table, metrics and report go there, and
    the branch run is marked ended (registration, when it follows, logs into it and ends it again).
    ``prepared_dir`` (the prepare task's dataset): for identity methods its face crops are the reference person
    unless the config names ``reference_faces_dir``, so a pipeline run measures whether the person was learned."""
    from spf_lib.eval.config import EvalConfig
    from spf_lib.eval.identity import adapter_trigger
    from spf_lib.eval.run import evaluate
    from spf_lib.methods import read_adapter_info

    overrides = parse_json_arg(config_json, "eval_config")
    if prepared_dir is not None and not overrides.get("reference_faces_dir") \
            and adapter_trigger(read_adapter_info(adapter_dir)) is not None:
        overrides["reference_faces_dir"] = str(prepared_dir)
    overrides.update({"base_model": base_model, "adapter_dir": str(adapter_dir), "output_dir": str(out_dir)})
    if mlflow_run_id:
        overrides["mlflow_run_id"] = mlflow_run_id
    from spf_lib.registry.session import end_branch_run

    try:
        result = evaluate(_build(EvalConfig, **overrides))
    except BaseException:
        if mlflow_run_id:
            end_branch_run(mlflow_run_id, "FAILED")
        raise
    if mlflow_run_id:  # a branch that is evaluated but not registered (a baseline) ends here; register re-ends its own
        end_branch_run(mlflow_run_id, "FINISHED")
    return to_dict(result)


def _branch_run(lineage: dict[str, str], branch: str, run_name: str | None, data_dir: str | Path,
                data_repo: str | None) -> str | None:
    """The branch's MLflow run of this pipeline run (created on first use), with the data as its input and the
    pipeline's lineage on the parent; None outside a pipeline run (no real kfp_run_id)."""
    from spf_lib.registry.dataset import log_dataset_input
    from spf_lib.registry.lineage_keys import is_real
    from spf_lib.registry.scrub import scrub
    from spf_lib.registry.session import pipeline_run

    kfp_run_id = lineage.get("kfp_run_id", "")
    if not is_real(kfp_run_id):
        return None
    rev, data_hash = lineage.get("data_rev", ""), lineage.get("data_hash", "")
    shared, _ = scrub({k: lineage[k] for k in ("data_rev", "data_hash", "code_rev", "pipeline_name",
                                                "pipeline_version") if is_real(lineage.get(k))})
    for branch_name in (None, branch):
        with pipeline_run(kfp_run_id, run_name if is_real(run_name) else None, branch=branch_name) as run:
            run.set_tags({**shared, **({"method": lineage.get("method", branch)} if branch_name else {})})
            if data_repo and is_real(rev) and is_real(data_hash):
                log_dataset_input(run.client, run.run_id, data_dir=data_dir, repo=data_repo, rev=rev,
                                  data_hash=data_hash)
    return run.run_id


@contextlib.contextmanager
def _env(name: str, value: str | None):
    saved = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if value is not None:
            if saved is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = saved


def split_metrics(raw: dict) -> tuple[dict, dict[str, str]]:
    """Numbers (and ``unavailable`` reasons) become registry metrics; the eval set's identity becomes lineage.

    ``metrics.json`` also carries descriptive entries (formulas, component breakdowns) that stay in the evaluation
    artifact rather than the registry. ``adapter`` (the evaluated adapter's hash) goes along: registration checks it
    against the adapter it registers, and the gate then reads the metrics as verified.
    """
    numeric = {k: v for k, v in raw.items() if k in ("unavailable", "adapter") or v is None
               or (isinstance(v, (int, float)) and not isinstance(v, bool))}
    eval_set = raw.get("eval_set") if isinstance(raw.get("eval_set"), dict) else {}
    lineage = {f"eval_set_{k}": str(eval_set[k]) for k in ("name", "version", "hash") if k in eval_set}
    return numeric, lineage


def register_stage(adapter_dir: str | Path, eval_dir: str | Path | None, base_model: str, model_name: str,
                   lineage: dict[str, str], promote: bool, gate_json: str, run_id: str | None = None) -> dict:
    """Register the adapter with lineage and metrics, then run the promotion gate when asked."""
    from spf_lib.registry.gate import GateRules
    from spf_lib.registry.promotion import promote as run_gate
    from spf_lib.registry.register import register_model

    metrics: dict = {}
    if eval_dir and (Path(eval_dir) / "metrics.json").is_file():
        metrics, eval_lineage = split_metrics(json.loads((Path(eval_dir) / "metrics.json").read_text()))
        lineage = {**lineage, **eval_lineage}
    rules = None
    if promote:
        raw = parse_json_arg(gate_json, "gate_rules")
        if not raw:   # identity methods are judged on the person too (spf_lib/eval/identity.py)
            from spf_lib.eval.identity import adapter_trigger, identity_gate_rules
            from spf_lib.methods import read_adapter_info

            if adapter_trigger(read_adapter_info(adapter_dir)) is not None:
                raw = identity_gate_rules()
        rules = _build(GateRules, **raw)
    version = register_model(adapter_dir, base_model, metrics=metrics, lineage=lineage, model_name=model_name,
                             eval_dir=eval_dir, run_id=run_id or None,
                             gate_metrics=[r.metric for r in rules.rules] if rules else ())
    out = {"registered": to_dict(version), "promotion": None}
    if rules is not None:
        out["promotion"] = to_dict(run_gate(model_name, rules))
    return out


def compare_stage(columns: dict[str, str | Path], out_dir: str | Path, *, kfp_run_id: str = "",
                  run_name: str = "") -> dict:
    """The comparison picture (PNG + a self-contained HTML page) of evaluations of the same eval set.

    ``columns`` maps a method name to its evaluation output folder, in column order. When ``kfp_run_id`` names a
    pipeline run that has an MLflow run, the picture is attached to it (best effort: the picture is never lost
    because tracking is down).
    """
    from spf_lib.eval.compare import comparison_html, comparison_picture, method_summary
    from spf_lib.io import write_text_atomic

    names = {"lora": "LoRA", "spf": "SPF", "celeb-basis": "Celeb Basis", "beyond-inserting": "Beyond Inserting"}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "comparison.png"
    shown = [names.get(m, m) for m in columns]
    title = "original vs " + " vs ".join(shown) + " (same prompts, same seeds)"
    drawn = comparison_picture(dict(zip(shown, columns.values())), png, title=title)
    summaries = {m: method_summary(d) for m, d in columns.items()}
    page = out / "comparison.html"
    write_text_atomic(page, comparison_html(png, summaries, title))
    result = {**drawn, "html": str(page), "methods": summaries, "mlflow_run_id": None}
    if kfp_run_id:
        result["mlflow_run_id"] = _attach_to_pipeline_run(kfp_run_id, png, run_name, summaries)
    (out / "comparison.json").write_text(json.dumps(result, indent=2, sort_keys=True), encoding="utf-8")
    return result


def _attach_to_pipeline_run(kfp_run_id: str, png: Path, run_name: str = "",
                            summaries: dict[str, dict[str, float]] | None = None) -> str | None:
    """Log the picture into the pipeline run's MLflow (parent) run; None when that API or the store is not there.

    Best effort on purpose: the picture is already in the KFP artifact and printed by the demo; a tracking outage
    must not fail a run whose models are trained and registered.
    """
    try:
        from spf_lib.registry.session import pipeline_run
    except ImportError:  # the MLflow half of issue 14 provides it
        return None
    try:
        with pipeline_run(kfp_run_id, run_name or None) as run:
            run.log_artifact(str(png), artifact_path="comparison")
            # the methods side by side on the parent run, e.g. compare/lora/target_rate vs compare/spf/target_rate
            run.log_metrics({f"compare/{m}/{k}": v for m, vals in (summaries or {}).items() for k, v in vals.items()})
            return run.run_id
    except Exception as e:  # noqa: BLE001
        log.warning("comparison picture not attached to MLflow (%s: %s); it stays at %s", type(e).__name__, e, png)
        return None
