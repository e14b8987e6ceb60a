"""SPF-Portrait: stage 1 = LoRA fine-tuning; stage 2 = dual-path alignment on the same noisy latent.

Reference path: the same UNet with its LoRA disabled, under no_grad, fed the BASE text. Response path: LoRA enabled,
fed base + target text. One copy of the weights serves both (the paper keeps a frozen copy of the model).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import torch

from spf_lib.methods.base import TrainContext, diffusion_loss
from spf_lib.methods.lora.method import LoraMethod
from spf_lib.methods.spf import losses as L
from spf_lib.methods.spf.alignment import AlignmentLosses
from spf_lib.methods.spf.preserve import PreserveLosses, share

log = logging.getLogger(__name__)
TOKENS_PREFIX = "target_tokens."  # their keys in the training checkpoint, beside the LoRA's
FROZEN_CACHE_BYTES = 256 * 2**20  # ``frozen_condition``'s bound (SD 1.5: ~1100 texts; SD3 with T5: ~50)


class SpfMethod(AlignmentLosses, PreserveLosses, LoraMethod):
    name = "spf"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.o = cfg.spf
        self.lr_scale = cfg.spf.lr_scale  # the loop's optimizer lr = cfg.lr × this
        self.store = None
        self.mapper = None
        self.embedder = None
        self._text_emb: dict[str, torch.Tensor] = {}
        self._frozen: OrderedDict = OrderedDict()  # text -> its Conditioning row (``frozen_condition``)
        self.prior: tuple[torch.Tensor, list[str]] | None = None  # (latents, base texts) the original model drew
        self.tokens = None  # TargetTokens (spf.target_tokens)
        self.enh_direction = "image"  # resolved in setup ("auto" -> text when the embedder has a text tower)

    def setup(self, ctx: TrainContext) -> list:
        from spf_lib.methods.spf.embedder import build_embedder
        from spf_lib.methods.spf.tokens import TokenMapper

        params = super().setup(ctx)
        o = self.o
        if o.use_text or o.use_fine or o.use_sfcm:
            self.store = ctx.backbone.install_capture(o.capture_layers)
            self.store.keep_probs = o.use_text or o.use_sfcm
            self.store.keep_query = o.use_fine
        self.mapper = TokenMapper(ctx.tokenizer)
        if o.use_enhanced:
            self.embedder = build_embedder(o.image_embedder, ctx.device, ctx.weight_dtype)
            if o.enh_direction == "text" and not self.embedder.has_text:
                from spf_lib.errors import SpfError

                raise SpfError("spf.enh_direction='text' needs spf.image_embedder = a CLIPModel folder with a tokenizer")
            auto_text = o.enh_direction == "auto" and self.embedder.has_text
            self.enh_direction = "text" if o.enh_direction == "text" or auto_text else "image"
        if o.use_preserve and o.preserve_prior:
            self.prior = self.sample_prior(ctx)
        if o.target_tokens:
            from spf_lib.methods.spf.target_tokens import TargetTokens

            self.tokens = TargetTokens(ctx.pipe, ctx.backbone.text_encoder_names, ctx.extras.get("examples", []))
            log.info("SPF: learning the target's own token rows %s", self.tokens.tokens)
            params = [*params, *self.tokens.params()]
        return params

    def condition(self, ctx: TrainContext, texts: list[str]):
        """The conditioning through the learned target-token rows, with their graph. Checkpointed: the text
        encoder's activations (~150 MB at SD 1.5, batch 2 — the step's peak is the UNet backward, when they would
        still be alive) are recomputed in the backward instead of kept, for one more text-encoder forward."""
        if self.tokens is None:
            return ctx.condition(texts)
        from torch.utils.checkpoint import checkpoint

        def encode():
            with self.tokens.active():
                return ctx.condition(texts, grad=True)

        return checkpoint(encode, use_reentrant=False)

    def frozen_condition(self, ctx: TrainContext, texts: list[str]):
        """The conditioning of texts the adapter's rows never touch (base texts, the empty prompt: no target token
        in them), without a graph and cached per text: the text encoders are frozen, so the same text always
        encodes the same, and the reference path and L_preserve read the same few hundred base texts all run. The
        cache is bounded (``FROZEN_CACHE_BYTES``, least recently used out first) so a large set at SD3's T5 widths
        does not fill the device."""
        cache = self._frozen
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        if missing:
            cond = ctx.condition(missing)
            for i, text in enumerate(missing):
                cache[text] = cond[i:i + 1]
        from spf_lib.models.backbone import Conditioning

        out = Conditioning.cat([cache[t] for t in texts])
        for t in texts:
            cache.move_to_end(t)
        per_text = out.nbytes / max(1, len(texts))
        while len(cache) > max(len(set(texts)), int(FROZEN_CACHE_BYTES // max(per_text, 1))):
            cache.popitem(last=False)
        return out

    def set_enabled(self, ctx: TrainContext, enabled: bool) -> None:
        super().set_enabled(ctx, enabled)
        if self.tokens is not None:
            self.tokens.set_enabled(enabled)

    def state_dict(self) -> dict:
        sd = super().state_dict()
        if self.tokens is not None:
            sd.update({f"{TOKENS_PREFIX}{k}": v for k, v in self.tokens.state_dict().items()})
        return sd

    def load_state_dict(self, sd: dict) -> None:
        mine = {k[len(TOKENS_PREFIX):]: v for k, v in sd.items() if k.startswith(TOKENS_PREFIX)}
        super().load_state_dict({k: v for k, v in sd.items() if not k.startswith(TOKENS_PREFIX)})
        if self.tokens is not None:
            self.tokens.load_state_dict(mine, "checkpoint")

    # -- the two paths ----------------------------------------------------------------------------------------
    def dual_forward(self, ctx: TrainContext, noisy, t, base_text: list[str], res_text: list[str],
                     frozen_res: list[str] = (), capture: bool = True):
        """(ε_ref, ε_res); captured maps land in ``self.store.maps['ref' | 'res']``. The response path reads
        ``res_text`` through the learned rows, then ``frozen_res`` (texts without the target: L_preserve's samples
        under ``preserve_schedule='instead'``) as the original encodes them, in the same batch."""
        from spf_lib.models.backbone import Conditioning

        cond_ref = self.frozen_condition(ctx, list(base_text))  # the original model reads no learned row
        parts = [self.condition(ctx, list(res_text))] if len(res_text) else []
        if len(frozen_res):
            parts.append(self.frozen_condition(ctx, list(frozen_res)))
        cond_res = parts[0] if len(parts) == 1 else Conditioning.cat(parts)
        store = self.store if capture else None
        if store is not None:
            store.clear()
            store.latent_hw = tuple(noisy.shape[-2:])
        if store is not None:
            store.mode = "ref"
        eps_ref = self.reference_eps(ctx, noisy, t, cond_ref)
        if store is not None:
            store.mode = "res"
        try:
            eps_res = ctx.denoise(noisy, t, cond_res)
        finally:
            if store is not None:
                store.mode = None
        return eps_ref, eps_res

    def reference_eps(self, ctx: TrainContext, noisy, t, cond) -> torch.Tensor:
        """ε of the ORIGINAL model: the same UNet with its adapter off, no gradient."""
        with torch.no_grad(), self.switch.off():
            return ctx.denoise(noisy, t, cond)

    def compute_loss(self, ctx: TrainContext, batch: dict[str, Any], step: int):
        o = self.o
        if step < o.stage1_steps:
            if not (o.use_preserve and o.preserve_in_stage1):
                loss, logs = super().compute_loss(ctx, batch, step)
                return loss, {**logs, "stage": 1.0}
            return self.stage1_with_preserve(ctx, batch)
        latents = ctx.encode_images(batch["pixel_values"])
        noisy, _noise, t, target = ctx.add_noise(latents)
        n = _micro_batch(batch, step)
        res_idx, pres_idx = self._split(len(t), n)
        if self._schedule() == "instead":
            return self.joint_losses(ctx, batch, (noisy, t, target, latents), res_idx, pres_idx, step, n)
        logs: dict[str, float] = {"stage": 2.0}
        total = noisy.new_zeros((), dtype=torch.float32)
        eps_ref = None
        if res_idx is not None:
            total, eps_ref = self.response_losses(ctx, _take(batch, res_idx), noisy[res_idx], t[res_idx],
                                                  target[res_idx], latents[res_idx], logs,
                                                  self.align_scale(step))
        if pres_idx is not None and pres_idx.numel():
            # unsplit: samples of the response step, so its reference ε (base text, same z_t) is reused
            l_pres = self.preserve_loss(ctx, noisy[pres_idx], t[pres_idx],
                                        [batch["base_text"][i] for i in pres_idx.tolist()],
                                        None if o.preserve_schedule == "split" else eps_ref[pres_idx],
                                        first=self._preserved_before(len(t), n))
            total = total + o.w_preserve * l_pres
            logs["loss_preserve"] = float(l_pres.detach())
        return total, logs

    def loss_chunks(self, ctx: TrainContext, batch: dict[str, Any], step: int):
        """``compute_loss`` in parts the training loop back-propagates one at a time (same value, same gradients,
        same random draws): the response losses, then L_preserve. Unsplit, both graphs were alive until the one
        backward — the default step held twice LoRA's activation memory (docs/method.md); now the response graph
        is freed before the preserve forward runs. Other schedules are a single part."""
        o = self.o
        if step < o.stage1_steps or self._schedule() != "beside":
            yield self.compute_loss(ctx, batch, step)
            return
        latents = ctx.encode_images(batch["pixel_values"])
        noisy, _noise, t, target = ctx.add_noise(latents)
        n = _micro_batch(batch, step)
        _, pres_idx = self._split(len(t), n)
        logs: dict[str, float] = {"stage": 2.0}
        total, eps_ref = self.response_losses(ctx, batch, noisy, t, target, latents, logs, self.align_scale(step))
        yield total, logs  # the loop's backward frees the response graph here (the captured maps stay readable)
        if not pres_idx.numel():
            return
        l_pres = self.preserve_loss(ctx, noisy[pres_idx], t[pres_idx],
                                    [batch["base_text"][i] for i in pres_idx.tolist()], eps_ref[pres_idx],
                                    first=self._preserved_before(len(t), n))
        yield o.w_preserve * l_pres, {"loss_preserve": float(l_pres.detach())}

    def _split(self, b: int, n: int):
        """(response indices, preserve indices) of micro-batch ``n`` (of size ``b``) under ``preserve_schedule``. The
        preserved count is the share ``preserve_frac`` of the run's samples that falls in this batch (``share``: a
        batch of 2 at 1/8 preserves one sample every fourth step). ``instead``: the batch's last that many samples
        take L_preserve and not the response path (a batch is shuffled). ``beside``: the response path on every
        sample, L_preserve also on the first that many, reusing the response step's reference ε. ``split``: the
        first half of the batch takes the response path, the rest L_preserve; a batch of one alternates."""
        every = torch.arange(b)
        if not self.o.use_preserve:
            return every, None
        if self._schedule() == "instead":
            r = b - share(self.o.preserve_frac, n * b, b)
            return (every[:r] if r else None), every[r:]
        if self._schedule() == "beside":
            return every, every[:share(self.o.preserve_frac, n * b, b)]
        if b == 1:
            return (every, None) if n % 2 == 0 else (None, every)
        k = (b + 1) // 2
        return every[:k], every[k:]

    def _schedule(self) -> str | None:
        """``spf.preserve_schedule``, None when L_preserve is off."""
        return self.o.preserve_schedule if self.o.use_preserve else None

    def joint_losses(self, ctx: TrainContext, batch: dict[str, Any], noised, res_idx, pres_idx, step: int, n: int):
        """``preserve_schedule='instead'``: the response samples (the batch's first ones) and L_preserve's samples
        share the two forward passes — the original on base texts (or the empty prompt), the tuned model on
        captions, then on the preserved samples' base texts — so a step costs what the dual path costs whatever it
        preserves. The response losses read only their own samples (captured maps narrowed to them); L_preserve is
        the MSE of the rest, tuned vs original on the same z_t and text.
        """
        o = self.o
        noisy, t, target, latents = noised
        r = 0 if res_idx is None else res_idx.numel()
        base = list(batch["base_text"])
        p_noisy, p_t, p_texts = noisy[r:], t[r:], []
        if pres_idx.numel():
            p_noisy, p_t, p_texts = self.preserve_inputs(ctx, noisy[r:], t[r:], base[r:],
                                                        self._preserved_before(len(t), n))
        eps_ref, eps_res = self.dual_forward(ctx, torch.cat([noisy[:r], p_noisy]), torch.cat([t[:r], p_t]),
                                             base[:r] + p_texts, list(batch["caption"][:r]), p_texts, capture=r > 0)
        logs: dict[str, float] = {"stage": 2.0}
        total = noisy.new_zeros((), dtype=torch.float32)
        if r:
            if self.store is not None:
                self.store.narrow(r)
            total, _ = self.response_losses(ctx, _take(batch, res_idx), noisy[:r], t[:r], target[:r], latents[:r],
                                            logs, self.align_scale(step), paths=(eps_ref[:r], eps_res[:r]))
        if p_texts:
            l_pres = torch.nn.functional.mse_loss(eps_res[r:].float(), eps_ref[r:].float())
            total = total + o.w_preserve * l_pres
            logs["loss_preserve"] = float(l_pres.detach())
        return total, logs

    def _preserved_before(self, b: int, n: int) -> int:
        """How many samples L_preserve saw before micro-batch ``n`` (what ``_uncond_count`` spreads its share over)."""
        if self.o.preserve_schedule != "split":
            return share(self.o.preserve_frac, 0, n * b)
        return n * (b - (b + 1) // 2) if b > 1 else n // 2

    def align_scale(self, step: int) -> float:
        """Factor on the SFCM-gated alignment losses at ``step`` (``align_warmup``: a linear ramp over the first
        stage-2 steps). At step 0 the SFCM is computed from a response that does not exist yet (|ε_res − ε_ref| is
        noise), so it holds the target region too and full-strength alignment halves what L_diff teaches there."""
        n = self.o.align_warmup
        if n <= 0:
            return 1.0
        return min(1.0, (step - (self.o.stage1_steps or 0) + 1) / n)

    def response_losses(self, ctx: TrainContext, batch, noisy, t, target, latents, logs: dict[str, float],
                        align: float = 1.0, paths=None):
        """The dual path and every SFCM-gated loss on these samples (L_diff, L_text, L_fine, L_out, L_enh), logged
        into ``logs``; ``align`` scales the alignment losses (``align_scale``); ``paths``: (ε_ref, ε_res) already
        run (``joint_losses``); returns (loss, ε_ref)."""
        o = self.o
        eps_ref, eps_res = paths or self.dual_forward(ctx, noisy, t, batch["base_text"], batch["caption"])
        l_diff = diffusion_loss(eps_res, target)
        total = o.w_diffusion * l_diff
        logs["loss_diffusion"] = float(l_diff.detach())
        mask = self.control_map(ctx, batch, eps_res, eps_ref)
        logs["sfcm_mean"] = mask.mean()
        if o.use_text:
            l_text = self.text_loss(batch, mask)
            total = total + align * o.w_text * l_text
            logs["loss_text"] = float(l_text.detach())
        if o.use_fine:
            l_fine = self.fine_loss(mask)
            total = total + align * o.w_fine * l_fine
            logs["loss_fine"] = float(l_fine.detach())
        if o.use_out:
            l_out = L.output_alignment_loss(eps_res, eps_ref, mask)
            total = total + align * o.w_out * l_out
            logs["loss_out"] = float(l_out.detach())
        if o.use_enhanced:
            l_enh = self.enhanced(ctx, batch, noisy, t, latents, eps_res, eps_ref)
            total = total + o.w_enhanced * l_enh
            logs["loss_enhanced"] = float(l_enh.detach())
        if self.store is not None:
            # the reference maps (no grad) are read only by the losses above, not by their backward: freed here,
            # they are not alive at the backward's peak (issue 15, cost: docs/method.md)
            self.store.drop("ref")
        return total, eps_ref

    def stage1_with_preserve(self, ctx: TrainContext, batch: dict[str, Any]):
        """Stage 1 = L_diff on the caption + L_preserve on the base text: the target is learned as a response to the
        target tokens from the start, so stage 2 has a target to localise (SFCM) rather than one to erase."""
        o = self.o
        latents = ctx.encode_images(batch["pixel_values"])
        noisy, _noise, t, target = ctx.add_noise(latents)
        pred = ctx.denoise(noisy, t, self.condition(ctx, batch["caption"]))
        l_diff = diffusion_loss(pred, target)
        # with preserve_prior, L_preserve draws its own inputs: no reference pass on this batch
        eps_ref = None if self.prior is not None else self.reference_eps(ctx, noisy, t,
                                                                         self.frozen_condition(ctx, batch["base_text"]))
        l_pres = self.preserve_loss(ctx, noisy, t, batch["base_text"], eps_ref,
                                    first=_micro_batch(batch, 0) * len(t))
        return o.w_diffusion * l_diff + o.w_preserve * l_pres, {
            "loss_diffusion": float(l_diff.detach()), "loss_preserve": float(l_pres.detach()), "stage": 1.0}

    def save_adapter(self, ctx: TrainContext, out_dir):
        info = super().save_adapter(ctx, out_dir)
        info.update(method=self.name, spf=self.o.model_dump(mode="json"))
        if self.tokens is not None:
            info["target_tokens"] = self.tokens.save(out_dir)
        return info


def _micro_batch(batch: dict[str, Any], step: int) -> int:
    """The batch's position in the run (``BatchSource``: step × grad_accum + micro); the step for a hand-made one."""
    return int(batch.get("micro_batch", step))


def _take(batch: dict[str, Any], idx: torch.Tensor) -> dict[str, Any]:
    """The samples ``idx`` of a batch (tensors indexed, per-sample lists picked, anything else kept)."""
    if idx.numel() and idx.numel() == len(batch["base_text"]) and bool((idx == torch.arange(idx.numel())).all()):
        return batch
    ii = idx.tolist()
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == len(batch["base_text"]):
            out[k] = v[idx.to(v.device)]
        elif isinstance(v, list) and len(v) == len(batch["base_text"]):
            out[k] = [v[i] for i in ii]
        else:
            out[k] = v
    return out
