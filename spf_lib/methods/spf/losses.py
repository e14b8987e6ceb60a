"""SPF-Portrait stage-2 losses as pure tensor functions (docs/method.md gives each as an equation).

Shapes: B batch, H heads, N = h*w query positions of one layer, T text tokens, C query channels; ``gate`` is
(B, N) = 1 − SFCM at that layer's resolution. Everything the gate is computed from is detached: the SFCM decides
WHERE to align, it is not itself optimised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def minmax(x: torch.Tensor, dims: tuple[int, ...] = (-2, -1), eps: float = 1e-8) -> torch.Tensor:
    lo = x.amin(dim=dims, keepdim=True)
    hi = x.amax(dim=dims, keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(eps)


def noise_difference(eps_res: torch.Tensor, eps_ref: torch.Tensor) -> torch.Tensor:
    """N = channel-mean |ε_res − ε_ref|, (B, h, w), min-max normalised per sample."""
    return minmax((eps_res.detach().float() - eps_ref.detach().float()).abs().mean(dim=1))


def phrase_maps(layers: list[tuple[torch.Tensor, tuple[int, int]]], token_weights: torch.Tensor,
                out_hw: tuple[int, int]) -> torch.Tensor:
    """A_p: each phrase's attention map, mean over its tokens, heads and the given layers, at ``out_hw``.

    ``layers``: (probs (B, H, N, T), (h, w)) per captured layer; ``token_weights`` (B, P, T) with 1/len(p) on the
    phrase's token positions. Returns (B, P, out_h, out_w); zeros when no layer is given.
    """
    b, p, _ = token_weights.shape
    acc = torch.zeros(b, p, *out_hw, device=token_weights.device)
    for probs, hw in layers:
        m = torch.einsum("bhnt,bpt->bpn", probs.float(), token_weights) / probs.shape[1]
        acc += F.interpolate(m.view(b, p, *hw), size=out_hw, mode="bilinear", align_corners=False)
    return acc / max(1, len(layers))


def sfcm(noise_diff: torch.Tensor, phrase_maps: torch.Tensor, weights: torch.Tensor, blur: int = 0,
         quantile: float | None = None) -> torch.Tensor:
    """Semantic-Aware Fine Control Map M ∈ [0, 1], (B, h, w).

    M = norm(ReLU(N − Σ_p D_p · minmax(A_p))). ``phrase_maps`` (B, P, h, w) are the base phrases' attention maps,
    ``weights`` (B, P) their text-space distances D_p to the target (0 for padding phrases). Far-from-target
    phrases are subtracted fully; near-target ones barely, since the target may legitimately change them.
    norm = min-max (``quantile`` None), or divide by the per-sample ``quantile`` of the residual and clip at 1: with
    min-max one hot pixel sets the scale and the rest of the target region keeps a gate near 1 (measured: M ≈ 0.2
    on the glasses region), so the alignment losses still pull the target back there.
    """
    n = noise_diff.float()
    if phrase_maps.numel():
        sub = phrase_subtraction(minmax(phrase_maps.float()), weights, share=False)  # issue 9's map: the sum
    else:
        sub = torch.zeros_like(n)
    m = box_blur(F.relu(n - sub), blur)
    if quantile is None:
        return minmax(m).detach()
    scale = torch.quantile(m.flatten(1), quantile, dim=1).clamp_min(1e-8)
    return (m / scale[:, None, None]).clamp(max=1.0).detach()


def box_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, h, w) averaged over (2·radius + 1)² pixels, edges over the pixels that exist; ``x`` itself at radius 0."""
    if not radius:
        return x
    k = 2 * radius + 1
    return F.avg_pool2d(x[:, None].float(), k, stride=1, padding=radius, count_include_pad=False)[:, 0]


def gate_for(mask, hw: tuple[int, int], pool: str = "area") -> torch.Tensor:
    """(1 − M) at a layer's (h, w), flattened to (B, N). ``mask``: a ``ControlMap`` (which computes M at that
    resolution itself) or a latent-resolution M tensor, resized by ``pool``.

    ``pool="max"``: a low-resolution cell is freed as much as the most target-responsive latent pixel inside it;
    "area": the cell's mean.
    """
    if isinstance(mask, ControlMap):
        return (1.0 - mask.at(hw)).flatten(1)
    return (1.0 - resample(mask, hw, pool)).flatten(1)


def resample(m: torch.Tensor, hw: tuple[int, int], pool: str = "area") -> torch.Tensor:
    """(B, h, w) → (B, *hw) by cell max or cell mean (the identity at the same size)."""
    x = m[:, None].float()
    if tuple(x.shape[-2:]) == tuple(hw):
        return x[:, 0]
    if pool == "max":
        return F.adaptive_max_pool2d(x, hw)[:, 0]
    return F.adaptive_avg_pool2d(x, hw)[:, 0]


