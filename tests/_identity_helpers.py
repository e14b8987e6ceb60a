"""Fixtures for the identity-method tests: a tiny model on disk, a prepared-dataset folder with identities, and a
stand-in face encoder (test-only) so Celeb Basis tests do not depend on dlib finding faces in synthetic images."""

from __future__ import annotations

from pathlib import Path

STUB_ENCODER = "test-pixels"


class PixelFaceEncoder:
    """Test stand-in: 8x8 grey thumbnail → 64-d L2-normalised vector (different images → different vectors)."""

    name = STUB_ENCODER

    def encode(self, images):
        import numpy as np
        import torch

        rows = [np.asarray(im.convert("L").resize((8, 8)), dtype=np.float32).ravel() - 127.5 for im in images]
        return torch.nn.functional.normalize(torch.from_numpy(np.stack(rows)), dim=1)


def register_stub_encoder() -> None:
    from spf_lib.methods.celeb_basis.encoder import register_face_encoder

    register_face_encoder(STUB_ENCODER, PixelFaceEncoder)


def make_identity_dataset(root: Path, identities: tuple[str, ...] = ("sks",), per_identity: int = 2,
                          size: int = 64, with_column: bool = True) -> Path:
    """crops/*.png + manifest.parquet (the columns training reads, plus ``identity`` when ``with_column``)."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    (root / "crops").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, ident in enumerate(identities):
        rng = np.random.default_rng(100 + k)
        base = rng.uniform(40, 215, 3)
        for j in range(per_identity):
            yy, xx = np.mgrid[0:size, 0:size] / size
            face = np.exp(-((xx - 0.5) ** 2 + (yy - 0.45) ** 2) / (0.05 + 0.02 * k))
            img = np.stack([base[c] * (0.4 + 0.6 * face) + 10 * j for c in range(3)], -1)
            name = f"{ident}-{j}.png"
            Image.fromarray(img.clip(0, 255).astype("uint8")).save(root / "crops" / name)
            row = {"id": f"{ident}-{j}", "crop_path": f"crops/{name}", "caption": "a photo of a person",
                   "base_phrases": ["a photo of a person"], "target_phrase": None}
            if with_column:
                row["identity"] = ident
            rows.append(row)
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


_TINY: dict[str, Path] = {}


def tiny_model(root: Path) -> Path:
    from spf_lib.models.factory import save_tiny_pipeline

    if str(root) not in _TINY:
        _TINY[str(root)] = save_tiny_pipeline(root / "tiny-sd")
    return _TINY[str(root)]


def identity_cfg(tmp: Path, model: Path, data: Path, method: str, **kw):
    from spf_lib.train.config import TrainConfig

    values = dict(method=method, base_model=str(model), data_dir=str(data), output_dir=str(tmp / f"out-{method}"),
                  steps=2, seed=0, lr=1e-2, resolution=64, batch_size=1, device="cpu",
                  validation={"prompts": ["a photo of sks person"], "seeds": [0], "num_inference_steps": 2})
    values.update(kw)
    return TrainConfig.build("test", **values)
