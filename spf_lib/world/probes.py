"""Attribute probes: one small CNN with a head per attribute, trained on rendered (labelled) portraits.

WHY: pollution in this world is measured attribute by attribute. A probe reads hair, clothing, background,
expression, skin, person and glasses back from a generated image, so "the background drifted from blue to red after
fine-tuning" becomes a number. Training images are degraded (blur, noise, VAE-like softening) so the probes also read
generated images, which are blurrier than renders.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spf_lib.errors import SpfError
from spf_lib.world.attributes import BASE_ATTRIBUTES, CHOICES, Attributes

log = logging.getLogger(__name__)
HEADS: dict[str, int] = {**{k: len(v) for k, v in CHOICES.items()}, "glasses": 2}
WEIGHTS = "probes.safetensors"
CONFIG = "probes.json"


def build_probe_net(width: int = 32):
    import torch
    from torch import nn

    class ProbeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = width
            self.body = nn.Sequential(
                nn.Conv2d(3, w, 3, 2, 1), nn.GELU(),
                nn.Conv2d(w, w, 3, 1, 1), nn.GELU(),
                nn.Conv2d(w, 2 * w, 3, 2, 1), nn.GELU(),
                nn.Conv2d(2 * w, 2 * w, 3, 1, 1), nn.GELU(),
                nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.GELU(),
                nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            )
            self.heads = nn.ModuleDict({k: nn.Linear(16 * w, n) for k, n in HEADS.items()})

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            h = self.body(x)
            return {k: head(h) for k, head in self.heads.items()}

    return ProbeNet()


def _degrade(x, gen):
    """Random blur and noise: generated images are softer and noisier than renders."""
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    blurred = F.avg_pool2d(x, 3, 1, 1)
    mix = torch.rand(b, 1, 1, 1, generator=gen)
    x = x * (1 - mix) + blurred * mix
    return (x + 0.05 * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)).clamp(-1, 1)


@dataclass
class Probes:
    net: object
    resolution: int

    @classmethod
    def load(cls, folder: str | Path) -> Probes:
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg_path = folder / CONFIG
        if not cfg_path.is_file():
            raise SpfError(f"{cfg_path}: missing; not a probes folder (run python -m spf_lib.world.probes)")
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("heads") != HEADS:
            raise SpfError(f"{cfg_path}: heads {cfg.get('heads')} do not match this code's attributes {HEADS}")
        net = build_probe_net(cfg["width"])
        net.load_state_dict(load_file(folder / WEIGHTS))
        net.eval()
        return cls(net, cfg["resolution"])

    def logits(self, x) -> dict:
        """x: float NCHW in [-1, 1] at any size (resized to the probe resolution)."""
        import torch
        import torch.nn.functional as F

        if x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True,
                              align_corners=False)
        with torch.no_grad():
            return self.net(x)

    def predict(self, x) -> dict[str, np.ndarray]:
        """Class index per attribute (glasses: 0/1)."""
        return {k: v.argmax(-1).numpy() for k, v in self.logits(x).items()}

    def prob(self, x, attribute: str, value: str | bool) -> np.ndarray:
        """P(attribute == value) per image."""
        idx = int(value) if attribute == "glasses" else CHOICES[attribute].index(value)
        return self.logits(x)[attribute].softmax(-1)[:, idx].numpy()


def labels_tensor(attrs: list[Attributes]):
    import torch

    ids = [a.class_ids() for a in attrs]
    return {k: torch.tensor([d[k] for d in ids]) for k in HEADS}


def train_probes(output: str | Path, *, n_images: int = 3000, seed: int = 100, steps: int = 800, batch: int = 64,
                 resolution: int = 64, width: int = 32, threads: int = 2, held_out: int = 300) -> dict:
    """Train and save the probes; returns held-out accuracy per attribute (also written to probes.json)."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file
    from tqdm import tqdm

    from spf_lib.io import atomic_dir
    from spf_lib.world.dataset import render_arrays, to_tensor

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    images, attrs = render_arrays(n_images + held_out, seed, resolution, target_fraction=0.5)
    x = to_tensor(images)
    y = labels_tensor(attrs)
    xtr, xte = x[:n_images], x[n_images:]
    net = build_probe_net(width)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc="probes"):
        idx = torch.randint(0, n_images, (batch,), generator=gen)
        out = net(_degrade(xtr[idx], gen))
        loss = sum(F.cross_entropy(out[k], y[k][idx]) for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        out = net(_degrade(xte, gen))
    acc = {k: float((out[k].argmax(-1) == y[k][n_images:]).float().mean()) for k in HEADS}
    with atomic_dir(output) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps({"heads": HEADS, "width": width, "resolution": resolution,
                                              "choices": CHOICES, "held_out_accuracy": acc,
                                              "train": {"n_images": n_images, "seed": seed, "steps": steps}},
                                             indent=2, sort_keys=True) + "\n")
    log.info("probe held-out accuracy: %s", acc)
    return acc


BASE = BASE_ATTRIBUTES

if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="train the world's attribute probes")
    p.add_argument("--output", required=True)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(train_probes(a.output, steps=a.steps, threads=a.threads))
