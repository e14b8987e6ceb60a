"""`spf train`: thin; all logic is in ``spf_lib.train`` (heavy imports happen only when it runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from spf_lib.errors import SpfError

METHODS = ("lora", "spf", "celeb-basis", "beyond-inserting")


def train(
    method: Annotated[str | None, typer.Option("--method", help="lora | spf | celeb-basis | beyond-inserting")] = None,
    base_model: Annotated[str | None, typer.Option("--base-model", help="local folder, hub id or s3://bucket/prefix")] = None,
    data: Annotated[str | None, typer.Option("--data", help="a `spf data prepare` output folder")] = None,
    output: Annotated[str | None, typer.Option("--output", help="output folder (adapter/, checkpoints/, ...)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TrainConfig as JSON or YAML; flags override it")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="optimizer steps in total")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    lr: Annotated[float | None, typer.Option("--lr")] = None,
    rank: Annotated[int | None, typer.Option("--rank", help="LoRA rank")] = None,
    resolution: Annotated[int | None, typer.Option("--resolution")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    mixed_precision: Annotated[str | None, typer.Option("--mixed-precision", help="no | bf16 | fp16")] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="'latest' or a checkpoint folder")] = None,
    mlflow: Annotated[bool | None, typer.Option("--mlflow/--no-mlflow", help="log to MLflow (Settings.from_env)")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu | cuda | cuda:N (default: cuda if available)")] = None,
    allow_failed_qa: Annotated[bool | None, typer.Option("--allow-failed-qa", help="train on a prepare output "
                                                         "whose QA failed (logged)")] = None,
    spf_preset: Annotated[str | None, typer.Option("--spf-preset", help="spf (our best measured configuration, "
                                                   "default) | spf-paper (the paper's losses and two-stage schedule)")] = None,
) -> None:
    """Fine-tune a base model with one of the training methods (LoRA, SPF-Portrait, ...)."""
    if method is not None and method not in METHODS:
        raise SpfError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    overrides = {"method": method, "base_model": base_model, "data_dir": data, "output_dir": output, "steps": steps,
                 "seed": seed, "lr": lr, "rank": rank, "resolution": resolution, "batch_size": batch_size,
                 "mixed_precision": mixed_precision, "resume": resume, "mlflow": mlflow, "device": device,
                 "allow_failed_qa": allow_failed_qa}
    from spf_lib.train.config import SPF_PRESETS, TrainConfig

    if spf_preset is not None and spf_preset not in SPF_PRESETS:
        raise SpfError(f"--spf-preset {spf_preset!r}: expected one of {', '.join(SPF_PRESETS)}")
    if config is not None:
        cfg = TrainConfig.from_file(config, spf_preset=spf_preset, **overrides)
    else:
        missing = [f"--{k}" for k, v in (("base-model", base_model), ("data", data), ("output", output)) if v is None]
        if missing:
            raise SpfError(f"spf train: missing {', '.join(missing)} (or give --config FILE)")
        spf = {"spf": {"preset": spf_preset}} if spf_preset else {}
        cfg = TrainConfig.build("spf train", **{k: v for k, v in overrides.items() if v is not None}, **spf)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from spf_lib.train.run import train as run_train

    result = run_train(cfg)
    typer.echo(json.dumps({k: v for k, v in result.to_dict().items() if k not in ("losses", "loss_terms")}, indent=2))
