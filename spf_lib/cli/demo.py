"""`spf demo`: the whole pipeline locally on embedded defaults."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from spf_lib.errors import SpfError


def demo(
    workdir: Annotated[Path, typer.Option(help="demo workspace (model, data repo, DVC remote, MLflow db)")] = Path(
        ".spf/demo"),
    method: Annotated[str, typer.Option(help="lora | spf | celeb-basis | beyond-inserting")] = "spf",
    steps: Annotated[int, typer.Option(min=1, help="training steps")] = 40,
    images: Annotated[int, typer.Option(min=4, help="number of synthetic portraits")] = 24,
    base_model: Annotated[str | None, typer.Option(help="use this base model instead of the built-in one")] = None,
) -> None:
    """Run the full pipeline (data → train → evaluate → register) under kfp's local runner."""
    from rich.console import Console

    from spf_lib.demo import demo_configs, prepare_workspace
    from spf_lib.methods import METHODS
    from spf_lib.settings import quiet_third_parties

    if method not in METHODS:
        raise SpfError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    quiet_third_parties()
    console = Console()
    t0 = time.perf_counter()
    with console.status("[1/2] building the demo workspace: base model, synthetic portraits, DVC repo"):
        ws = prepare_workspace(workdir, n_images=images, base_model=base_model)
    console.print(f"[green]workspace ready[/] in {time.perf_counter() - t0:.0f}s: data rev {ws.data_rev[:10]}, "
                  f"base model {ws.base_model}")
    os.environ["MLFLOW_TRACKING_URI"] = ws.tracking_uri
    os.environ.setdefault("SPF_HOME", str(ws.root))
    from pipelines.local import run_local

    log_path = ws.root / "pipeline.log"
    console.print("[2/2] running the KFP pipeline locally (prepare → train → evaluate → register); "
                  f"task output goes to {log_path}")
    params = {"data_repo": ws.data_repo, "data_rev": ws.data_rev, "base_model": ws.base_model, "method": method,
              "model_name": os.environ.get("SPF_MODEL_NAME", "spf-portrait-demo"),
              **demo_configs(ws.resolution, steps, method)}
    if method in ("celeb-basis", "beyond-inserting"):
        console.print("identity method: the learned person is prompted as 'sks person'")
    out = run_local(params, ws.root / "pipeline-root", log_path=log_path)
    print_summary(console, ws, out, time.perf_counter() - t0)


HEADLINE = (
    ("pollution", "pollution (0 = tuned behaves like original on base prompts)"),
    ("clip_t", "CLIP-T on target prompts (tuned)"),
    ("clip_t_original", "CLIP-T on target prompts (original)"),
    ("clip_i", "CLIP-I original vs tuned (base prompts)"),
    ("id_sim", "ID similarity original vs tuned"),
    ("ssim", "SSIM original vs tuned (base prompts)"),
)


def print_summary(console, ws, out: dict, seconds: float) -> None:
    from rich.table import Table

    reg = out["registration"]["registered"]
    promo = out["registration"].get("promotion") or {}
    metrics = out["metrics"]
    unavailable = metrics.get("unavailable") or {}
    table = Table(title="spf demo: summary", show_header=False)
    table.add_row("data revision", f"{out['data_rev'][:12]} (DVC md5 {ws.data_hash})")
    table.add_row("images kept / rejected", f"{out['n_kept']} / {out['n_rejected']}")
    table.add_row("final training loss", f"{out['final_loss']:.4f}")
    for key, label in HEADLINE:
        value = metrics.get(key)
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else \
            f"unavailable: {str(unavailable.get(key, 'not measured'))[:70]}"
        table.add_row(label, shown)
    aliases = ", ".join(reg.get("aliases") or [])
    table.add_row("registered model", f"{reg['name']} version {reg['version']} (aliases at registration: {aliases})")
    if promo:
        table.add_row("promotion gate", promo.get("message") or ("passed" if promo.get("passed") else "failed"))
    reports = sorted((ws.root / "pipeline-root").glob("*/evaluate-model/evaluation/report.html"),
                     key=lambda p: p.stat().st_mtime)
    if reports:
        table.add_row("evaluation report", str(reports[-1]))
    table.add_row("wall time", f"{seconds:.0f}s")
    console.print(table)
    console.print(f"Open the results: [bold]mlflow ui --backend-store-uri {ws.tracking_uri} --port 5000[/]")
