"""CLIP-T (image vs its prompt) and CLIP-I (original vs tuned image) with transformers' CLIPModel.

The backbone comes from a configured reference (local folder, hub id, s3:// prefix). If it is not configured or
cannot be loaded, the caller reports the metrics as unavailable with the reason: a CLIP score from random weights
looks like a number and means nothing. A model whose ``logit_scale`` still holds CLIP's initial value
(ln(1/0.07) = 2.6592) has never been trained; it is refused unless ``allow_untrained`` is set (tests only).

Scale: plain cosine similarity of the projected, L2-normalised embeddings (not multiplied by 100 or clipped), the
convention of the SPF-Portrait Table 1 (CLIP-T around 0.2-0.3, CLIP-I around 0.6-0.9).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from spf_lib.errors import SpfError

log = logging.getLogger(__name__)

CLIP_INIT_LOGIT_SCALE = math.log(1 / 0.07)


class BackboneUnavailable(Exception):
    """A metric backbone cannot be used; the message is the reason reported in metrics.json."""


@dataclass
class ClipScorer:
    model: Any
    tokenizer: Any
    processor: Any
    device: str = "cpu"
    ref: str = ""

    def image_embeds(self, images: list[Any], batch_size: int = 16):
        import torch

        outs = []
        for i in range(0, len(images), batch_size):
            px = self.processor(images=[im.convert("RGB") for im in images[i:i + batch_size]],
                                return_tensors="pt")["pixel_values"].to(self.device)
            with torch.no_grad():
                e = self.model.get_image_features(pixel_values=px)
            e = getattr(e, "pooler_output", e) if not torch.is_tensor(e) else e
            outs.append(torch.nn.functional.normalize(e.float(), dim=-1).cpu())
        return torch.cat(outs)

    def text_embeds(self, texts: list[str], batch_size: int = 32):
        import torch

        outs = []
        max_len = getattr(self.model.config.text_config, "max_position_embeddings", 77)
        for i in range(0, len(texts), batch_size):
            tok = self.tokenizer(texts[i:i + batch_size], padding="max_length", truncation=True,
                                 max_length=max_len, return_tensors="pt").to(self.device)
            with torch.no_grad():
                e = self.model.get_text_features(input_ids=tok["input_ids"],
                                                 attention_mask=tok.get("attention_mask"))
            e = getattr(e, "pooler_output", e) if not torch.is_tensor(e) else e
            outs.append(torch.nn.functional.normalize(e.float(), dim=-1).cpu())
        return torch.cat(outs)

    def clip_t(self, images: list[Any], texts: list[str]) -> list[float]:
        """Cosine between each image and its own prompt."""
        a, b = self.image_embeds(images), self.text_embeds(texts)
        return [float(x) for x in (a * b).sum(-1)]

    def clip_i(self, images_a: list[Any], images_b: list[Any]) -> list[float]:
        """Cosine between paired images (original vs tuned of the same prompt and seed)."""
        a, b = self.image_embeds(images_a), self.image_embeds(images_b)
        return [float(x) for x in (a * b).sum(-1)]


def load_clip(ref: str | None, *, device: str = "cpu", cache_dir: str | None = None,
              allow_untrained: bool = False) -> ClipScorer:
    """Load CLIPModel + tokenizer + image processor, or raise BackboneUnavailable with the reason."""
    if not ref:
        raise BackboneUnavailable("no CLIP model configured (set clip_model / --clip-model to a local folder, "
                                  "hub id or s3:// prefix)")
    from spf_lib.models.loading import _offline, resolve_model_ref

    try:
        path = resolve_model_ref(ref, cache_dir)
    except SpfError as e:
        raise BackboneUnavailable(f"CLIP model {ref}: {e}") from e
    except Exception as e:  # network/S3 errors
        raise BackboneUnavailable(f"CLIP model {ref}: cannot fetch ({type(e).__name__}: {str(e)[:200]})") from e
    try:
        from pathlib import Path

        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        local = Path(path).exists() or _offline()
        model = CLIPModel.from_pretrained(path, use_safetensors=True, local_files_only=local)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
        processor = CLIPImageProcessor.from_pretrained(path, local_files_only=local)
    except Exception as e:
        raise BackboneUnavailable(f"CLIP model {ref}: cannot load ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e
    scale = float(model.logit_scale.detach().float().item())
    if abs(scale - CLIP_INIT_LOGIT_SCALE) < 1e-4 and not allow_untrained:
        raise BackboneUnavailable(f"CLIP model {ref}: weights look untrained (logit_scale={scale:.4f} is CLIP's "
                                  "initial value); refusing to report scores from random weights")
    model.eval().to(device)
    return ClipScorer(model=model, tokenizer=tokenizer, processor=processor, device=device, ref=ref)
