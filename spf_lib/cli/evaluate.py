"""`spf evaluate`: score a tuned adapter against its base model (ID similarity, CLIP, pollution) and write a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spf_lib.errors import SpfError


def evaluate(
    base: Annotated[str | None, typer.Option("--base", help="base model: local folder, hub id or s3:// prefix")] = None,
    adapter: Annotated[Path | None, typer.Option("--adapter", help="adapter folder written by `spf train`")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="output folder (metrics.json, report.html)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML/JSON file of EvalConfig fields; "
                                                "options given here win")] = None,
    clip_model: Annotated[str | None, typer.Option("--clip-model", help="CLIP for CLIP-T/CLIP-I: folder, hub id or "
                                                   "s3://; without it those metrics are reported unavailable")] = None,
    eval_set: Annotated[Path | None, typer.Option("--eval-set", help="eval set YAML/JSON (default: built-in "
                                                  "portrait set)")] = None,
    reference_faces: Annotated[Path | None, typer.Option("--reference-faces", help="photos of the trained identity "
                                                         "(enables id_ref_sim)")] = None,
    face_encoder: Annotated[str | None, typer.Option("--face-encoder", help="'dlib' or an ArcFace/CosFace .onnx "
                                                     "file")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="inference steps")] = None,
    resolution: Annotated[int | None, typer.Option("--resolution", help="image size (default: the model's)")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1, ...")] = None,
    mlflow_run_id: Annotated[str | None, typer.Option("--mlflow-run-id", help="log grids, table and metrics into "
                                                      "this MLflow run")] = None,
) -> None:
    """Evaluate a tuned adapter against its base model on a fixed eval set."""
    from spf_lib.eval.config import EvalConfig
    from spf_lib.eval.run import evaluate as run_evaluate

    given = {"base_model": base, "adapter_dir": adapter, "output_dir": output, "clip_model": clip_model,
             "eval_set": str(eval_set) if eval_set else None, "reference_faces_dir": reference_faces,
             "face_encoder": face_encoder, "num_inference_steps": steps, "resolution": resolution,
             "batch_size": batch_size, "device": device, "mlflow_run_id": mlflow_run_id}
    if config is not None:
        cfg = EvalConfig.from_file(config, **given)
    else:
        missing = [flag for flag, key in (("--base", "base_model"), ("--adapter", "adapter_dir"),
                                          ("--output", "output_dir")) if given[key] is None]
        if missing:
            raise SpfError(f"spf evaluate: missing {', '.join(missing)} (or give --config FILE)")
        cfg = EvalConfig(**{k: v for k, v in given.items() if v is not None})
    result = run_evaluate(cfg)
    _print_summary(result)


def _print_summary(result) -> None:
    m = result.metrics
    keys = ("pollution", "id_sim", "clip_t", "clip_t_gain", "clip_i", "ssim", "pixel_mae", "lpips", "fid")
    for k in keys:
        v = m.get(k)
        note = f"  (unavailable: {result.unavailable[k]})" if v is None and k in result.unavailable else ""
        typer.echo(f"{k:12s} {'n/a' if v is None else f'{v:.4f}'}{note}")
    typer.echo(f"wrote {result.metrics_path} and {result.report_path}")
