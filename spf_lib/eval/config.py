"""EvalConfig: everything one evaluation run depends on, validated up front so no GPU time is spent on a typo."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from spf_lib.errors import SpfError

#: Default weights of the pollution components (see spf_lib/eval/pollution.py for what each one measures).
DEFAULT_POLLUTION_WEIGHTS: dict[str, float] = {
    "identity": 1.0, "clip_i": 1.0, "ssim": 1.0, "lpips": 1.0, "pixel": 0.5,
}


@dataclass
class EvalConfig:
    """One evaluation: base model + adapter → original/tuned images on a fixed eval set → metrics and a report."""

    base_model: str
    adapter_dir: str | Path
    output_dir: str | Path
    #: None = the built-in portrait set; or a YAML/JSON file, a mapping, or an EvalSet.
    eval_set: Any = None
    #: CLIP for CLIP-T/CLIP-I: local folder, hub id or s3:// prefix. None → those metrics are "unavailable".
    clip_model: str | None = None
    #: Attribute probes (`spf_lib/world/probes.py` folder) → target_rate, probe_pollution, ...; None = not measured.
    probes: str | None = None
    #: Folder of photos of the trained identity; enables ``id_ref_sim`` (tuned images vs these faces).
    reference_faces_dir: str | Path | None = None
    #: "dlib" (shipped models) or a path to an ArcFace/CosFace-style ONNX file (112x112 RGB in, embedding out).
    face_encoder: str = "dlib"
    #: Reference similarity: images whose short side is below this are upscaled before face detection (dlib's HOG
    #: detector needs faces of ~80 px; 64-px generations hold ~30-px faces). 0 = analyse at native size.
    id_min_size: int = 256
    #: Reference similarity fallback: a generation where dlib detects no face is read from a centred square of
    #: this fraction of the short side (portraits are centre-framed); 0 = no fallback (id_ref_fallback_rate says how
    #: often it was used). The small world's 64-px generations need it: HOG finds < 10 % of their faces.
    id_fallback_box: float = 0.0
    #: ONNX LPIPS model (two images in [-1, 1], NCHW → distance); None → lpips unavailable.
    lpips_model: str | None = None
    #: ONNX image feature extractor for FID (NCHW in [0, 1] → features); None → fid unavailable.
    fid_model: str | None = None
    num_inference_steps: int = 20
    guidance_scale: float = 7.5
    #: Image size; None = the model's default (unet.sample_size * vae factor).
    resolution: int | None = None
    batch_size: int = 4
    device: str = "cpu"
    dtype: str = "float32"
    pollution_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_POLLUTION_WEIGHTS))
    #: MLflow: log grids/table/metrics into this run; without it, only into an already active run.
    mlflow_run_id: str | None = None
    log_mlflow: bool = True
    #: False: report.html links the PNGs under images/ (text only; see spf_lib/eval/report.py for the single-file
    #: copy KFP and MLflow show). True: the old self-contained file with data URIs.
    report_embed_images: bool = False
    #: TEST ONLY: accept backbones whose weights look untrained (tiny random CLIP) to exercise code paths.
    allow_untrained_backbones: bool = False
    cache_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.base_model, str) or not self.base_model.strip():
            raise SpfError("EvalConfig.base_model: empty; give a local folder, hub id or s3:// prefix")
        for name in ("adapter_dir", "output_dir"):
            v = getattr(self, name)
            if v is None or not str(v).strip():
                raise SpfError(f"EvalConfig.{name}: empty")
            setattr(self, name, Path(v))
        if self.reference_faces_dir is not None:
            self.reference_faces_dir = Path(self.reference_faces_dir)
        if self.probes is not None and not (Path(self.probes) / "probes.json").is_file():
            raise SpfError(f"EvalConfig.probes={self.probes!r}: no probes.json there; give a probes folder or null")
        for name, lo in (("num_inference_steps", 1), ("batch_size", 1), ("id_min_size", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise SpfError(f"EvalConfig.{name}={v!r}: expected an integer >= {lo}")
        if self.resolution is not None and (not isinstance(self.resolution, int) or self.resolution < 8
                                            or self.resolution % 8):
            raise SpfError(f"EvalConfig.resolution={self.resolution!r}: expected a multiple of 8 (or null)")
        if not isinstance(self.id_fallback_box, (int, float)) or not 0 <= self.id_fallback_box <= 1:
            raise SpfError(f"EvalConfig.id_fallback_box={self.id_fallback_box!r}: expected a fraction in [0, 1]")
        if not isinstance(self.guidance_scale, (int, float)) or self.guidance_scale < 0:
            raise SpfError(f"EvalConfig.guidance_scale={self.guidance_scale!r}: expected a number >= 0")
        if self.dtype not in ("float32", "fp32", "float16", "fp16", "bfloat16", "bf16"):
            raise SpfError(f"EvalConfig.dtype={self.dtype!r}: expected float32, float16 or bfloat16")
        if not isinstance(self.face_encoder, str) or not self.face_encoder.strip():
            raise SpfError("EvalConfig.face_encoder: give 'dlib' or a path to an .onnx file")
        w = {**DEFAULT_POLLUTION_WEIGHTS, **(self.pollution_weights or {})}
        for k, v in w.items():
            if k not in DEFAULT_POLLUTION_WEIGHTS:
                raise SpfError(f"EvalConfig.pollution_weights: unknown component {k!r}; "
                               f"known: {', '.join(DEFAULT_POLLUTION_WEIGHTS)}")
            if not isinstance(v, (int, float)) or v < 0:
                raise SpfError(f"EvalConfig.pollution_weights.{k}={v!r}: expected a number >= 0")
        self.pollution_weights = {k: float(v) for k, v in w.items()}

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> EvalConfig:
        """Read a YAML/JSON config; ``overrides`` (e.g. CLI options that were given) win over the file."""
        p = Path(path)
        if not p.is_file():
            raise SpfError(f"eval config {p}: file does not exist")
        try:
            text = p.read_text(encoding="utf-8")
            if p.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text) or {}
        except Exception as e:
            raise SpfError(f"eval config {p}: cannot parse ({str(e).splitlines()[0]})") from e
        if not isinstance(data, dict):
            raise SpfError(f"eval config {p}: expected a mapping of EvalConfig fields")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpfError(f"eval config {p}: unknown field(s) {', '.join(unknown)}")
        # A relative eval_set path in the file is relative to the file, not to the current directory.
        es = data.get("eval_set")
        if isinstance(es, str) and not Path(es).is_absolute():
            data["eval_set"] = str((p.parent / es).resolve())
        data.update({k: v for k, v in overrides.items() if v is not None})
        missing = [k for k in ("base_model", "adapter_dir", "output_dir") if k not in data]
        if missing:
            raise SpfError(f"eval config {p}: missing {', '.join(missing)} (give them in the file or as options)")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        es = self.eval_set
        d["eval_set"] = es if isinstance(es, (str, dict, type(None))) else str(es) if isinstance(es, Path) \
            else getattr(es, "name", repr(es))
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
