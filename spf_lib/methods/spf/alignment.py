"""The SFCM and the losses it gates (L_text, L_fine) and L_enh, the paper's part of SPF's stage 2.

A mixin of ``SpfMethod`` (it reads ``self.o``, ``self.store`` — the captured attention maps of both paths —,
``self.mapper``, ``self.embedder``, ``self.enh_direction`` and the ``self._text_emb`` cache); which samples these
losses see and how they are weighted stays with the method (``response_losses``).
"""

from __future__ import annotations

import torch

from spf_lib.methods.base import TrainContext
from spf_lib.methods.spf import losses as L


class AlignmentLosses:
    def phrase_distances(self, ctx: TrainContext, phrases: list[str], target: str | None) -> torch.Tensor:
        """D_p = 1 − cos(pooled text embedding of p, of the target), from the base model's own text encoder."""
        if self.o.sfcm_phrase_weighting == "uniform" or not target:
            return torch.ones(len(phrases))
        missing = [s for s in phrases + [target] if s not in self._text_emb]
        if missing:
            pooled = ctx.backbone.pooled_text(missing, device=ctx.device).float().cpu()
            self._text_emb.update(zip(missing, pooled))
        tgt = self._text_emb[target]
        return torch.stack([1 - torch.nn.functional.cosine_similarity(self._text_emb[p], tgt, dim=0)
                            for p in phrases]) if phrases else torch.zeros(0)

    def control_map(self, ctx: TrainContext, batch, eps_res, eps_ref) -> L.ControlMap:
        """The SFCM (``L.ControlMap``: M in [0, 1] at any layer resolution); M ≡ 0 when switched off (align
        everywhere)."""
        h, w = eps_res.shape[-2:]
        b = eps_res.shape[0]
        dev = eps_res.device
        if not self.o.use_sfcm:
            return L.ControlMap.off(b, h, w, dev)
        ref = self.store.maps.get("ref", {})
        p_max = max(1, max(len(p) for p in batch["base_phrases"]))
        # token weights (B, P, T): 1/len on each phrase's tokens, so one einsum per layer averages them
        tok_w = torch.zeros(b, p_max, self.mapper.max_len)
        weights = torch.zeros(b, p_max)
        for i in range(b):
            phrases = batch["base_phrases"][i]
            dist = self.phrase_distances(ctx, phrases, batch["target_phrase"][i])
            for k, phrase in enumerate(phrases):
                pos = self.mapper.phrase_positions(batch["base_text"][i], phrase)
                if pos:
                    tok_w[i, k, pos] = 1.0 / len(pos)
                    weights[i, k] = dist[k]
        maps = L.phrase_maps([(c.probs.detach(), c.hw) for c in ref.values()], tok_w.to(dev), (h, w))
        o = self.o
        return L.ControlMap(L.noise_difference(eps_res, eps_ref), maps, weights.to(dev), norm=o.sfcm_norm,
                            pool=o.sfcm_gate_pool, quantile=o.sfcm_quantile, blur=o.sfcm_blur,
                            z=(o.sfcm_z_low, o.sfcm_z_high), share=o.sfcm_phrase_share)

    def text_loss(self, batch, mask) -> torch.Tensor:
        ref, res = self.store.maps["ref"], self.store.maps["res"]
        pairs = [self.mapper.index_map(bt, rt, self.o.text_include_special)
                 for bt, rt in zip(batch["base_text"], batch["caption"])]
        k = max(len(p[0]) for p in pairs)
        dev = mask.device
        idx_ref = torch.zeros(len(pairs), k, dtype=torch.long, device=dev)
        idx_res = torch.zeros_like(idx_ref)
        valid = torch.zeros(len(pairs), k, dtype=torch.bool, device=dev)
        for i, (a, r) in enumerate(pairs):
            idx_ref[i, :len(a)] = torch.tensor(a)
            idx_res[i, :len(r)] = torch.tensor(r)
            valid[i, :len(a)] = True
        t_res = t_ref = None
        if self.o.text_without_target:
            length = next(iter(ref.values())).probs.shape[-1]
            t_res, t_ref = (self.target_positions(batch[key], batch["target_phrase"], length, dev)
                            for key in ("caption", "base_text"))
        pool = self.o.sfcm_gate_pool
        terms = [L.text_consistent_loss(res[n].probs, c.probs, idx_res, idx_ref, valid, L.gate_for(mask, c.hw, pool),
                                        t_res, t_ref) for n, c in ref.items()]
        return torch.stack(terms).mean()

    def target_positions(self, texts: list[str], phrases: list[str], length: int, device) -> torch.Tensor:
        """(B, length): 1 where each text holds its target phrase's tokens (``text_without_target``; none in a base
        text); ``length`` = the captured maps' key count."""
        out = torch.zeros(len(texts), length, device=device)
        for i, (text, phrase) in enumerate(zip(texts, phrases)):
            out[i, [p for p in (self.mapper.phrase_positions(text, phrase) if phrase else []) if p < length]] = 1.0
        return out

    def fine_loss(self, mask) -> torch.Tensor:
        ref, res = self.store.maps["ref"], self.store.maps["res"]
        return torch.stack([L.fine_grained_loss(res[n].query, c.query, L.gate_for(mask, c.hw, self.o.sfcm_gate_pool))
                            for n, c in ref.items()]).mean()

    def enhanced(self, ctx: TrainContext, batch, noisy, t, latents, eps_res, eps_ref) -> torch.Tensor:
        """L_enh on the samples whose timestep passes ``enh_max_timestep`` only: the VAE decode (and its backward)
        of the others would be wasted, their one-step x̂0 is mostly noise."""
        keep = (t < self.o.enh_max_timestep).nonzero().flatten()
        if keep.numel() == 0:
            return eps_res.sum() * 0.0
        emb = self.embedder
        noisy_k, t_k = noisy[keep], t[keep]
        x0_res = ctx.predict_x0(noisy_k, eps_res[keep], t_k)
        with torch.no_grad():
            x0_ref = ctx.predict_x0(noisy_k, eps_ref[keep], t_k)
            e_ref = emb.embed_latents(x0_ref, ctx.vae)
            if self.enh_direction == "text":
                idx = keep.tolist()
                direction = emb.text_direction([batch["base_text"][i] for i in idx], [batch["caption"][i] for i in idx])
            else:
                e_gt = emb.embed_pixels(batch["pixel_values"][keep], ctx.vae, latents=latents[keep])
                direction = e_gt - e_ref
        e_res = emb.embed_latents(x0_res, ctx.vae)
        valid = torch.ones(keep.numel(), dtype=torch.bool, device=e_res.device)
        return L.enhanced_loss(e_res, e_ref, direction, valid)
