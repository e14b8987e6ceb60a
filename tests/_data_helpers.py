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
        f.writelines(json.dumps({"file": file, "caption": cap}) + "\n" for file, cap in entries.items())


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


def to_jpeg(arr_or_img, path: Path, **save_kw) -> Path:
    from PIL import Image

    img = Image.fromarray(arr_or_img) if isinstance(arr_or_img, np.ndarray) else arr_or_img
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", **save_kw)
    return path


def side_by_side(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    h = max(a.shape[0], b.shape[0])
    canvas = np.full((h, a.shape[1] + b.shape[1], 3), 255, np.uint8)
    canvas[: a.shape[0], : a.shape[1]] = a
    canvas[: b.shape[0], a.shape[1]:] = b
    return canvas


def resized(arr: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR))


class OpenRecorder:
    """Records every path this process opens (sys audit hook "open"), to prove what was and was not touched.

    Audit hooks cannot be removed, so one module-level hook is installed once and switched on/off.
    """

    _instance: OpenRecorder | None = None

    def __init__(self) -> None:
        self.active = False
        self.reads: list[str] = []
        self.writes: list[str] = []

    @classmethod
    def get(cls) -> OpenRecorder:
        import sys

        if cls._instance is None:
            cls._instance = cls()
            sys.addaudithook(cls._instance._hook)
        return cls._instance

    def _hook(self, event: str, args: tuple) -> None:
        if not self.active or event != "open" or not args or not isinstance(args[0], (str, bytes, Path)):
            return
        import os

        path = os.fsdecode(args[0])
        mode = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        writing = any(c in mode for c in "wax+") or bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        (self.writes if writing else self.reads).append(path)


def run_cli(argv: list[str]) -> int:
    """Run `spf ...` through the real entry point (SpfError -> exit 2); return the exit code."""
    from spf_lib.cli.main import main

    try:
        main(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def git(cwd: Path, *args: str) -> str:
    import subprocess

    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_data_repo(base: Path, remote_url: str, **track_kw) -> tuple[Path, list[tuple[str, str]]]:
    """A DVC data repo with two revisions of `data`: v1 = two portraits, v2 = + a mirrored portrait."""
    from spf_lib.data.dvc_versioning import track_dataset

    repo = base / "datarepo"
    two_portraits(repo / "data")
    revs = [track_dataset(repo, remote_url=remote_url, message="data v1", **track_kw)]
    save_png(np.ascontiguousarray(grace_hopper()[:, ::-1]), repo / "data" / "images" / "grace_mirror.png")
    with open(repo / "data" / "captions.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"file": "images/grace_mirror.png",
                            "caption": "a photo of a woman, navy uniform, wearing round glasses"}) + "\n")
    revs.append(track_dataset(repo, remote_url=remote_url, message="data v2", **track_kw))
    return repo, revs
