"""Capture cross-attention probabilities and query features from chosen UNet attention layers.

Only the layers matching the patterns get the capturing processor; every other layer keeps its fused SDPA processor,
and a capturing layer itself falls back to SDPA whenever capture is off (validation, LoRA stage 1). A captured layer
computes softmax(QK^T/sqrt(d)) explicitly (that is the only way to see the probabilities); with 77 text keys that
costs little next to self-attention.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Captured:
    probs: Any | None   # (B, heads, N, T) attention probabilities, N = h*w query positions
    query: Any | None   # (B, N, C) query features (to_q output, LoRA included when enabled)
    hw: tuple[int, int]


@dataclass
class AttentionStore:
    """Where capturing processors write. ``mode`` names the path being run ('ref' / 'res'); None = capture off."""

    latent_hw: tuple[int, int] = (0, 0)
    mode: str | None = None
    keep_probs: bool = True
    keep_query: bool = True
    maps: dict[str, dict[str, Captured]] = field(default_factory=dict)

    def clear(self) -> None:
        self.maps = {}
        self.mode = None

    def record(self, name: str, probs, query, n: int) -> None:
        self.maps.setdefault(self.mode, {})[name] = Captured(
            probs if self.keep_probs else None, query if self.keep_query else None, self._layer_hw(n))

    def _layer_hw(self, n: int) -> tuple[int, int]:
        h, w = self.latent_hw
        if h * w == 0:
            s = int(math.isqrt(n))
            return s, n // max(s, 1)
        f = round(math.sqrt(h * w / n))
        return max(1, h // f), max(1, w // f)


class CaptureProcessor:
    """AttnProcessor2_0 when ``store.mode`` is None, explicit attention + recording otherwise."""

    def __init__(self, name: str, store: AttentionStore, fallback: Any) -> None:
        self.name = name
        self.store = store
        self.fallback = fallback

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kw):
        if self.store.mode is None or encoder_hidden_states is None:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kw)
        import torch

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, n, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1], batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        q = attn.head_to_batch_dim(query)
        probs = attn.get_attention_scores(q, attn.head_to_batch_dim(key), attention_mask)  # (B*h, N, T)
        out = attn.batch_to_head_dim(torch.bmm(probs, attn.head_to_batch_dim(value)))
        self.store.record(self.name, probs.view(batch, attn.heads, n, -1), query, n)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_capture(unet, patterns: list[str], store: AttentionStore | None = None) -> AttentionStore:
    """Put CaptureProcessor on cross-attention layers whose module name matches any fnmatch pattern."""
    from spf_lib.errors import SpfError

    store = store or AttentionStore()
    procs = dict(unet.attn_processors)
    chosen = []
    for key, proc in procs.items():
        module = key.removesuffix(".processor")
        if module.endswith("attn2") and any(fnmatch.fnmatchcase(module, p) for p in patterns):
            procs[key] = CaptureProcessor(module, store, proc)
            chosen.append(module)
    if not chosen:
        names = [k.removesuffix(".processor") for k in procs if k.endswith("attn2.processor")]
        raise SpfError(f"spf.capture_layers={patterns!r}: matches no cross-attention layer; e.g. {names[:2]}")
    unet.set_attn_processor(procs)
    return store


def remove_capture(unet) -> None:
    procs = {k: (p.fallback if isinstance(p, CaptureProcessor) else p) for k, p in unet.attn_processors.items()}
    unet.set_attn_processor(procs)


def captured_layers(unet) -> list[str]:
    return [p.name for p in unet.attn_processors.values() if isinstance(p, CaptureProcessor)]
