"""The frozen face encoder Celeb Basis conditions on, behind one small protocol.

Why a protocol here and not a second copy of face code: detection, alignment and the dlib / ONNX identity models live
in ``spf_lib.eval.faces`` (the evaluation stage measures ID similarity with the same models), so training and
evaluation see faces identically. This module only adapts that analyzer to ``encode(images) -> (N, D)``,
L2-normalised, and offers a registry so other encoders (or test stand-ins) can be plugged in by name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from spf_lib.errors import SpfError


class FaceIdentityEncoder(Protocol):
    name: str

    def encode(self, images: list[Any]) -> Any:
        """PIL images → (N, D) float32 tensor, each row L2-normalised."""


_REGISTRY: dict[str, Callable[[], FaceIdentityEncoder]] = {}
MIN_FACE_IMAGE = 256   # = EvalConfig.id_min_size's default


def register_face_encoder(name: str, factory: Callable[[], FaceIdentityEncoder]) -> None:
    """Make ``face_encoder=name`` resolve to ``factory()`` (used for extra encoders and test stand-ins)."""
    _REGISTRY[name] = factory


class AnalyzerEncoder:
    """dlib (128-d) or an ArcFace/CosFace ONNX file (512-d), via the evaluation stage's FaceAnalyzer."""

    def __init__(self, spec: str) -> None:
        try:
            from spf_lib.eval.faces import FaceAnalyzer
        except ImportError as e:  # pragma: no cover - only before the eval stage is merged
            raise SpfError(f"face_encoder={spec!r}: spf_lib.eval.faces is not available ({e})") from None
        self.name = spec
        self._analyzer = FaceAnalyzer(spec)

    def encode(self, images: list[Any]) -> Any:
        import numpy as np
        import torch

        from spf_lib.eval.identity import upscale

        rows = []
        for i, im in enumerate(images):
            # small crops (the small world's 64 px) are upscaled as the evaluation does, so dlib finds the face
            res = self._analyzer.analyze(upscale(im, MIN_FACE_IMAGE))
            if res.embedding is None:
                where = getattr(im, "filename", "") or f"image {i}"
                raise SpfError(f"{where}: {res.reason} (face_encoder={self.name}); Celeb Basis needs a face per photo")
            rows.append(np.asarray(res.embedding, dtype=np.float32))
        x = torch.from_numpy(np.stack(rows))
        return torch.nn.functional.normalize(x, dim=1)


def make_face_encoder(spec: str) -> FaceIdentityEncoder:
    """``spec``: a registered name, ``dlib``, or a path to an .onnx ArcFace/CosFace model."""
    if spec in _REGISTRY:
        return _REGISTRY[spec]()
    if spec == "dlib":
        return AnalyzerEncoder(spec)
    if spec.lower().endswith(".onnx"):
        if not Path(spec).is_file():
            raise SpfError(f"celeb_basis.face_encoder={spec!r}: ONNX file does not exist")
        return AnalyzerEncoder(spec)
    known = ", ".join(["dlib", "<path>.onnx", *_REGISTRY])
    raise SpfError(f"celeb_basis.face_encoder={spec!r}: expected one of {known}")
