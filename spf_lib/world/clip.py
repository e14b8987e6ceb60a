"""A small CLIP (transformers CLIPModel) trained contrastively on the world, so CLIP-T / CLIP-I mean something here.

No CLIP weights can be downloaded on this machine; a randomly initialised CLIP scores noise. This one has seen
(portrait, caption-variant) pairs, including the target phrase, so its text-image similarity rises when an image shows
what the prompt says. Saved with ``save_pretrained`` (model + tokenizer + image processor): any code that loads a
CLIP folder (the eval stage, SPF's image embedder) can use it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from spf_lib.errors import SpfError

log = logging.getLogger(__name__)
MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's normalisation, as the saved image processor applies it
STD = (0.26862954, 0.26130258, 0.27577711)


def to_clip_pixels(x):
    """float NCHW in [-1, 1] (the diffusion convention) → CLIP-normalised pixels."""
    import torch

    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


class WorldClip:
    """Embeddings and similarities on tensors (no PIL round trip in the benchmark's inner loop)."""

    def __init__(self, model, tokenizer, image_size: int) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = image_size

    @classmethod
    def load(cls, folder: str | Path) -> WorldClip:
        from transformers import CLIPModel, CLIPTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise SpfError(f"{folder}: no config.json; not a CLIP model folder (run python -m spf_lib.world.clip)")
        model = CLIPModel.from_pretrained(folder)
        return cls(model, CLIPTokenizer.from_pretrained(folder), model.config.vision_config.image_size)

    def image_embeds(self, x):
        import torch
        import torch.nn.functional as F

        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        with torch.no_grad():
            e = self.model.get_image_features(pixel_values=to_clip_pixels(x))
        e = getattr(e, "pooler_output", e)
        return F.normalize(e, dim=-1)

    def text_embeds(self, prompts: list[str]):
        import torch
        import torch.nn.functional as F

        ids = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            e = self.model.get_text_features(**ids)
        e = getattr(e, "pooler_output", e)
        return F.normalize(e, dim=-1)

    def clip_t(self, x, prompts: list[str]):
        """Cosine(image_i, prompt_i) per pair."""
        return (self.image_embeds(x) * self.text_embeds(prompts)).sum(-1).numpy()

    def clip_i(self, xa, xb):
        """Cosine(image_a_i, image_b_i) per pair."""
        return (self.image_embeds(xa) * self.image_embeds(xb)).sum(-1).numpy()


def train_clip(output: str | Path, *, n_images: int = 3000, seed: int = 100, steps: int = 1000, batch: int = 64,
               lr: float = 1e-3, threads: int = 2, keep_phrase: float = 0.7) -> dict:
    """Contrastive training on (render, caption variant); returns retrieval accuracy on held-out images."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from spf_lib.io import atomic_dir
    from spf_lib.models.factory import TinyCLIPConfig, build_tiny_clip
    from spf_lib.world.dataset import caption_variant, render_arrays, to_tensor
    from spf_lib.world.probes import _degrade

    torch.set_num_threads(threads)
    held_out = 256
    images, attrs = render_arrays(n_images + 300, seed, 64, target_fraction=0.5)  # same renders as the probes
    x = to_tensor(images)
    model, tok, proc = build_tiny_clip(TinyCLIPConfig(hidden=64, layers=2, heads=4, image_size=64, patch_size=8,
                                                      projection_dim=64), seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(range(steps), desc="clip")
    for _ in bar:
        idx = rng.choice(n_images, batch, replace=False)
        texts = [caption_variant(attrs[i], rng, keep_phrase) for i in idx]
        ids = tok(texts, padding=True, return_tensors="pt")
        out = model(**ids, pixel_values=to_clip_pixels(_degrade(x[torch.as_tensor(idx)], gen)), return_loss=True)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{float(out.loss):.3f}")
    model.eval()
    clip = WorldClip(model, tok, 64)
    xe = x[n_images:n_images + held_out]
    ae = attrs[n_images:n_images + held_out]
    sim = clip.image_embeds(xe) @ clip.text_embeds([a.caption() for a in ae]).T
    top1 = float((sim.argmax(-1) == torch.arange(len(ae))).float().mean())
    # Target direction: with the same base caption, does adding the target phrase raise the score exactly when the
    # image shows glasses?
    from spf_lib.world.attributes import TARGET_PHRASE

    base_caps = [", ".join(p for p in a.phrases() if p != TARGET_PHRASE) for a in ae]
    t_with = clip.clip_t(xe, [f"{c}, {TARGET_PHRASE}" for c in base_caps])
    t_without = clip.clip_t(xe, base_caps)
    g = np.array([a.glasses for a in ae])
    metrics = {"caption_top1_of_256": top1, "target_phrase_accuracy": float(np.mean((t_with > t_without) == g)),
               "clip_t_target_glasses": float(t_with[g].mean()), "clip_t_target_no_glasses": float(t_with[~g].mean())}
    with atomic_dir(output) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        proc.save_pretrained(tmp)
        import json

        (tmp / "world_clip.json").write_text(json.dumps({"held_out": metrics, "steps": steps, "seed": seed,
                                                        "n_images": n_images}, indent=2) + "\n")
    log.info("world CLIP: %s", metrics)
    return metrics


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="train the world's small CLIP")
    p.add_argument("--output", required=True)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(train_clip(a.output, steps=a.steps, threads=a.threads))
