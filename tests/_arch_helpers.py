"""Shared by the real-architecture tests: one training step on a pipeline built once per module, and the cleanup
that returns that pipeline to its original state for the next test (adapters and capture processors removed)."""

from __future__ import annotations

from pathlib import Path

RESOLUTION = 128


def arch_trainer(pipe, tmp: Path, method: str, **kw):
    """A Trainer on ``pipe`` at 128 px, batch 1, fp32, SPF in stage 2 from step 0."""
    from _train_helpers import make_dataset

    from spf_lib.train.config import TrainConfig
    from spf_lib.train.run import Trainer

    data = make_dataset(tmp / "data", n=2, size=RESOLUTION)
    values = {"method": method, "base_model": "random-init", "data_dir": str(data),
              "output_dir": str(tmp / f"out-{method}"), "steps": 1, "seed": 0, "lr": 1e-3, "resolution": RESOLUTION,
              "batch_size": 1, "device": "cpu", "validation": {"enabled": False}}
    values.update(kw)
    # L_preserve beside the response path on every sample: the step exercises every loss on the real architecture
    values["spf"] = {"stage1_steps": 0, "preserve_frac": 1.0, "preserve_schedule": "beside", **kw.get("spf", {})}
    cfg = TrainConfig.build("test", **values)
    return Trainer(cfg, pipe=pipe)


def reset(pipe) -> None:
    """Drop every adapter and capture processor so the next test starts from the original model."""
    from spf_lib.models.attention import remove_capture

    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    remove_capture(denoiser)
    if getattr(denoiser, "peft_config", None):
        denoiser.delete_adapters(list(denoiser.peft_config))
    denoiser.eval()
    denoiser.requires_grad_(False)


def frozen_checksum(module) -> float:
    """Sum of every non-adapter weight: any change to the frozen model moves it."""
    import torch

    with torch.no_grad():
        return float(sum(p.double().sum() for n, p in module.named_parameters() if "lora_" not in n))


def spf_step_with_maps(tr):
    """One SPF training step; returns (logs, ref maps, res maps) as the response losses read them.

    The method drops the reference maps once its losses are computed (they are not needed by the backward), so
    the test keeps what the store held just before that."""
    store = tr.method.store
    seen: list[dict] = []
    real = store.drop

    def drop(mode: str) -> None:
        seen.append(dict(store.maps))
        real(mode)

    store.drop = drop
    try:
        logs = tr.train_step()
    finally:
        del store.drop
    return logs, seen[-1]["ref"], seen[-1]["res"]


def token_rows_moved(tr) -> set[str]:
    """Text encoders whose learned target-token rows left the base model's rows (the frozen table is untouched)."""
    import torch

    moved = set()
    for name, ids, vec, _ in tr.method.tokens.encoders:
        table = getattr(tr.ctx.pipe, name).get_input_embeddings().weight
        if not torch.equal(vec.detach().to(table.dtype), table[ids]):
            moved.add(name)
    return moved
