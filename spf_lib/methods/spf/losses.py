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
        sub = (weights.float()[:, :, None, None] * minmax(phrase_maps.float())).sum(dim=1)
    else:
        sub = torch.zeros_like(n)
    m = F.relu(n - sub)
    if blur:
        k = 2 * blur + 1
        m = F.avg_pool2d(m[:, None], k, stride=1, padding=blur, count_include_pad=False)[:, 0]
    if quantile is None:
        return minmax(m).detach()
    scale = torch.quantile(m.flatten(1), quantile, dim=1).clamp_min(1e-8)
    return (m / scale[:, None, None]).clamp(max=1.0).detach()


def gate_for(mask: torch.Tensor, hw: tuple[int, int], pool: str = "area") -> torch.Tensor:
    """(1 − M) resized to a layer's (h, w), flattened to (B, N).

    ``pool="max"``: a low-resolution cell is freed as much as the most target-responsive latent pixel inside it
    (area averaging dilutes a small target region away at 8×8 / 4×4 layers); "area": the cell's mean.
    """
    m = mask[:, None].float()
    if pool == "max" and tuple(m.shape[-2:]) != tuple(hw):
        m = F.adaptive_max_pool2d(m, hw)
    else:
        m = F.interpolate(m, size=hw, mode="area")
    return (1.0 - m[:, 0]).flatten(1)


def text_consistent_loss(p_res: torch.Tensor, p_ref: torch.Tensor, idx_res: torch.Tensor, idx_ref: torch.Tensor,
                         valid: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """One layer: mean_{b,h,n} gate · Σ_{k valid} (A_res[.., idx_res_k] − A_ref[.., idx_ref_k])².

    ``idx_*``: (B, K) token positions paired by TokenMapper; ``valid`` (B, K) masks padding of the pairing lists.
    Summing over tokens (not averaging) keeps the scale independent of how many tokens a prompt has.
    """
    b, h, n, _ = p_res.shape
    k = idx_res.shape[1]
    a = torch.gather(p_res.float(), 3, idx_res[:, None, None, :].expand(b, h, n, k))
    r = torch.gather(p_ref.float(), 3, idx_ref[:, None, None, :].expand(b, h, n, k))
    sq = ((a - r.detach()) ** 2 * valid[:, None, None, :].float()).sum(dim=3)  # (B, H, N)
    return (sq * gate[:, None, :]).mean()


def fine_grained_loss(q_res: torch.Tensor, q_ref: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """One layer: mean_{b,n,c} gate · (Q_res − Q_ref)²."""
    return (((q_res.float() - q_ref.detach().float()) ** 2) * gate[:, :, None]).mean()


def output_alignment_loss(eps_res: torch.Tensor, eps_ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_out: mean_{b,c,h,w} (1 − M) · (ε_res − sg(ε_ref))², at latent resolution.

    L_fine's gate acts on 8×8 / 4×4 cross-attention features, whose receptive fields mix the target region with
    everything around it, so even a perfect M there cannot spare the target (measured, docs/method.md). The noise
    prediction has the SFCM's own resolution: here M frees exactly the latent pixels where the target responds.
    """
    gate = (1.0 - mask.float())[:, None]
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
