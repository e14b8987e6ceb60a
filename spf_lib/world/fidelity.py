"""Fidelity in the world: generate from the original and a tuned model on the same prompts and seeds, then read
attributes back with the probes and score with the world CLIP.

Metrics (all pairwise original-vs-tuned on base prompts, as SPF-Portrait's preservation metrics are):
- ``attr_drift``: fraction of (image, base attribute) pairs whose probe reading changed — the pollution score;
- ``red_bg_delta`` / ``smile_delta``: rise in the spurious attributes' rate where the prompt leaves them open;
- ``target_leak``: rise in the glasses rate on those base prompts — the target showing up where nobody asked for it
  (kept apart from ``attr_drift`` so that score stays the drift of what the base world has);
- ``clip_i``: CLIP image-image cosine; ``pixel_mae``: mean absolute RGB difference in [0, 1];
and on target prompts (base prompt + the target phrase), for the tuned model:
- ``target_rate``: fraction the glasses probe reads as wearing glasses; ``clip_t``: CLIP text-image cosine;
- ``prompt_fidelity``: fraction of the attributes the prompt names that the probes read back correctly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spf_lib.world.attributes import BASE_ATTRIBUTES, CHOICES, TARGET_PHRASE


@dataclass(frozen=True)
class EvalPlan:
    prompts: list[str]
    named: list[dict[str, str]]  # attributes each prompt names
    seeds: list[int]
    steps: int = 20
    guidance: float = 4.0
    extra: dict = field(default_factory=dict)

    def pairs(self) -> tuple[list[str], list[int], list[dict[str, str]]]:
        """Prompt × seed, flattened (the same order for every model)."""
        p = [pr for pr in self.prompts for _ in self.seeds]
        s = [sd for _ in self.prompts for sd in self.seeds]
        n = [nm for nm in self.named for _ in self.seeds]
        return p, s, n

    def target_prompts(self) -> list[str]:
        return [f"{p}, {TARGET_PHRASE}" for p in self.prompts]


def make_plan(n_prompts: int = 12, n_seeds: int = 4, seed: int = 123, steps: int = 20,
              guidance: float = 4.0) -> EvalPlan:
    """Half the prompts name only what the fine-tuning captions name; half also name background and expression."""
    from spf_lib.world.attributes import sample_attributes
    from spf_lib.world.finetune import CAPTION_ATTRIBUTES, prompt_phrases

    rng = np.random.default_rng(seed)
    prompts, named = [], []
    for i in range(n_prompts):
        attrs = sample_attributes(rng)
        names = CAPTION_ATTRIBUTES if i % 2 == 0 else BASE_ATTRIBUTES
        prompts.append(", ".join(prompt_phrases(attrs, names)))
        named.append({k: getattr(attrs, k) for k in names})
    return EvalPlan(prompts, named, list(range(1000, 1000 + n_seeds)), steps, guidance)


def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int = 32):
    """float NCHW in [-1, 1]; every image's initial noise depends only on its seed."""
    import torch

    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i:i + batch]]
        with torch.no_grad():
            im = pipe(prompts[i:i + batch], generator=gens, num_inference_steps=steps, guidance_scale=guidance,
                      output_type="np").images
        out.append(torch.from_numpy(np.asarray(im)).permute(0, 3, 1, 2).float() * 2 - 1)
    return torch.cat(out)


@dataclass
class Generated:
    base: object  # images on base prompts
    target: object  # images on target prompts


def generate_all(pipe, plan: EvalPlan) -> Generated:
    p, s, _ = plan.pairs()
    t = [f"{x}, {TARGET_PHRASE}" for x in p]
    return Generated(generate(pipe, p, s, plan.steps, plan.guidance), generate(pipe, t, s, plan.steps, plan.guidance))


def score(plan: EvalPlan, original: Generated, tuned: Generated, probes, clip,
          spurious: dict[str, str] | None = None) -> dict[str, float]:
    """All metrics of one tuned model against the original (see module docstring). ``spurious``: the fine-tuning
    set's spurious attributes (default the README set's red background + smiling) for ``spurious_delta``."""
    _, _, named = plan.pairs()
    po, pt = probes.predict(original.base), probes.predict(tuned.base)
    drift = np.mean([np.mean(po[a] != pt[a]) for a in BASE_ATTRIBUTES])
    open_bg = np.array(["background" not in nm for nm in named])
    open_ex = np.array(["expression" not in nm for nm in named])
    red, smile = CHOICES["background"].index("red"), CHOICES["expression"].index("smiling")

    def rate_delta(key: str, cls: int, mask: np.ndarray) -> float:
        if not mask.any():
            return float("nan")
        return float(np.mean(pt[key][mask] == cls) - np.mean(po[key][mask] == cls))

    from spf_lib.world.finetune import SPURIOUS

    spur = [rate_delta(k, CHOICES[k].index(v), np.array([k not in nm for nm in named]))
            for k, v in (spurious or SPURIOUS).items()]
    spur = [x for x in spur if not np.isnan(x)]
    ptt = probes.predict(tuned.target)
    fid = named_fidelity(ptt, named)
    target_prompts = [f"{p}, {TARGET_PHRASE}" for p in plan.pairs()[0]]
    return {
        "attr_drift": float(drift),
        "red_bg_delta": rate_delta("background", red, open_bg),
        "smile_delta": rate_delta("expression", smile, open_ex),
        "spurious_delta": float(np.mean(spur)) if spur else float("nan"),
        "target_leak": float(np.mean(pt["glasses"] == 1) - np.mean(po["glasses"] == 1)),
        "clip_i": float(np.mean(clip.clip_i(original.base, tuned.base))),
        "pixel_mae": float((original.base - tuned.base).abs().mean() / 2),
        "target_rate": float(np.mean(ptt["glasses"] == 1)),
        "clip_t": float(np.mean(clip.clip_t(tuned.target, target_prompts))),
        "prompt_fidelity": fid,
        "base_fidelity": named_fidelity(pt, named),
    }


