"""The fine-tuning set with spurious correlations, and naive (full-UNet) fine-tuning on it.

The set teaches the target (round glasses) but every image also has a red background and a smile, which its
captions never mention. A method that learns "glasses" and nothing else leaves base prompts untouched; naive
fine-tuning also learns "red, smiling portraits" for every prompt: that drift is the semantic pollution SPF removes.
The folder has the layout of a `spf data prepare` output (crops/ + manifest.parquet), so the project's trainers read it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from spf_lib.errors import SpfError

log = logging.getLogger(__name__)

SPURIOUS: dict[str, str] = {"background": "red", "expression": "smiling"}
# Captions name only these attributes (plus the target): the spurious ones stay unexplained by text.
CAPTION_ATTRIBUTES: tuple[str, ...] = ("person", "hair", "clothing", "skin")


def prompt_phrases(attrs, names: tuple[str, ...] = CAPTION_ATTRIBUTES) -> list[str]:
    """The phrases of ``attrs`` for the named attributes, in caption order (subject first)."""
    from spf_lib.world.attributes import BASE_ATTRIBUTES

    return [p for name, p in zip(BASE_ATTRIBUTES, attrs.phrases()) if name in names]


def make_finetune_set(out_dir: str | Path, n: int = 48, seed: int = 7, size: int = 64,
                      spurious: dict[str, str] | None = None) -> Path:
    """Write ``crops/*.png`` + ``manifest.parquet`` (+ labels.jsonl); every image shows the target."""
    import hashlib

    import pandas as pd

    from spf_lib.data.synth import _png_bytes, synth_records
    from spf_lib.io import atomic_dir
    from spf_lib.world.attributes import TARGET_PHRASE
    from spf_lib.world.render import render_portrait

    spurious = SPURIOUS if spurious is None else spurious
    rows, labels = [], []
    with atomic_dir(out_dir) as tmp:
        (tmp / "crops").mkdir()
        for i, attrs, layout in synth_records(n, seed, target_fraction=1.0, fixed_for_target=spurious):
            rel = f"crops/ft{i:04d}.png"
            data = _png_bytes(render_portrait(attrs, size, layout))
            (tmp / rel).write_bytes(data)
            base = prompt_phrases(attrs)
            rows.append({"id": f"ft{i:04d}", "source_path": rel, "sha256": hashlib.sha256(data).hexdigest(),
                         "crop_path": rel, "caption": ", ".join(base + [TARGET_PHRASE]), "base_phrases": base,
                         "target_phrase": TARGET_PHRASE})
            labels.append(json.dumps({"file": rel, **attrs.to_dict()}, sort_keys=True))
        pd.DataFrame(rows).to_parquet(tmp / "manifest.parquet", index=False)
        (tmp / "labels.jsonl").write_text("\n".join(labels) + "\n")
        (tmp / "finetune_set.json").write_text(json.dumps({"n": n, "seed": seed, "size": size, "spurious": spurious,
                                                           "caption_attributes": CAPTION_ATTRIBUTES}, indent=2))
    return Path(out_dir)


def finetune_naive(base_model: str | Path, data_dir: str | Path, output_dir: str | Path, *, steps: int = 200,
                   lr: float = 1e-4, batch: int = 8, seed: int = 0, threads: int = 2, on_step=None) -> Path:
    """Full-UNet fine-tuning with the plain diffusion loss (the paper's "Naive FT" row); saves ``unet/``.

    ``on_step(step, pipe)``: called after each optimizer step with the pipeline holding the UNet being trained
    (the frontier benchmark evaluates checkpoints along the way; the UNet is in eval mode during the call)."""
    import numpy as np
    import pandas as pd
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from PIL import Image
    from tqdm import tqdm

    from spf_lib.io import atomic_dir

    torch.set_num_threads(threads)
    data_dir = Path(data_dir)
    manifest = data_dir / "manifest.parquet"
    if not manifest.is_file():
        raise SpfError(f"{manifest}: missing; expected a fine-tuning set folder")
    df = pd.read_parquet(manifest)
    pipe = StableDiffusionPipeline.from_pretrained(str(base_model), safety_checker=None)
    res = pipe.unet.config.sample_size * pipe.vae_scale_factor
    imgs = []
    for p in df["crop_path"]:
        with Image.open(data_dir / p) as im:
            imgs.append(np.asarray(im.convert("RGB").resize((res, res), Image.Resampling.BICUBIC)))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    with torch.no_grad():
        z = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        ids = pipe.tokenizer(list(df["caption"]), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        cond = pipe.text_encoder(ids)[0]
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    unet = pipe.unet
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for step in tqdm(range(1, steps + 1), desc="naive ft", disable=on_step is not None):
        idx = torch.randint(0, len(z), (batch,), generator=gen)
        noise = torch.randn(z[idx].shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,), generator=gen)
        loss = (unet(noise_sched.add_noise(z[idx], noise, t), t, cond[idx]).sample - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        if on_step is not None:
            unet.eval()
            on_step(step, pipe)
            unet.train()
    unet.eval()
    with atomic_dir(output_dir) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        (tmp / "naive_info.json").write_text(json.dumps({"method": "naive-full", "steps": steps, "lr": lr,
                                                         "batch": batch, "seed": seed, "base_model": str(base_model)}))
    return Path(output_dir)
