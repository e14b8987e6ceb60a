"""How the per-stage (K, V) tokens reach the UNet's cross-attention, and the face-wise attention loss.

DECIDE (documented in docs/identity-methods.md): the text side hands the UNet ONE tensor that packs, along the
sequence axis, ``[base | K_1 .. K_S | V_1 .. V_S]`` (each L=77 tokens). ``K_s`` = frozen text transformer output of
the prompt with stage s's K token at V*'s slot; ``V_s`` = the base encoding with V*'s slot replaced by stage s's V
token (value_mode="direct") or the transformer output with the V token there ("encoded"). Each cross-attention
layer's processor slices its stage's K_s for ``to_k`` and V_s for ``to_v``. Packing keeps the stock pipeline call
path (encode_prompt, CFG concatenation, num_images_per_prompt) untouched: the pipeline only sees a longer sequence,
and a plain 77-token input falls back to ordinary attention.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def cross_attention_layers(unet: Any) -> list[str]:
    """Processor names of the UNet's cross-attention (attn2) layers in forward order: down, mid, up."""
    names = [n for n in unet.attn_processors if ".attn2." in n]

    def key(n: str) -> tuple:
        block = n.split(".")[0]
        return (_ORDER.get(block, 9), *[int(x) for x in re.findall(r"\.(\d+)\.", n)])

    return sorted(names, key=key)


def assign_stages(layers: list[str], n_stages: int) -> dict[str, int]:
    """Contiguous, near-equal split of the ordered layers into min(n_stages, len(layers)) stages."""
    n = min(n_stages, len(layers))
    return {name: i * n // len(layers) for i, name in enumerate(layers)}


@dataclass
class AttentionStore:
    seq_len: int
    n_stages: int
    capture: bool = False
    token_pos: Any = None       # (B,) V*'s index per prompt row
    ref_hidden: Any = None      # (B, L, D) frozen encoding of the reference prompt
    ref_pos: Any = None         # (B,) index of the reference word
    maps: list[tuple[Any, Any]] = field(default_factory=list)

    def packed_len(self) -> int:
        return self.seq_len * (1 + 2 * self.n_stages)


class StageAttnProcessor:
    """Classic (bmm) attention for one attn2 layer of stage ``stage``; records V*/reference maps when asked."""

    def __init__(self, stage: int, store: AttentionStore) -> None:
        self.stage = stage
        self.store = store

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, attention_mask: Any = None,
                 temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        import torch

        residual = hidden_states
        ndim = hidden_states.ndim
        if ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        st, L, S = self.store, self.store.seq_len, self.store.n_stages
        packed = encoder_hidden_states is not None and encoder_hidden_states.shape[1] == st.packed_len()
        if encoder_hidden_states is None:
            k_in = v_in = hidden_states
        elif packed:
            k_in = encoder_hidden_states[:, L * (1 + self.stage): L * (2 + self.stage)]
            v_in = encoder_hidden_states[:, L * (1 + S + self.stage): L * (2 + S + self.stage)]
        else:
            k_in = v_in = encoder_hidden_states
        if attn.norm_cross:
            k_in, v_in = attn.norm_encoder_hidden_states(k_in), attn.norm_encoder_hidden_states(v_in)
        q = attn.head_to_batch_dim(query)
        k = attn.head_to_batch_dim(attn.to_k(k_in))
        v = attn.head_to_batch_dim(attn.to_v(v_in))
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, k_in.shape[1], batch)
        probs = attn.get_attention_scores(q, k, attention_mask)
        if st.capture and packed:
            rows = torch.arange(batch, device=probs.device)
            a_t = probs.view(batch, attn.heads, -1, L)[rows, :, :, st.token_pos].mean(1)
            with torch.no_grad():
                kr = attn.head_to_batch_dim(attn.to_k(st.ref_hidden.to(k_in.dtype)))
                pr = attn.get_attention_scores(q.detach(), kr, None)
                a_r = pr.view(batch, attn.heads, -1, L)[rows, :, :, st.ref_pos].mean(1)
            st.maps.append((a_t, a_r))
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        out = attn.to_out[1](attn.to_out[0](out))
        if ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def attention_loss(maps: list[tuple[Any, Any]]) -> Any:
    """Face-wise attention loss: mean over layers of MSE between V*'s and the reference word's maps.

    Each (B, HW) map is divided by its spatial mean first, so the loss compares WHERE the token attends, not how
    much total attention it takes (V* and "person" sit in different prompts). Zero iff the normalised maps match.
    """
    import torch

    if not maps:
        return torch.zeros(())
    terms = []
    for a_t, a_r in maps:
        nt = a_t / a_t.mean(-1, keepdim=True).clamp_min(1e-8)
        nr = a_r / a_r.mean(-1, keepdim=True).clamp_min(1e-8)
        terms.append(((nt.float() - nr.float()) ** 2).mean())
    return torch.stack(terms).mean()


