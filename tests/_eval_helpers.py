"""Shared fixtures for the evaluation tests: a tiny base model, LoRA adapters with a controlled perturbation, and
the real public-domain portraits that ship in packages (skimage astronaut = Eileen Collins, matplotlib's Grace
Hopper)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

#: A small eval set so a test generates a handful of 32-px images in seconds.
TINY_EVAL_SET = {
    "name": "test-tiny", "version": "t1", "target": "wearing round glasses", "seeds": [0, 1],
    "base_prompts": ["a photo of a woman, blonde hair, blue shirt, curtain background",
                     "a photo of a man, short black hair, grey suit, plain background"],
}


def tiny_base(root: Path) -> Path:
    from spf_lib.models.factory import save_tiny_pipeline

    out = root / "tiny-base"
    if not out.exists():
        save_tiny_pipeline(out)
    return out


def lora_adapter(base_dir: Path, out_dir: Path, scale: float, seed: int = 0, rank: int = 4) -> Path:
    """Write a diffusers-format LoRA adapter whose up-projection is ``scale * N(0, 1)`` (``scale=0`` → exactly the
    base model), plus ``adapter_info.json``, the layout the train stage writes."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(base_dir, subfolder="unet", use_safetensors=True)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=True))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(scale * torch.randn(p.shape, generator=g))
            elif "lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(p.shape[1]))
    out_dir.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        out_dir, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))
    (out_dir / "adapter_info.json").write_text(json.dumps({"method": "lora", "format": "lora", "scale": scale}))
    return out_dir


def astronaut():
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut())


def grace_hopper():
    import matplotlib
    from PIL import Image

    return Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")).convert("RGB")


def eval_config(tmp: Path, adapter: Path, base: Path, **kw):
    from spf_lib.eval.config import EvalConfig

    defaults = {"eval_set": TINY_EVAL_SET, "num_inference_steps": 2, "resolution": 32, "batch_size": 4,
                "progress": False, "log_mlflow": False}
    defaults.update(kw)
    return EvalConfig(base_model=str(base), adapter_dir=adapter, output_dir=tmp, **defaults)


#: One eval set for the end-to-end tests: 1 base prompt x 2 seeds (+ the same with the target) = 4 images/model.
SMALL_EVAL_SET = {**TINY_EVAL_SET, "base_prompts": TINY_EVAL_SET["base_prompts"][:1]}
_CACHE: dict = {}


def shared_root(tmp_path_factory) -> Path:
    if "root" not in _CACHE:
        _CACHE["root"] = tmp_path_factory.mktemp("eval-shared")
    return _CACHE["root"]


def evaluated(tmp_path_factory, scale: float, **kw):
    """Evaluate the tiny base + a LoRA of ``scale`` once per pytest session (several test files read the output)."""
    from spf_lib.eval.run import evaluate

    key = (scale, json.dumps(kw, sort_keys=True, default=str))
    if key not in _CACHE:
        root = shared_root(tmp_path_factory)
        base = tiny_base(root)
        adapter = root / f"adapter-{scale}"
        if not adapter.exists():
            lora_adapter(base, adapter, scale)
        out = root / f"eval-{len(_CACHE)}"
        kw = {"eval_set": SMALL_EVAL_SET, **kw}
        _CACHE[key] = evaluate(eval_config(out, adapter, base, **kw))
    return _CACHE[key]


def tiny_clip(tmp_path_factory) -> Path:
    from spf_lib.models.factory import save_tiny_clip

    out = shared_root(tmp_path_factory) / "tiny-clip"
    if not out.exists():
        save_tiny_clip(out)
    return out
