"""Validation grids: original vs tuned, same prompt, same seed, the SAME pipeline with the adapter off then on.

Reusing the training pipeline (no second model in memory) is what keeps validation from running out of memory on a
GPU; the global RNG is saved and restored around it so validation never changes the training trajectory (resume
equivalence holds whatever the validation schedule).
"""

from __future__ import annotations

import logging
from pathlib import Path

from spf_lib.io import atomic_path

log = logging.getLogger(__name__)


def render_grid(ctx, method, out_path: Path, step: int | None = None) -> Path:
    """Rows = (prompt, seed); columns = original | tuned, labelled. Returns the PNG path."""
    import torch

    from spf_lib.eval.grid import labelled_grid

    v = ctx.cfg.validation
    res = ctx.cfg.resolution
    cpu_state = torch.get_rng_state()
    was_training = ctx.unet.training
    ctx.unet.eval()
    rows: list[tuple[str, int, list]] = []
    try:
        with torch.no_grad(), ctx.accelerator.autocast():
            for prompt in v.prompts:
                for seed in v.seeds:
                    pair = []
                    for enabled in (False, True):
                        method.set_enabled(ctx, enabled)
                        text = method.prompt(prompt) if enabled else prompt
                        g = torch.Generator(device="cpu").manual_seed(seed)
                        img = ctx.pipe(text, num_inference_steps=v.num_inference_steps, guidance_scale=v.guidance_scale,
                                       height=res, width=res, generator=g).images[0]
                        pair.append(img)
                    rows.append((prompt, seed, pair))
    finally:
        method.set_enabled(ctx, True)
        ctx.unet.train(was_training)
        torch.set_rng_state(cpu_state)
    tuned = "tuned" if step is None else f"tuned, step {step}"
    grid = labelled_grid([(f"{prompt}\nseed {seed}", pair) for prompt, seed, pair in rows], ["original", tuned],
                         min_tile=max(128, res), title=f"validation: {ctx.cfg.method}"
                         + ("" if step is None else f" at step {step}"))
    with atomic_path(out_path) as tmp:
        grid.save(tmp, format="PNG")
    return out_path