def robust_sfcm(noise_diff: torch.Tensor, phrase_maps: torch.Tensor, weights: torch.Tensor, hw: tuple[int, int],
                z_lo: float = 2.0, z_hi: float = 4.0, share: bool = True) -> torch.Tensor:
    """M at one layer's resolution ``hw``: how far each cell's response stands out of the map's own noise.

    N and each phrase map are area-averaged to ``hw`` (averaging shrinks pixel noise but keeps a region's level),
    min-max normalised, and R = ReLU(N − Σ_p D_p · A_p) (``share``: each A_p weighted by its share of the phrases'
    attention at that cell, ``phrase_subtraction``). The noise floor is N's median and its spread the scaled
    median absolute deviation, both per sample: z = (R − med N) / (1.4826 · MAD N), M = clip((z − z_lo) /
    (z_hi − z_lo), 0, 1). A response region — a minority of the cells — lies many MADs above the median and is
    released (M = 1); a pure-noise or uniformly weak map has few cells beyond z_lo, so alignment holds almost
    everywhere, at every resolution (min-max or quantile scaling release a fixed share of any map, and max-pooling
    then frees nearly every low-resolution cell).
    """
    n = minmax(resample(noise_diff, hw, "area"))
    if phrase_maps.numel():
        b, p = phrase_maps.shape[:2]
        a = minmax(resample(phrase_maps.flatten(0, 1), hw, "area")).view(b, p, *hw)
        r = F.relu(n - phrase_subtraction(a, weights, share))
    else:
        r = n
    flat = n.flatten(1)
    med = flat.median(dim=1).values
    mad = (flat - med[:, None]).abs().median(dim=1).values
    scale = (1.4826 * mad).clamp_min(1e-3)
    z = (r - med[:, None, None]) / scale[:, None, None]
    return ((z - z_lo) / (z_hi - z_lo)).clamp(0.0, 1.0).detach()


def phrase_subtraction(a: torch.Tensor, weights: torch.Tensor, share: bool = True) -> torch.Tensor:
    """Σ_p D_p · A_p over the base phrases' min-max normalised maps ``a`` (B, P, h, w), ``weights`` D (B, P).

    ``share``: each phrase counts at a cell only by its share of the phrases' attention there, A_p / Σ_q A_q (so
    Σ_p D_p · A_p² / Σ_q A_q). Min-max normalised maps are not a partition: the person, skin and hair phrases of a
    portrait all peak over the face, and summed they subtract several times the face's response, glasses included
    — in units of the whole map's range, where the release threshold is a few MADs of it (issue 15's eleventh round:
    summed, 56 % of the glasses' cells stayed held at 16×16 in the small world, nearly all on face-prepared crops;
    with the share 19 %). With one phrase, or phrases that do not overlap, the two are the same.
    """
    wa = weights.float()[:, :, None, None] * a
    if share:
        wa = wa * a / a.sum(dim=1, keepdim=True).clamp_min(1e-6)
    return wa.sum(dim=1)


class ControlMap:
    """The SFCM of one step, evaluated at whatever resolution a loss needs (cached per resolution).

    ``norm="robust"`` (default): ``robust_sfcm`` at each layer's own resolution. "quantile" / "minmax": the
    issue-9 map, computed once at latent resolution by ``sfcm`` and resized per layer with ``pool``. ``None``
    inputs (``use_sfcm=false``) give M ≡ 0: align everywhere.
    """

    def __init__(self, noise_diff: torch.Tensor | None, phrase_maps: torch.Tensor | None = None,
                 weights: torch.Tensor | None = None, *, norm: str = "robust", pool: str = "area",
                 quantile: float | None = 0.9, blur: int = 0, z: tuple[float, float] = (2.0, 4.0),
                 shape: tuple[int, int, int] | None = None, device=None, share: bool = True) -> None:
        self.device = noise_diff.device if noise_diff is not None else device
        self.noise, self.phrases, self.weights = noise_diff, phrase_maps, weights
        self.norm, self.pool, self.quantile, self.blur, self.z, self.share = norm, pool, quantile, blur, z, share
        self.shape = tuple(noise_diff.shape) if noise_diff is not None else tuple(shape)
        self._cache: dict[tuple[int, int], torch.Tensor] = {}
        self._blurred: torch.Tensor | None = None

    @classmethod
    def off(cls, b: int, h: int, w: int, device=None) -> ControlMap:
        return cls(None, shape=(b, h, w), device=device)

    @property
    def latent(self) -> torch.Tensor:
        return self.at(self.shape[-2:])

    def at(self, hw: tuple[int, int]) -> torch.Tensor:
        hw = (int(hw[0]), int(hw[1]))
        if hw not in self._cache:
            self._cache[hw] = self._compute(hw)
        return self._cache[hw]

    def _compute(self, hw: tuple[int, int]) -> torch.Tensor:
        if self.noise is None:
            return torch.zeros(self.shape[0], *hw, device=self.device)
        if self._blurred is None:  # once per step, not once per layer resolution
            self._blurred = box_blur(self.noise, self.blur)
        n = self._blurred
        if self.norm == "robust":
            return robust_sfcm(n, self.phrases, self.weights, hw, *self.z, share=self.share)
        if tuple(hw) != tuple(self.shape[-2:]):
            return resample(self.latent, hw, self.pool)
        return sfcm(n, self.phrases, self.weights, 0, self.quantile if self.norm == "quantile" else None)

    def mean(self) -> float:
        return float(self.latent.mean())


