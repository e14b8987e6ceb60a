"""Settings and result of the prepare stage.

Every threshold is a field here (not a constant in the code) because what counts as "too blurry" or "too small"
depends on the data: the synthetic demo world has smooth, small images, real portraits are large and sharp.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from spf_lib.errors import SpfError

MULTI_FACE_POLICIES = ("largest", "reject")
FILL_MODES = ("reflect", "black")


@pydantic_dataclass(config=ConfigDict(extra="forbid"))
class PrepareConfig:
    """How `prepare_dataset` turns a folder of captioned images into aligned face crops."""

    size: int = 512  # side of the square aligned crop (px)
    padding: float = 0.6  # dlib get_face_chip padding; 0.25 = tight dlib chip, larger = FFHQ-like head+hair context
    # the part of a crop that lies outside the photo: "reflect" = FFHQ's reflected, blurred, faded padding;
    # "black" = dlib's own chip (black wedges a fine-tune learns as part of the target; for old crops)
    fill: str = "reflect"
    target_phrase: str = "wearing round glasses"  # caption phrase that is the attribute being taught
    require_target: bool = False  # reject captions without the target phrase
    multi_face: str = "largest"  # several faces: keep the "largest" or "reject" the image
    extra_face_min_score: float = 0.5  # a detection counts as a face (multi-face policy) only at this HOG score
    min_face_px: int = 64  # detected face box side below this (source pixels) -> face_too_small
    min_det_score: float = 0.0  # dlib HOG score below this -> low_det_score
    upsample: int | None = None  # HOG upsampling; None = 1 for images whose short side < 400 px, else 0
    detect_max_side: int = 1024  # detection runs on a copy downscaled to this long side (speed on big photos)
    min_blur: float = 20.0  # Laplacian variance of the 256-px grey chip below this -> blurry
    dedup_max_distance: int = 4  # pHash Hamming distance <= this between crops -> near_duplicate (-1 = off)
    # images above this are rejected unread (decompression bombs, and memory: the issue measured 1.5 GB per worker
    # at 81 MP, ~18 B/pixel; 25 MP is ~0.45 GB by that slope and still takes a 24 MP (6000x4000) camera photo)
    max_pixels: int = 25_000_000
    max_file_bytes: int = 200_000_000  # files larger than this are rejected unread
    caption_min_chars: int = 3
    caption_max_chars: int = 400
    forbidden_words: list[str] = field(default_factory=list)  # whole-word, case-insensitive
    require_caption: bool = True  # images without any caption -> missing_caption
    workers: int = 0  # processes; 0 = all cores
    png_compress_level: int = 1  # crops are intermediate data: fast PNG beats small PNG
    qa_tolerance: float = 0.0  # fraction of manifest rows allowed to break a per-row expectation
    min_kept: int = 1  # QA: fewer kept images than this fails the stage
    min_kept_fraction: float = 0.0  # QA: kept/input below this fails the stage

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> SpfError:
            return SpfError(f"PrepareConfig.{name}={getattr(self, name)!r}: {why}")

        if not 16 <= self.size <= 4096:
            raise bad("size", "must be between 16 and 4096")
        if not 0.0 <= self.padding <= 2.0:
            raise bad("padding", "must be between 0 and 2")
        if self.fill not in FILL_MODES:
            raise bad("fill", f"must be one of {FILL_MODES}")
        if self.multi_face not in MULTI_FACE_POLICIES:
            raise bad("multi_face", f"must be one of {MULTI_FACE_POLICIES}")
        if self.upsample is not None and not 0 <= self.upsample <= 3:
            raise bad("upsample", "must be 0..3 or null")
        for name in ("min_face_px", "max_pixels", "max_file_bytes", "caption_max_chars", "detect_max_side"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be positive")
        if self.caption_min_chars < 0 or self.caption_min_chars > self.caption_max_chars:
            raise bad("caption_min_chars", "must be >= 0 and <= caption_max_chars")
        if self.workers < 0:
            raise bad("workers", "must be >= 0")
        if not 0 <= self.png_compress_level <= 9:
            raise bad("png_compress_level", "must be 0..9")
        for name in ("qa_tolerance", "min_kept_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, "must be between 0 and 1")
        if self.min_kept < 0:
            raise bad("min_kept", "must be >= 0")
        if not self.target_phrase.strip() or "," in self.target_phrase:
            raise bad("target_phrase", "must be a non-empty phrase without commas")
        if not isinstance(self.forbidden_words, list) or not all(
            isinstance(w, str) and w.strip() for w in self.forbidden_words
        ):
            raise bad("forbidden_words", "must be a list of non-empty strings")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> PrepareConfig:
        """Unknown keys are an error (a typo must not silently fall back to a default)."""
        if not isinstance(data, dict):
            raise SpfError(f"{source}: expected a mapping of PrepareConfig fields, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpfError(f"{source}: unknown PrepareConfig field(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**data)
        except ValidationError as e:
            raise SpfError(f"{source}: {_format(e)}") from None
        except TypeError as e:
            raise SpfError(f"{source}: {e}") from e

    @classmethod
    def from_file(cls, path: str | Path) -> PrepareConfig:
        """YAML or JSON; a prepare section (`prepare:`) may wrap the fields so one file can hold all stages."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SpfError(f"{path}: cannot read config: {e}") from e
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as e:  # yaml/json syntax errors
            raise SpfError(f"{path}: not valid {path.suffix.lstrip('.') or 'yaml'}: {str(e).splitlines()[0]}") from e
        data = data or {}
        if isinstance(data, dict) and isinstance(data.get("prepare"), dict):
            data = data["prepare"]
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _format(e: ValidationError) -> str:
    """``size=100.5: Input should be a valid integer, ...``: the field, the bad value, what is wrong."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        parts.append(f"PrepareConfig.{loc}={err.get('input')!r}: {err['msg']}")
    return "; ".join(parts)


@dataclass
class PrepareResult:
    """What the stage did; written as prepare_summary.json and returned to the caller."""

    input_dir: str
    output_dir: str
    n_input: int
    n_kept: int
    n_rejected: int
    rejected_by_reason: dict[str, int]
    qa_passed: bool
    qa_failed: list[str]  # names of failed expectations ("type(column)")
    manifest_path: str
    rejected_path: str
    report_path: str  # qa/report.html
    data_docs_path: str  # qa/data_docs/index.html
    config: dict[str, Any]
    seconds: float
    images_per_s: float
    lineage: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