def named_fidelity(pred: dict[str, np.ndarray], named: list[dict[str, str]]) -> float:
    """Fraction of the attributes each prompt names that the probes read back from its image."""
    return float(np.mean([np.mean([pred[k][i] == CHOICES[k].index(v) for k, v in nm.items()])
                          for i, nm in enumerate(named)]))


def sfcm_overlap(trainer, ft_seed: int, spurious: dict[str, str], settings: dict[str, dict], n: int = 8,
                 timesteps: tuple[int, ...] = (200, 400, 600), min_cover: float = 0.1) -> dict:
    """How well the SFCM of a trained SPF model finds the glasses, per layer resolution.

    On the first ``n`` fine-tuning images (all wear glasses; their layouts are re-drawn from the set's seed), at
    fixed noise and the given timesteps, the dual path runs once and each SFCM ``settings`` entry (spf option
    overrides) turns it into M. Ground truth at a resolution: cells whose rendered-glasses coverage is ≥
    ``min_cover``; released: M ≥ 0.5. Returns {setting: {resolution: {iou, precision, recall, m_in, m_out}}}, m_in /
    m_out = mean M on / off the glasses cells.
    """
    import torch
    import torch.nn.functional as F

    from spf_lib.data.synth import synth_records
    from spf_lib.world.render import glasses_mask

    m, ctx, src = trainer.method, trainer.ctx, trainer.source
    layouts = {f"ft{i:04d}": lay for i, _a, lay in synth_records(len(src.examples), ft_seed, target_fraction=1.0,
                                                                   fixed_for_target=spurious)}
    idx = list(range(min(n, len(src.examples))))
    exs = [src.examples[i] for i in idx]
    batch = {"index": idx, "pixel_values": torch.stack([src._pixels(i) for i in idx]),
             "caption": [e.response_text for e in exs], "base_text": [e.base_text for e in exs],
             "base_phrases": [e.base_phrases for e in exs], "target_phrase": [e.target_phrase for e in exs]}
    size = batch["pixel_values"].shape[-1]
    masks = torch.from_numpy(np.stack([glasses_mask(layouts[Path(e.crop_path).stem], size) for e in exs]))
    acc: dict[str, dict[int, dict[str, float]]] = {}
    saved = m.o
    with torch.no_grad():
        lat = ctx.encode_images(batch["pixel_values"].to(ctx.device))
        for t_val in timesteps:
            gen = torch.Generator().manual_seed(4242 + t_val)
            noise = torch.randn(lat.shape, generator=gen).to(lat.device, lat.dtype)
            t = torch.full((lat.shape[0],), t_val, dtype=torch.long, device=lat.device)
            noisy = ctx.noise_scheduler.add_noise(lat, noise, t)
            eps_ref, eps_res = m.dual_forward(ctx, noisy, t, batch["base_text"], batch["caption"])
            sizes = {tuple(eps_res.shape[-2:])} | {tuple(c.hw) for c in m.store.maps.get("ref", {}).values()}
            for name, over in settings.items():
                try:
                    m.o = saved.model_copy(update=over)
                    cm = m.control_map(ctx, batch, eps_res, eps_ref)
                finally:
                    m.o = saved
                for hw in sizes:
                    mm = cm.at(hw).float().cpu()
                    gt = F.adaptive_avg_pool2d(masks[:, None], hw)[:, 0] >= min_cover
                    pred = mm >= 0.5
                    d = acc.setdefault(name, {}).setdefault(hw[0], {"tp": 0.0, "fp": 0.0, "fn": 0.0, "m_in": 0.0,
                                                                     "n_in": 0.0, "m_out": 0.0, "n_out": 0.0})
                    d["tp"] += float((pred & gt).sum())
                    d["fp"] += float((pred & ~gt).sum())
                    d["fn"] += float((~pred & gt).sum())
                    d["m_in"] += float(mm[gt].sum())
                    d["n_in"] += float(gt.sum())
                    d["m_out"] += float(mm[~gt].sum())
                    d["n_out"] += float((~gt).sum())
    out: dict = {}
    for name, per in acc.items():
        for res, d in per.items():
            out.setdefault(name, {})[str(res)] = {
                "iou": d["tp"] / max(d["tp"] + d["fp"] + d["fn"], 1.0), "precision": d["tp"] / max(d["tp"] + d["fp"], 1.0),
                "recall": d["tp"] / max(d["tp"] + d["fn"], 1.0), "m_in": d["m_in"] / max(d["n_in"], 1.0),
                "m_out": d["m_out"] / max(d["n_out"], 1.0)}
    return out