def text_consistent_loss(p_res: torch.Tensor, p_ref: torch.Tensor, idx_res: torch.Tensor, idx_ref: torch.Tensor,
                         valid: torch.Tensor, gate: torch.Tensor, target_res: torch.Tensor | None = None,
                         target_ref: torch.Tensor | None = None) -> torch.Tensor:
    """One layer: mean_{b,h,n} gate · Σ_{k valid} (A_res[.., j_k] / (1 − S_res) − A_ref[.., i_k] / (1 − S_ref))².

    ``idx_res`` / ``idx_ref`` (B, K): the positions j_k / i_k paired by TokenMapper; ``valid`` (B, K) masks padding
    of the pairing lists. Summing over tokens (not averaging) keeps the scale independent of how many tokens a
    prompt has. ``target_*`` (B, T), 1 at that path's target-phrase positions: S = the share of each pixel's
    attention those tokens take, and the maps are read as if they were not in the softmax (S = 0 when None: the raw
    maps; a base prompt holds no target token, so S_ref is 0 in training). Softmax attention is a budget: wherever
    the target tokens are attended, every base token's raw share drops by the same factor, and the raw comparison
    penalises exactly the response the target needs.
    """
    b, h, n, _ = p_res.shape
    k = idx_res.shape[1]
    a = torch.gather(p_res.float(), 3, idx_res[:, None, None, :].expand(b, h, n, k))
    a = _without(a, p_res, target_res)
    r = torch.gather(p_ref.float(), 3, idx_ref[:, None, None, :].expand(b, h, n, k))
    r = _without(r, p_ref, target_ref)
    sq = ((a - r.detach()) ** 2 * valid[:, None, None, :].float()).sum(dim=3)  # (B, H, N)
    return (sq * gate[:, None, :]).mean()


def _without(picked: torch.Tensor, probs: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """``picked`` (attention on some tokens) as if the ``target`` positions were not in the softmax."""
    if target is None:
        return picked
    share = (probs.float() * target[:, None, None, :].float()).sum(dim=3, keepdim=True)
    return picked / (1.0 - share).clamp_min(1e-3)


def fine_grained_loss(q_res: torch.Tensor, q_ref: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """One layer: mean_{b,n,c} gate · (Q_res − Q_ref)²."""
    return (((q_res.float() - q_ref.detach().float()) ** 2) * gate[:, :, None]).mean()


def output_alignment_loss(eps_res: torch.Tensor, eps_ref: torch.Tensor, mask) -> torch.Tensor:
    """L_out: mean_{b,c,h,w} (1 − M) · (ε_res − sg(ε_ref))², at latent resolution.

    L_fine's gate acts on 8×8 / 4×4 cross-attention features, whose receptive fields mix the target region with
    everything around it, so even a perfect M there cannot spare the target (measured, docs/method.md). The noise
    prediction has the SFCM's own resolution: here M frees exactly the latent pixels where the target responds.
    """
    if isinstance(mask, ControlMap):
        mask = mask.at(tuple(eps_res.shape[-2:]))
    gate = (1.0 - mask.float().to(eps_res.device))[:, None]
    return (((eps_res.float() - eps_ref.detach().float()) ** 2) * gate).mean()


def predict_x0(noisy: torch.Tensor, model_out: torch.Tensor, t: torch.Tensor, scheduler) -> torch.Tensor:
    """One-step x̂0 from z_t and the model output (ε or v prediction)."""
    ac = scheduler.alphas_cumprod.to(noisy.device, torch.float32)[t].view(-1, 1, 1, 1)
    z, out = noisy.float(), model_out.float()
    if scheduler.config.prediction_type == "v_prediction":
        return ac.sqrt() * z - (1 - ac).sqrt() * out
    return (z - (1 - ac).sqrt() * out) / ac.sqrt()


def enhanced_loss(e_res: torch.Tensor, e_ref: torch.Tensor, direction: torch.Tensor, valid: torch.Tensor,
                  eps: float = 1e-6) -> torch.Tensor:
    """mean over valid samples of 1 − cos(E(x̂0_res) − E(x̂0_ref), direction).

    ``direction`` is the representation bias to reproduce: E(x0) − E(x̂0_ref) (image) or the CLIP text shift
    T(base + target) − T(base). Only the response's shift is supervised, never its absolute embedding.
    """
    if not bool(valid.any()):
        return e_res.sum() * 0.0
    shift = e_res.float() - e_ref.detach().float()
    cos = F.cosine_similarity(shift, direction.detach().float(), dim=-1, eps=eps)
    return ((1.0 - cos) * valid.float()).sum() / valid.float().sum()
