"""Helpers that run INSIDE a component's pod: checkpoint location and the multi-GPU / multi-node launcher.

Kept free of kfp imports: a lightweight component executes under ``kfp.dsl.executor_main``, where ``kfp.dsl`` is only
partly importable, so ``pipelines.platform`` (which imports ``kfp.kubernetes``) cannot be imported there.

How the train component uses them::

    from pipelines.runtime import checkpoint_dir, train_launch_prefix
    ckpt = checkpoint_dir(kfp_run_id, default=os.path.join(model.path, "checkpoints"))
    cmd = [*train_launch_prefix(), "spf_lib.cli.main", "train", "--checkpoint-dir", ckpt, "--resume", "latest", ...]
    subprocess.run(cmd, check=True)
"""

from __future__ import annotations

import os
import shutil
import sys


def checkpoint_dir(kfp_run_id: str, default: str) -> str:
    """Where a train step keeps checkpoints: per run on the PVC when it is mounted (so retries resume), else
    ``default``.

    The local runner also sets the task's env vars, so ``SPF_CHECKPOINT_ROOT`` alone does not prove we are on the
    cluster: the folder must be a mount point (the PVC), otherwise local runs would write to ``/mnt``."""
    root = os.environ.get("SPF_CHECKPOINT_ROOT")
    if not root or not os.path.ismount(root):
        return default
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in kfp_run_id) or "no-run-id"
    return os.path.join(root, safe)


def visible_gpu_count() -> int:
    """GPUs this pod can use, without importing torch when the device plugin already told us."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES") or os.environ.get("NVIDIA_VISIBLE_DEVICES")
    if env and env not in ("all", "void", "none"):
        return len([d for d in env.split(",") if d.strip()])
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:  # pragma: no cover - torch is a dependency of the image
        return 0


def train_launch_prefix(
    num_gpus: int | None = None,
    *,
    num_machines: int = 1,
    machine_rank: int = 0,
    main_process_ip: str | None = None,
    main_process_port: int = 29500,
    mixed_precision: str = "no",
) -> list[str]:
    """The argv prefix that runs ``python -m <module> ...`` once per GPU of this pod (and across machines).

    The train component appends ``["spf_lib.cli.main", "train", ...]`` and runs it with ``subprocess.run``.
    One process on one machine needs no launcher: the prefix is then plain ``python -m``."""
    gpus = visible_gpu_count() if num_gpus is None else num_gpus
    if gpus < 0 or num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise ValueError(f"bad launch shape: gpus={gpus} num_machines={num_machines} machine_rank={machine_rank}")
    per_node = max(gpus, 1)
    if per_node == 1 and num_machines == 1:
        return [sys.executable, "-m"]
    if num_machines > 1 and not main_process_ip:
        raise ValueError("multi-node launch needs main_process_ip (MASTER_ADDR)")
    accelerate = shutil.which("accelerate")
    prefix = [accelerate, "launch"] if accelerate else [sys.executable, "-m", "accelerate.commands.launch"]
    prefix += [
        "--num_processes", str(per_node * num_machines),
        "--num_machines", str(num_machines),
        "--machine_rank", str(machine_rank),
        "--mixed_precision", mixed_precision,
        "--dynamo_backend", "no",
    ]
    prefix += ["--multi_gpu"]  # torchrun-style workers; on a CPU-only host they fall back to gloo
    prefix += ["--main_process_port", str(main_process_port)]  # explicit: two jobs on one host must not collide
    if num_machines > 1:
        prefix += ["--main_process_ip", str(main_process_ip), "--same_network"]
    return [*prefix, "-m"]


def launch_prefix_from_env(env: dict[str, str] | None = None, num_gpus: int | None = None) -> list[str]:
    """Launch prefix inside a PyTorchJob pod: the training operator sets ``PET_NNODES``/``PET_NODE_RANK`` (or the
    older ``WORLD_SIZE``/``RANK``, one process per pod) and ``MASTER_ADDR``/``MASTER_PORT``."""
    env = dict(os.environ if env is None else env)
    nodes = int(str(env.get("PET_NNODES") or env.get("WORLD_SIZE") or 1).split(":")[-1])  # elastic "min:max"
    rank = int(env.get("PET_NODE_RANK") or env.get("RANK") or 0)
    return train_launch_prefix(
        num_gpus, num_machines=nodes, machine_rank=rank, main_process_ip=env.get("MASTER_ADDR"),
        main_process_port=int(env.get("MASTER_PORT") or 29500),
    )
