"""L_preserve, ours (docs/method.md): the tuned model fed a text WITHOUT the target must predict what the original
does — on the fine-tuning images' noised latents, or on the original model's own samples (``preserve_prior``).

A mixin of ``SpfMethod`` (it reads ``self.o``, ``self.store``, ``self.switch``, ``self.prior``, ``reference_eps``
and ``frozen_condition``); the schedule that decides which samples it sees stays with the method (``_split``).
"""

from __future__ import annotations

import logging
import math

import torch

from spf_lib.methods.base import TrainContext

log = logging.getLogger(__name__)


class PreserveLosses:
    def sample_prior(self, ctx: TrainContext) -> tuple[torch.Tensor, list[str]]:
        """The original model's own images for the set's base texts (cycled in manifest order), as latents.

        L_preserve on noised fine-tuning images only checks the adapter where those images live (here: red
        background, smiling, glasses); base prompts at inference run through latents of the base world, where
        nothing held the adapter still. DreamBooth's prior-preservation images, used as distillation inputs.
        Deterministic in the run seed, so a resumed run regenerates the same set.
        """
        o = self.o
        texts_all = [e.base_text for e in ctx.extras.get("examples", [])]
        if not texts_all:
            from spf_lib.errors import SpfError

            raise SpfError("spf.preserve_prior > 0 needs the training examples (ctx.extras['examples'])")
        texts = [texts_all[i % len(texts_all)] for i in range(o.preserve_prior)]
        pipe = ctx.pipe
        gen = torch.Generator(device="cpu").manual_seed(ctx.cfg.seed + 7919)
        chunk = max(1, ctx.cfg.batch_size)
        side = ctx.cfg.resolution // pipe.vae_scale_factor
        out = []
        with torch.no_grad(), self.switch.off():
            for i in range(0, len(texts), chunk):
                part = texts[i:i + chunk]
                shape = (len(part), ctx.unet.config.in_channels, side, side)
                lat = torch.randn(shape, generator=gen).to(ctx.device, ctx.weight_dtype)
                out.append(pipe(part, latents=lat, num_inference_steps=o.preserve_prior_steps,
                                guidance_scale=o.preserve_prior_guidance, output_type="latent").images.float())
        log.info("L_preserve: %d original-model samples (%d steps, guidance %.1f)", len(texts),
                 o.preserve_prior_steps, o.preserve_prior_guidance)
        return torch.cat(out), texts

    def preserve_loss(self, ctx: TrainContext, noisy, t, base_text: list[str], eps_ref=None,
                      first: int = 0) -> torch.Tensor:
        """Our addition (docs/method.md): the tuned model fed the BASE text must predict what the original does.

        Semantic pollution is measured on prompts WITHOUT the target; the paper's losses only constrain the
        response path (base + target text), so nothing stops the adapter from changing base prompts. Ungated: with
        no target in the text there is no region the adapter may legitimately change. ``eps_ref``: the original's ε
        on (``noisy``, ``base_text``); unused with ``preserve_prior``, which draws its own inputs. ``first``: how many
        samples L_preserve has seen before these in the run (the empty prompt's share is spread over them).
        """
        store = self.store
        if store is not None:
            store.mode = None  # keep the captured response maps of this step intact
        if self.prior is not None:
            return self.preserve_prior_loss(ctx, len(base_text), first)
        noisy, t, texts = self.preserve_inputs(ctx, noisy, t, base_text, first)
        k = self._uncond_count(len(texts), first)
        cond = self.frozen_condition(ctx, texts)
        if eps_ref is None:  # no response step on these samples (preserve_schedule split): one reference pass for all
            eps_ref = self.reference_eps(ctx, noisy, t, cond)
        elif k:
            eps_u = self.reference_eps(ctx, noisy[-k:], t[-k:], cond[-k:])
            eps_ref = torch.cat([eps_ref[:len(texts) - k], eps_u])
        eps_base = ctx.denoise(noisy, t, cond)
        return torch.nn.functional.mse_loss(eps_base.float(), eps_ref.detach().float())

    def preserve_inputs(self, ctx: TrainContext, noisy, t, base_text: list[str], first: int = 0):
        """(z_t, t, texts) L_preserve runs on for these samples: their own, or with ``preserve_prior`` as many of
        the original model's samples (drawn with the run's generator, noised afresh) with their base texts; the
        empty prompt on its share of them (``_uncond_count``)."""
        texts = list(base_text)
        if self.prior is not None:
            lat_all, texts_all = self.prior
            idx = torch.randint(0, lat_all.shape[0], (len(texts),), generator=ctx.generator).tolist()
            texts = [texts_all[i] for i in idx]
            noisy, _noise, t, _target = ctx.add_noise(lat_all[idx].to(ctx.weight_dtype))
        k = self._uncond_count(len(texts), first)
        if k:
            # classifier-free guidance also runs the empty prompt: an adapter that moves it moves every base prompt
            texts[-k:] = [""] * k
        return noisy, t, texts

    def preserve_prior_loss(self, ctx: TrainContext, b: int, first: int = 0) -> torch.Tensor:
        """L_preserve on B of the original model's samples (drawn with the run's generator), noised afresh."""
        noisy, t, texts = self.preserve_inputs(ctx, None, None, [""] * b, first)  # b of the prior's samples
        cond = self.frozen_condition(ctx, texts)
        eps_ref = self.reference_eps(ctx, noisy, t, cond)
        eps_base = ctx.denoise(noisy, t, cond)
        return torch.nn.functional.mse_loss(eps_base.float(), eps_ref.float())

    def _uncond_count(self, m: int, first: int) -> int:
        """How many of these ``m`` preserved samples get the empty prompt: ``preserve_uncond_frac`` of them, spread
        over the run (``share``), so batch 1 — the usual SD 1.5 setting with gradient accumulation — still
        preserves the empty prompt on every other sample."""
        return share(self.o.preserve_uncond_frac, first, m)


def share(rate: float, first: int, count: int) -> int:
    """How many of the items ``first .. first+count-1`` of a run fall in a ``rate`` share of it: the rounded running
    total, differenced (error diffusion). Deterministic and exact: any run of items gets ``rate``·n within one item,
    a whole period exactly — so a training step's cost and what it preserves do not depend on a random draw (the
    stochastic rounding before it made the cost of a step, and the bench's median of a few, a matter of chance)."""
    def total(n: int) -> int:
        return math.floor(n * rate + 0.5 + 1e-9)

    return total(first + count) - total(first)