def pack_hidden(text_encoder: Any, override: Any, input_ids: Any, token_id: int, k_tokens: Any, v_tokens: Any,
                value_mode: str, base: Any = None) -> Any:
    """(B, L) ids → (B, L·(1+2S), D) packed ``[base | K_1..K_S | V_1..V_S]`` (differentiable in the tokens)."""
    import torch

    if base is None:
        base = text_encoder(input_ids)[0]
    s, (b, L), d = k_tokens.shape[0], input_ids.shape, base.shape[-1]
    ids = input_ids.repeat(s, 1)                                   # stage-major (S·B, L)

    def encode(tokens: Any) -> Any:
        with override.use({token_id: tokens.repeat_interleave(b, 0)}):
            return text_encoder(ids)[0].view(s, b, L, d)

    hk = encode(k_tokens)
    if value_mode == "encoded":
        hv = encode(v_tokens)
    else:
        mask = (input_ids == token_id)[None, :, :, None]
        hv = torch.where(mask, v_tokens[:, None, None, :].to(base.dtype), base[None])
    flat = lambda x: x.permute(1, 0, 2, 3).reshape(b, s * L, d)  # noqa: E731
    return torch.cat([base, flat(hk.to(base.dtype)), flat(hv.to(base.dtype))], dim=1)


class Injector:
    """Install/remove the stage processors (and, for pipeline calls, a text-encoder hook that packs outputs)."""

    def __init__(self, unet: Any, text_encoder: Any, stage_of: dict[str, int], n_stages: int, seq_len: int,
                 token_id: int, value_mode: str) -> None:
        from spf_lib.methods.tokens import TokenOverride

        self.unet, self.text_encoder = unet, text_encoder
        self.stage_of, self.token_id, self.value_mode = stage_of, token_id, value_mode
        self.store = AttentionStore(seq_len=seq_len, n_stages=n_stages)
        self.override = TokenOverride(text_encoder)
        self.tokens: tuple[Any, Any] | None = None   # fixed (k, v) used by the pipeline hook
        self._original: dict | None = None
        self._hook = None
        self._pre_hook = None
        self._bypass = False

    def install(self, tokens: tuple[Any, Any] | None = None, hook: bool = True) -> None:
        if self._original is None:
            self._original = dict(self.unet.attn_processors)
            procs = dict(self._original)
            for name, stage in self.stage_of.items():
                procs[name] = StageAttnProcessor(stage, self.store)
            self.unet.set_attn_processor(procs)
        self.tokens = tokens if tokens is not None else self.tokens
        if hook and self._hook is None:
            self._hook = self.text_encoder.register_forward_hook(self._pack_output, with_kwargs=True)
            self._pre_hook = self.text_encoder.register_forward_pre_hook(self._cut_input, with_kwargs=True)

    def remove(self) -> None:
        if self._original is not None:
            self.unet.set_attn_processor(self._original)
            self._original = None
        if self._hook is not None:
            self._hook.remove()
            self._pre_hook.remove()
            self._hook = self._pre_hook = None

    @contextlib.contextmanager
    def bypass(self) -> Iterator[None]:
        """Text-encoder calls inside this block are not packed (training packs explicitly)."""
        old, self._bypass = self._bypass, True
        try:
            yield
        finally:
            self._bypass = old

    def _cut_input(self, module: Any, args: tuple, kwargs: dict) -> Any:
        """The pipeline tokenizes the negative prompt to the POSITIVE embeddings' length, which packing made
        L·(1+2S): cut such ids (and mask) back to L so the text encoder sees a normal prompt."""
        ids = args[0] if args else kwargs.get("input_ids")
        L = self.store.seq_len
        if ids is None or ids.shape[-1] <= L:
            return None
        ids = ids[..., :L]
        args = (ids, *args[1:]) if args else args
        kwargs = dict(kwargs)
        if not args:
            kwargs["input_ids"] = ids
        if kwargs.get("attention_mask") is not None:
            kwargs["attention_mask"] = kwargs["attention_mask"][..., :L]
        return args, kwargs

    def _pack_output(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        if self._bypass or self.tokens is None:
            return None
        import torch

        input_ids = args[0] if args else kwargs.get("input_ids")
        k, v = self.tokens
        with self.bypass(), torch.no_grad():
            packed = pack_hidden(self.text_encoder, self.override, input_ids, self.token_id, k, v, self.value_mode,
                                 base=output[0])
        return type(output)(last_hidden_state=packed, pooler_output=output.pooler_output)
