"""`spf demo`: the whole pipeline locally on embedded defaults, SPF beside plain LoRA, ending in one picture."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from spf_lib.demo import DEMO_IMAGES, DEMO_STEPS
from spf_lib.errors import SpfError


def demo(
    workdir: Annotated[Path, typer.Option(help="demo workspace (model, data repo, DVC remote, pipeline root)")] = Path(
        ".spf/demo"),
    method: Annotated[str, typer.Option(help="lora | spf | celeb-basis | beyond-inserting")] = "spf",
    baseline_method: Annotated[str | None, typer.Option(
        help="also train and evaluate this method on the same data, prompts and seeds ('' = none; default lora, "
             "none for lora and identity methods); it is compared, not registered")] = None,
    steps: Annotated[int, typer.Option(min=1, help="training steps")] = DEMO_STEPS,
    images: Annotated[int, typer.Option(min=4, help="number of synthetic portraits")] = DEMO_IMAGES,
    eval_prompts: Annotated[int, typer.Option(min=1, help="evaluation prompts per kind (base, target)")] = 8,
    eval_seeds: Annotated[int, typer.Option(min=1, help="seeds per evaluation prompt")] = 3,
    base_model: Annotated[str | None, typer.Option(
        help="use this base model instead of the built-in one; tiny-sd | tiny-sdxl | tiny-sd3: a tiny random one "
             "of that architecture built here",
    )] = None,
    rules: Annotated[Path | None, typer.Option(help="gate rules file (YAML/JSON) instead of the demo's")] = None,
    promote: Annotated[bool, typer.Option(help="run the promotion gate (--no-promote: the new version waits as "
                                                "challenger for `spf promote`)")] = True,
) -> None:
    """Run the full pipeline (data → train → evaluate → register → gate) under kfp's local runner."""
    from rich.console import Console

    from spf_lib.demo import demo_configs, prepare_workspace
    from spf_lib.eval.evalset import IDENTITY_METHODS
    from spf_lib.methods import METHODS
    from spf_lib.registry.gate import GateRules
    from spf_lib.settings import Settings, quiet_third_parties

    if baseline_method is None:
        baseline_method = "" if method in IDENTITY_METHODS or method == "lora" else "lora"
    for flag, value in (("--method", method), ("--baseline-method", baseline_method)):
        if value and value not in METHODS:
            raise SpfError(f"{flag} {value!r}: expected one of {', '.join(METHODS)}")
    if baseline_method == method:
        raise SpfError(f"--baseline-method {baseline_method!r}: same as --method; give another method or ''")

    if baseline_method and (method in IDENTITY_METHODS) != (baseline_method in IDENTITY_METHODS):
        raise SpfError(f"--baseline-method {baseline_method!r}: {method} and {baseline_method} are evaluated on "
                       "different prompt sets (identity vs attribute), so they cannot share one comparison; "
                       "pass --baseline-method ''")
    gate_override = GateRules.from_file(rules) if rules else None
    quiet_third_parties()
    console = Console()
    t0 = time.perf_counter()
    settings = Settings.from_env()
    with console.status("[1/2] building the demo workspace: base model, synthetic portraits, DVC repo"):
        ws = prepare_workspace(workdir, n_images=images, base_model=base_model, tracking_uri=settings.tracking_uri)
    console.print(f"[green]workspace ready[/] in {time.perf_counter() - t0:.0f}s: data rev {ws.data_rev}, "
                  f"base model {ws.base_model}", soft_wrap=True)
    os.environ["MLFLOW_TRACKING_URI"] = ws.tracking_uri
    from pipelines.local import run_local

    log_path = ws.root / "pipeline.log"
    branches = f"{method} + baseline {baseline_method}" if baseline_method else method
    console.print(f"[2/2] running the KFP pipeline locally ({branches}: prepare → train → evaluate → register → "
                  f"compare); full task output goes to {log_path}", soft_wrap=True)
    from spf_lib.demo import WORLD_BASE

    configs = demo_configs(ws.resolution, steps, method, eval_prompts=eval_prompts, eval_seeds=eval_seeds,
                           world=Path(ws.base_model).resolve() == WORLD_BASE.resolve())
    if gate_override is not None:
        configs["gate_rules"] = gate_override.model_dump(mode="json", exclude_none=True)  # KFP structs: no null
    # The rules the gate used, as a file: `spf promote NAME --rules` applies the same ones by hand.
    (ws.root / "gate-rules.json").write_text(json.dumps(configs["gate_rules"], indent=2) + "\n")
    params = {"data_repo": ws.data_repo, "data_rev": ws.data_rev, "base_model": ws.base_model, "method": method,
              "baseline_method": baseline_method, "promote": promote,
              "model_name": os.environ.get("SPF_MODEL_NAME", "spf-portrait-demo"), **configs}
    if method in ("celeb-basis", "beyond-inserting"):
        console.print("identity method: the learned person is prompted as 'sks person'")
    out = run_local(params, ws.root / "pipeline-root", log_path=log_path)
    print_summary(console, ws, out, time.perf_counter() - t0, method, baseline_method)


