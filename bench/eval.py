"""`spf bench eval`: evaluation throughput (images/s) for generation and for each metric family.

Runs one real evaluation (tiny model by default, or ``-o base=REF -o adapter=DIR`` for SD 1.5 on a GPU) and reads
the per-family timings that ``evaluate`` records, so every number comes from the same run on the same images.
Options: base, adapter, clip (CLIP ref; default: a tiny random CLIP, timed only — its scores are not reported),
device, steps, resolution, batch, seeds, prompts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import opt


def run(options: dict[str, str]) -> dict:
    from spf_lib.eval.config import EvalConfig
    from spf_lib.eval.evalset import DEFAULT_BASE_PROMPTS, DEFAULT_TARGET
    from spf_lib.eval.run import evaluate

    device = opt(options, "device", "cpu")
    steps = opt(options, "steps", 4)
    batch = opt(options, "batch", 4)
    n_seeds = opt(options, "seeds", 2)
    n_prompts = opt(options, "prompts", 2)
    with tempfile.TemporaryDirectory(prefix="spf-bench-eval-") as tmp:
        root = Path(tmp)
        base = options.get("base") or str(_tiny_base(root))
        adapter = options.get("adapter") or str(_tiny_adapter(Path(base), root))
        clip = options.get("clip") or str(_tiny_clip(root))
        tiny = "base" not in options
        resolution = opt(options, "resolution", 64 if tiny else 512)
        eval_set = {"name": "bench", "version": "1", "target": DEFAULT_TARGET, "seeds": list(range(n_seeds)),
                    "base_prompts": list(DEFAULT_BASE_PROMPTS[:n_prompts])}
        cfg = EvalConfig(base_model=base, adapter_dir=adapter, output_dir=root / "out", eval_set=eval_set,
                         clip_model=clip, num_inference_steps=steps, resolution=resolution, batch_size=batch,
                         device=device, log_mlflow=False, progress=False,
                         allow_untrained_backbones="clip" not in options)  # tiny CLIP: timing only
        res = evaluate(cfg)
    rows = [[family, t["images"], round(t["seconds"], 3), round(t["images_per_s"], 2)]
            for family, t in res.timings.items()]
    faces = _identity_on_real_faces(opt(options, "face_repeat", 5))
    rows.append(["identity (real 512-px faces)", faces["images"], round(faces["seconds"], 3),
                 round(faces["images_per_s"], 2)])
    gen = res.timings["generation"]
    return {
        "title": f"evaluation throughput ({'tiny' if tiny else base}, {resolution}px, {steps} steps, "
                 f"batch {batch}, {device})",
        "columns": ["stage", "images", "seconds", "images/s"],
        "rows": rows,
        "figures": {"timings": res.timings, "identity_real_faces": faces,
                    "generation_images_per_s": gen["images_per_s"], "resolution": resolution, "steps": steps, "batch": batch, "device": device,
                    "pollution": res.metrics.get("pollution")},
        "notes": [
            ("generation counts original + tuned images (one pipeline, adapter off then on), classifier-free "
             "guidance doubles the UNet batch"),
            ("identity = dlib HOG detection + 5-point alignment + 128-d descriptor per image; with no face found "
             "(tiny random models draw none) only detection is timed, hence the real-face row"),
            "tiny CLIP is random: its timings are real, its scores are not reported as metrics",
        ],
    }


def _identity_on_real_faces(repeat: int) -> dict:
    """dlib detect + align + descriptor on the shipped public-domain portraits (tiny models draw no faces)."""
    import os
    import time

    import matplotlib
    from PIL import Image
    from skimage import data

    from spf_lib.eval.faces import FaceAnalyzer

    fa = FaceAnalyzer("dlib")
    imgs = [Image.fromarray(data.astronaut()),
            Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")).convert("RGB")]
    fa.analyze(imgs[0])  # warm-up
    t0 = time.perf_counter()
    found = sum(fa.analyze(im).embedding is not None for _ in range(repeat) for im in imgs)
    sec = time.perf_counter() - t0
    n = repeat * len(imgs)
    return {"images": n, "seconds": sec, "images_per_s": n / sec, "faces_found": found}


def _tiny_base(root: Path) -> Path:
    from spf_lib.models.factory import save_tiny_pipeline

    return save_tiny_pipeline(root / "tiny-base")


def _tiny_clip(root: Path) -> Path:
    from spf_lib.models.factory import save_tiny_clip

    return save_tiny_clip(root / "tiny-clip")


def _tiny_adapter(base: Path, root: Path) -> Path:
    """A rank-4 LoRA with small random weights on the tiny UNet's attention projections."""
    import json

    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", use_safetensors=True)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))
    out = root / "adapter"
    out.mkdir()
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.mul_(0).add_(0.1 * torch.randn_like(p))
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))
    (out / "adapter_info.json").write_text(json.dumps({"method": "lora", "format": "lora"}))
    return out
