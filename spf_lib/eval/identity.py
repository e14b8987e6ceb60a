"""Identity evaluation for the identity methods: does the trigger prompt show the person the adapter learned?

Why these pieces live together: the pipeline must answer that question without the user passing anything extra.
- The reference faces come with the data: ``reference_files`` accepts a prepared-dataset folder (the prepare task's
  output, whose ``crops/`` are the aligned training faces; with an ``identity`` column only the evaluated trigger's
  rows) or a plain folder of photos.
- Small generations (the small world renders 64 px) are below dlib's HOG detector's reach (faces of ~80 px and up):
  ``upscale`` resizes an image whose short side is below ``min_size`` (bicubic) before detection, the same for
  generations and references. Interpolation adds no identity information; it only lets the detector find the face.
- CLIP-T must not score the literal trigger ("sks" means nothing to a text encoder): ``class_noun_prompt`` puts the
  class noun in its place, so CLIP-T measures whether the image follows the rest of the prompt.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from spf_lib.eval.evalset import IDENTITY_METHODS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CLASS_NOUN = "person"


def adapter_trigger(info: dict) -> str | None:
    """The trigger the evaluation prompts use (the first identity's for several), None for non-identity methods."""
    if info.get("method") not in IDENTITY_METHODS:
        return None
    trig = info.get("trigger") or next((i.get("trigger") for i in info.get("identities") or []), None)
    return str(trig or "sks")


def class_noun_prompt(prompt: str, trigger: str, noun: str = CLASS_NOUN) -> str:
    """``"a photo of sks person, smiling"`` → ``"a photo of a person, smiling"`` (also a bare ``sks``)."""
    pat = re.compile(rf"(\ba\s+)?\b{re.escape(trigger)}\b(\s+{re.escape(noun)}\b)?", re.IGNORECASE)
    return pat.sub(f"a {noun}", prompt)


def reference_files(ref: str | Path, trigger: str | None = None) -> list[Path]:
    """Image files of the reference person: a prepared dataset's crops (filtered to ``trigger`` when the manifest
    has an ``identity`` column) or every image in a plain folder."""
    ref = Path(ref)
    manifest = ref / "manifest.parquet"
    if manifest.is_file():
        import pandas as pd

        df = pd.read_parquet(manifest)
        if trigger and "identity" in df.columns:
            df = df[df["identity"].astype(str).str.strip().str.lower() == trigger.lower()]
        return [ref / str(p) for p in df["crop_path"] if (ref / str(p)).is_file()]
    return sorted(p for p in ref.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if ref.is_dir() else []


def upscale(image: Any, min_size: int) -> Any:
    """PIL image with its short side raised to ``min_size`` (bicubic); larger images are returned unchanged."""
    from PIL import Image

    image = image.convert("RGB") if hasattr(image, "convert") else Image.fromarray(image)
    short = min(image.size)
    if min_size <= 0 or short >= min_size:
        return image
    f = min_size / short
    return image.resize((round(image.width * f), round(image.height * f)), Image.Resampling.BICUBIC)


#: dlib's same-person threshold on the evaluation's ID scale (score 0.5 = L2 0.6); ONNX (ArcFace-style cosine)
#: users set their own floor in gate_rules.
ID_REF_FLOOR = 0.5


def identity_gate_rules(floor: float = ID_REF_FLOOR) -> dict:
    """Default promotion rules for identity methods (GateRules fields), used when no rules are given.

    Beside preservation (pollution on base prompts, as for every method): the trigger prompt must show the person
    (``id_ref_sim`` at least ``floor`` and no worse than the champion's by more than 0.02) and show them more than
    the original model does on the same prompts (``id_ref_gain`` > 0, a floor that holds on any encoder's scale).
    """
    return {"rules": [
        {"metric": "pollution", "better": "lower", "epsilon": 0.01, "bound": 0.5},
        {"metric": "id_ref_sim", "better": "higher", "epsilon": 0.02, "bound": floor},
        {"metric": "id_ref_gain", "better": "higher", "bound": 0.0},
    ]}
