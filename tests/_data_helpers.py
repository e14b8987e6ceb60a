"""Shared fixtures for the data-stage tests: real public-domain portraits and small dataset builders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def grace_hopper_path() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def grace_hopper() -> np.ndarray:
    from PIL import Image

    with Image.open(grace_hopper_path()) as im:
        return np.asarray(im.convert("RGB"))


def save_png(arr: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def write_jsonl(root: Path, entries: dict[str, str]) -> None:
    with open(root / "captions.jsonl", "w", encoding="utf-8") as f:
        for file, cap in entries.items():
            f.write(json.dumps({"file": file, "caption": cap}) + "\n")


def two_portraits(root: Path) -> Path:
    """The two real faces: astronaut captioned in captions.jsonl, Grace Hopper by a sidecar .txt."""
    save_png(astronaut(), root / "images" / "astronaut.png")
    shutil.copy(grace_hopper_path(), root / "images" / "grace.jpg")
    (root / "images" / "grace.jpg.txt").write_text(
        "a photo of a woman,  navy uniform, dark background, Wearing Round Glasses", encoding="utf-8")
    write_jsonl(root, {"images/astronaut.png": "a photo of a woman, short hair, spacesuit, flag background"})
    return root


def read_rejected(out: Path) -> dict[str, tuple[str, str]]:
    import csv

    with open(out / "rejected.csv", newline="", encoding="utf-8") as f:
        return {r["source_path"]: (r["reason"], r["detail"]) for r in csv.DictReader(f)}
