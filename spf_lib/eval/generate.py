"""Original and tuned images from ONE pipeline: the adapter switched off and on, identical seeds and scheduler.

Loading the base model twice would double memory and could differ in subtle ways (dtype casts, scheduler config);
switching the adapter on the same modules guarantees that every difference between the two images of a pair comes
from the adapter alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from spf_lib.eval.evalset import EvalItem

log = logging.getLogger(__name__)


def _batches(items: Sequence[EvalItem], size: int) -> Iterator[list[EvalItem]]:
    for i in range(0, len(items), size):
        yield list(items[i:i + size])


def default_resolution(pipe: Any) -> int:
    factor = getattr(pipe, "vae_scale_factor", 8)
    denoiser = getattr(pipe, "unet", None) or pipe.transformer  # SD3: a transformer
    return int(denoiser.config.sample_size) * int(factor)


def generate_images(pipe: Any, items: Sequence[EvalItem], *, prompt_fn=None, steps: int, guidance: float,
                    resolution: int, batch_size: int, device: str = "cpu", desc: str = "generate",
                    progress: bool = True) -> dict[str, Any]:
    """Return ``{item.key: PIL.Image}``; each image uses its own ``torch.Generator`` seeded with ``item.seed``.

    Per-item generators make an image independent of its batch neighbours and of the batch size, so the original and
    tuned images of a pair share their initial latents exactly.
    """
    import torch
    from tqdm.auto import tqdm

    prompt_fn = prompt_fn or (lambda t: t)
    out: dict[str, Any] = {}
    gen_device = "cpu" if str(device).startswith("mps") else device
    bar = tqdm(total=len(items), desc=desc, unit="img", disable=not progress, leave=False)
    for batch in _batches(items, batch_size):
        gens = [torch.Generator(device=gen_device).manual_seed(int(it.seed)) for it in batch]
        with torch.no_grad():
            result = pipe(
                prompt=[prompt_fn(it.prompt) for it in batch], num_inference_steps=steps, guidance_scale=guidance,
                height=resolution, width=resolution, generator=gens, output_type="pil",
            )
        for it, img in zip(batch, result.images):
            out[it.key] = img.convert("RGB")
        bar.update(len(batch))
    bar.close()
    return out


def save_images(images: dict[str, Any], folder: Path) -> dict[str, str]:
    """Write PNGs; return ``{key: relative path}`` (relative to the output folder's parent of ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    rel = {}
    for key, img in images.items():
        path = folder / f"{key}.png"
        img.save(path, format="PNG")
        rel[key] = f"{folder.parent.name}/{folder.name}/{path.name}"
    return rel
