"""Image embedders for L_enhanced (pluggable; the paper says only "CLIP-guided").

- ``ClipEmbedder``: x̂0 latents → VAE decode → CLIP image features (a CLIPModel folder/hub id in
  ``spf.image_embedder``). Supports the text direction too (CLIP text features of base vs base + target).
No CLIP configured ⇒ L_enhanced is off (``SpfOptions`` resolves ``use_enhanced`` to false): a latent-pool
stand-in reduced to a pooled diffusion loss with no image/text semantics (issue 15), so it was removed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def decode_latents(latents: torch.Tensor, vae) -> torch.Tensor:
    """Training latents (``TrainContext.encode_images``: (z − shift) × scale) → pixels in about [-1, 1]; SD3's VAE
    has a shift_factor, SD 1.x/SDXL's none."""
    z = latents / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        z = z + shift
    return vae.decode(z.to(vae.dtype), return_dict=False)[0]


class ClipEmbedder:
    name = "clip"
    needs_decode = True
    has_text = True

    def __init__(self, ref: str, device, dtype) -> None:
        from transformers import CLIPModel, CLIPTokenizer

        from spf_lib.errors import SpfError
        from spf_lib.models.loading import resolve_model_ref

        path = resolve_model_ref(ref)
        try:
            self.model = CLIPModel.from_pretrained(path, use_safetensors=True).to(device, dtype).eval()
        except OSError as e:
            raise SpfError(f"spf.image_embedder={ref!r}: cannot load a CLIPModel ({str(e).splitlines()[0]})") from None
        self.model.requires_grad_(False)
        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(path)
        except OSError:
            self.tokenizer = None
            self.has_text = False
        self.size = self.model.config.vision_config.image_size
        self.device, self.dtype = device, dtype

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels in [-1, 1] (B, 3, H, W) → L2-normalised CLIP image features (B, D)."""
        x = F.interpolate(((pixels.float() + 1) / 2).clamp(0, 1), size=(self.size, self.size), mode="bilinear",
                          align_corners=False)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        feats = self.model.get_image_features(pixel_values=((x - mean) / std).to(self.dtype))
        feats = getattr(feats, "image_embeds", getattr(feats, "pooler_output", feats))
        return F.normalize(feats.float(), dim=-1)

    def embed_latents(self, latents: torch.Tensor, vae) -> torch.Tensor:
        return self._features(decode_latents(latents, vae))

    def embed_pixels(self, pixels: torch.Tensor, vae=None, latents: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self._features(pixels.to(self.device))

    def text_direction(self, base: list[str], response: list[str]) -> torch.Tensor:
        with torch.no_grad():
            tok = self.tokenizer(base + response, padding=True, truncation=True, return_tensors="pt").to(self.device)
            f = self.model.get_text_features(**tok)
            f = getattr(f, "text_embeds", getattr(f, "pooler_output", f))
            f = F.normalize(f.float(), dim=-1)
        n = len(base)
        return f[n:] - f[:n]


def build_embedder(ref: str, device, dtype) -> ClipEmbedder:
    return ClipEmbedder(ref, device, dtype)
