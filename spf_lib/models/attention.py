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
    # Explicit attention stays on for a whole training step even after ``mode`` is reset: gradient checkpointing
    # re-runs the forward during backward, and the recomputation must take the same code path as the forward.
    explicit: bool = False
    keep_probs: bool = True
    keep_query: bool = True
    maps: dict[str, dict[str, Captured]] = field(default_factory=dict)

    def clear(self) -> None:
        self.maps = {}
        self.mode = None

    def drop(self, mode: str) -> None:
        """Forget one path's maps: their tensors are freed unless autograd still holds them."""
        self.maps.pop(mode, None)

    def narrow(self, n: int) -> None:
        """Keep the first ``n`` samples of every captured map: the rest of the batch took another loss's path
        (``spf.preserve_schedule='instead'``) and must not enter the SFCM or the alignment losses."""
        for maps in self.maps.values():
            for name, c in maps.items():
                maps[name] = Captured(None if c.probs is None else c.probs[:n],
                                      None if c.query is None else c.query[:n], c.hw)

    def __setattr__(self, key, value):
        if key == "mode" and value is not None:
            object.__setattr__(self, "explicit", True)
        object.__setattr__(self, key, value)

    def record(self, name: str, probs, query, n: int) -> None:
        self.maps.setdefault(self.mode, {})[name] = Captured(
            probs if self.keep_probs else None, query if self.keep_query else None, self._layer_hw(n))

    def _layer_hw(self, n: int) -> tuple[int, int]:
        h, w = self.latent_hw
        if h * w == 0:
            s = math.isqrt(n)
            return s, n // max(s, 1)
        f = round(math.sqrt(h * w / n))
        return max(1, h // f), max(1, w // f)


class CaptureProcessor:
    """The layer's original (SDPA) processor until capture is first used; from then on explicit attention (so a
    checkpointed recomputation matches its forward), recording into the store whenever ``store.mode`` names a path."""

    def __init__(self, name: str, store: AttentionStore, fallback: Any) -> None:
        self.name = name
        self.store = store
        self.fallback = fallback

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kw):
        if not (self.store.explicit or self.store.mode) or encoder_hidden_states is None:
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
        if self.store.mode is not None:
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
    kinds = (CaptureProcessor, JointCaptureProcessor)
    procs = {k: (p.fallback if isinstance(p, kinds) else p) for k, p in unet.attn_processors.items()}
    unet.set_attn_processor(procs)


def captured_layers(unet) -> list[str]:
    kinds = (CaptureProcessor, JointCaptureProcessor)
    return [p.name for p in unet.attn_processors.values() if isinstance(p, kinds)]


class JointCaptureProcessor:
    """SD3's joint attention with the image→text block exposed: the attention output through SDPA (fused, as the
    layer's own processor), and beside it only what SFCM and L_text read — image queries × the first ``text_len``
    text keys (the CLIP positions), softmax over those keys — a cross-attention map over the 77 CLIP tokens, in the
    shape UNet capture records — and the image queries (to_q output) for L_fine. Falls back to the layer's SDPA
    processor like ``CaptureProcessor``.

    That map is exactly the image→CLIP block of the full joint softmax renormalised to sum to one per query (the full
    row's normaliser cancels), so neither the (N + T)² joint probabilities, nor the T5 keys, nor the text queries are
    materialised (tests/test_sd3.py checks the equality). Renormalising is our choice (docs/method.md): raw joint
    probabilities also carry how much a query attends to image keys at all, which changes with the image, not with
    the prompt's wording.
    """

    def __init__(self, name: str, store: AttentionStore, fallback: Any, text_len: int) -> None:
        self.name = name
        self.store = store
        self.fallback = fallback
        self.text_len = text_len

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kw):
        if not (self.store.explicit or self.store.mode) or encoder_hidden_states is None:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kw)
        import torch
        import torch.nn.functional as F

        b, n, _ = hidden_states.shape
        query_img = attn.to_q(hidden_states)
        heads = attn.heads
        d = query_img.shape[-1] // heads

        def split(x):
            return x.view(b, -1, heads, d).transpose(1, 2)

        q, k, v = split(query_img), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        cq, ck = split(attn.add_q_proj(encoder_hidden_states)), split(attn.add_k_proj(encoder_hidden_states))
        cv = split(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            cq = attn.norm_added_q(cq)
        if attn.norm_added_k is not None:
            ck = attn.norm_added_k(ck)
        if self.store.mode is not None:
            probs = None
            if self.store.keep_probs:  # (B, heads, N, text_len): image queries × CLIP keys only
                probs = torch.softmax((q @ ck[:, :, :self.text_len].transpose(-1, -2)) * attn.scale, dim=-1)
            self.store.record(self.name, probs, query_img, n)
        q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False, scale=attn.scale)
        out = out.transpose(1, 2).reshape(b, -1, heads * d).to(q.dtype)
        img, txt = out[:, :n], out[:, n:]
        if not attn.context_pre_only:
            txt = attn.to_add_out(txt)
        img = attn.to_out[1](attn.to_out[0](img))
        return img, txt


def install_joint_capture(transformer, patterns: list[str], text_len: int = 77,
                          store: AttentionStore | None = None) -> AttentionStore:
    """CaptureProcessor's counterpart on an SD3 transformer: the joint attention ``transformer_blocks.N.attn`` plays
    the role of a UNet's ``attn2``, so a pattern ending in ``attn2`` (the default ``*attn2``) selects it; SD3.5's
    image-only ``attn2`` holds no text and is never captured."""
    from spf_lib.errors import SpfError

    store = store or AttentionStore()
    pats = [p[:-1] if p.endswith("attn2") else p for p in patterns]
    procs = dict(transformer.attn_processors)
    chosen = []
    for key, proc in procs.items():
        module = key.removesuffix(".processor")
        if module.endswith(".attn") and any(fnmatch.fnmatchcase(module, p) for p in pats):
            procs[key] = JointCaptureProcessor(module, store, proc, text_len)
            chosen.append(module)
    if not chosen:
        names = [k.removesuffix(".processor") for k in procs if k.endswith(".attn.processor")]
        raise SpfError(f"spf.capture_layers={patterns!r}: matches no joint-attention layer; e.g. {names[:2]}")
    transformer.set_attn_processor(procs)
    return store
