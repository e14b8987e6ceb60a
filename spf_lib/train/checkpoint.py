"""Resumable checkpoints, written so that a kill at any instant leaves the last good one usable.

A checkpoint is a folder ``checkpoints/step-NNNNNN/`` built under a temporary dot-name and renamed into place only
when every file is written (``spf_lib.io.atomic_dir``); ``latest`` only ever sees complete folders. Nothing is
pickled: trainable weights and RNG states are safetensors, the optimizer state is plain tensors/dicts read back with
``torch.load(weights_only=True)``, and the scheduler/step/loss history is JSON.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spf_lib.errors import SpfError
from spf_lib.io import atomic_dir

log = logging.getLogger(__name__)
STEP_RE = re.compile(r"^step-(\d+)$")
ADAPTER = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
RNG = "rng.safetensors"
STATE = "state.json"


@dataclass
class TrainState:
    """What the loop needs back on resume besides tensors."""

    step: int
    scheduler: dict[str, Any]
    history: dict[str, list[float]]
    config_hash: str
    mlflow_run_id: str | None = None
    python_random: list | None = None
    resume_hash: str | None = None


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary dot-folders of an interrupted save are ignored)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := STEP_RE.match(p.name)) and (p / STATE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """The checkpoint ``resume`` names (newest complete one for 'latest'), or None to start from step 0."""
    found = resume_candidates(output_dir, resume)
    return found[0] if found else None


def resume_candidates(output_dir: str | Path, resume: str | None) -> list[Path]:
    """Checkpoints to try, in order: for 'latest' every complete one, newest first (a corrupt newest one falls back
    to the one before); for an explicit folder just that folder."""
    if not resume:
        return []
    if resume == "latest":
        ckpts = list_checkpoints(output_dir)
        if not ckpts:
            log.warning("resume=latest: no checkpoint under %s; starting from step 0", checkpoint_root(output_dir))
        return ckpts[::-1]
    p = Path(resume)
    if not p.is_absolute() and not p.exists():
        p = checkpoint_root(output_dir) / resume
    if not (p / STATE).is_file():
        raise SpfError(f"resume={resume!r}: {p} is not a complete checkpoint folder")
    return [p]


def rng_tensors(generator) -> dict:
    import torch

    out = {"torch_cpu": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda_{i}"] = s
    return out


def restore_rng(tensors: dict, generator) -> None:
    import torch

    torch.set_rng_state(tensors["torch_cpu"])
    generator.set_state(tensors["generator"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda_"))]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def save_checkpoint(output_dir: str | Path, *, state: TrainState, trainable: dict, optimizer_state: dict,
                    generator, total_limit: int | None = None) -> Path:
    import random

    from safetensors.torch import save_file

    final = checkpoint_root(output_dir) / f"step-{state.step:06d}"
    with atomic_dir(final) as tmp:
        save_file(trainable, str(tmp / ADAPTER))
        _write_optimizer(optimizer_state, tmp / OPTIMIZER)
        save_file({k: v.contiguous() for k, v in rng_tensors(generator).items()}, str(tmp / RNG))
        state.python_random = _py_random_to_json(random.getstate())
        (tmp / STATE).write_text(json.dumps(state.__dict__, indent=1), encoding="utf-8")
    if total_limit:
        for old in list_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _write_optimizer(optimizer_state: dict, path: Path) -> None:
    """torch.save of the optimizer's plain state (tensors, numbers, lists): readable with weights_only=True."""
    import torch

    torch.save(optimizer_state, str(path))


def load_checkpoint(path: Path, generator) -> tuple[TrainState, dict, dict]:
    """Return (state, trainable tensors, optimizer state) and restore every RNG."""
    import pickle  # only for its error type: torch.load(weights_only=True) refuses arbitrary objects
    import random

    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        raw = json.loads((path / STATE).read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("state.json is not an object")
        state = TrainState(**raw)
        if not isinstance(state.step, int) or isinstance(state.step, bool) or state.step < 0:
            raise ValueError(f"step={state.step!r} is not a step count")
        if (m := STEP_RE.match(path.name)) and int(m.group(1)) != state.step:
            raise ValueError(f"state.json says step {state.step} but the folder is {path.name}")
        trainable = load_file(str(path / ADAPTER))
        opt = torch.load(str(path / OPTIMIZER), map_location="cpu", weights_only=True)
        if not isinstance(opt, dict) or "state" not in opt or "param_groups" not in opt:
            raise ValueError(f"{OPTIMIZER} is not an optimizer state")
        rng = load_file(str(path / RNG))
        if "torch_cpu" not in rng or "generator" not in rng:
            raise ValueError(f"{RNG} lacks the torch_cpu/generator states")
        restore_rng(rng, generator)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError, EOFError,
            pickle.UnpicklingError) as e:
        raise SpfError(f"{path}: unreadable checkpoint ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    if state.python_random:
        random.setstate(_py_random_from_json(state.python_random))
    return state, trainable, opt


def _py_random_to_json(s: tuple) -> list:
    return [s[0], list(s[1]), s[2]]


def _py_random_from_json(s: list) -> tuple:
    return (s[0], tuple(s[1]), s[2])