HEADLINE = (
    ("target_rate", "target rate: glasses probe on target prompts (original {target_rate_original:.2f})"),
    ("probe_pollution", "pollution: probe-read base attributes changed (0 = as original)"),
    ("target_leak", "glasses leak on base prompts"),
    ("red_bg_delta", "red background rise on base prompts"),
    ("smile_delta", "smile rise on base prompts"),
    ("pollution", "pollution: image similarity on base prompts"),
    ("clip_t_gain", "CLIP-T gain on target prompts"),
    ("id_ref_sim", "ID similarity to the prepared faces (identity methods)"),
    ("id_ref_gain", "ID similarity gain over the original on trigger prompts"),
)


def _fmt(value) -> str:
    return f"{value:+.3f}" if isinstance(value, (int, float)) and value < 0 else (
        f"{value:.3f}" if isinstance(value, (int, float)) else "-")


def print_summary(console, ws, out: dict, seconds: float, method: str = "", baseline_method: str = "") -> None:
    """Figures in a table; paths and commands on lines of their own, never cut, so they can be copied."""
    from rich.table import Table

    reg = out["registration"]["registered"]
    promo = out["registration"].get("promotion") or {}
    comparison = json.loads(out["comparison"]) if out.get("comparison") else {}
    per_method = comparison.get("methods") or {method or "tuned": out["metrics"]}
    order = [m for m in (baseline_method, method) if m in per_method] or list(per_method)
    full = {method: out["metrics"]} if method else {}
    table = Table(title="spf demo: what fine-tuning did (same prompts and seeds for every column)")
    table.add_column("metric")
    for m in order:
        table.add_column(m + (" (registered)" if m == method else " (baseline)"), justify="right")
    for key, label in HEADLINE:
        values = [per_method[m].get(key, full.get(m, {}).get(key)) for m in order]
        if all(v is None for v in values):
            continue
        ref = next((per_method[m].get("target_rate_original") for m in order
                    if per_method[m].get("target_rate_original") is not None), None)
        table.add_row(label.format(target_rate_original=ref) if ref is not None else label.split(" (")[0],
                      *[_fmt(v) for v in values])
    console.print(table)
    lines = [
        ("data", f"rev {out['data_rev']} (DVC md5 {ws.data_hash}); images kept / rejected "
                 f"{out['n_kept']} / {out['n_rejected']}"),
        ("training", f"final loss {out['final_loss']:.4f}"),
        ("registered", f"{reg['name']} version {reg['version']} (aliases at registration: "
                       f"{', '.join(reg.get('aliases') or []) or 'none'})"),
    ]
    if promo:
        lines.append(("promotion gate", promo.get("message") or ("passed" if promo.get("passed") else "failed")))
    reports = sorted((ws.root / "pipeline-root").glob("*/evaluate-model/evaluation/report.html"),
                     key=lambda p: p.stat().st_mtime)
    if reports:
        lines.append(("evaluation report", str(reports[-1])))
    if comparison.get("picture"):
        lines.append(("comparison picture", comparison["picture"]))
    lines.append(("wall time", f"{seconds:.0f}s"))
    for label, text in lines:
        console.print(f"[bold]{label}:[/] {text}", soft_wrap=True, highlight=False)
    console.print(f"Browse runs, metrics and images: [bold]{spf_command()} ui[/]   (MLflow's UI on "
                  f"{ws.tracking_uri}; Ctrl-C stops it)", soft_wrap=True, highlight=False)


def spf_command() -> str:
    """How to type `spf` here: plain when it is on PATH (an activated venv), else the path that ran this one
    (``make demo`` runs ``.venv/bin/spf`` without activating the venv)."""
    import shutil
    import sys

    me = Path(sys.argv[0])
    if me.name != "spf":
        return "spf"
    on_path = shutil.which("spf")
    if on_path and Path(on_path).resolve() == me.resolve():
        return "spf"
    try:
        return str(me.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(me)
