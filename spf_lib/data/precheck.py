"""The prepare stage's fast input checks, without face detection: run before data is versioned.

Every input goes through what ``prepare`` checks before it looks for a face — the path stays inside the folder,
the file decodes as an image within the size guards, the caption exists and follows the caption rules of the
``PrepareConfig`` — so that ``spf data add`` refuses a folder the pipeline would reject, seconds after the command
starts and before anything is committed or pushed. Faces are the pipeline's job (seconds per image, dlib).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from spf_lib.data.config import PrepareConfig
from spf_lib.errors import SpfError


@dataclass
class PrecheckResult:
    n_inputs: int
    n_images_ok: int
    problems: list[str] = field(default_factory=list)  # "<file>: <reason> (<detail>)", one per bad input

    @property
    def ok(self) -> bool:
        return not self.problems and self.n_images_ok > 0


def precheck(folder: str | Path, cfg: PrepareConfig | None = None) -> PrecheckResult:
    """Check every input of ``folder``; raise ``SpfError`` for a folder that is not one (or a broken captions file,
    which names its line)."""
    from spf_lib.data.captions import parse_caption, read_sidecar
    from spf_lib.data.images import Rejected, load_rgb
    from spf_lib.data.inputs import discover

    cfg = cfg or PrepareConfig()
    root = Path(folder)
    if not root.is_dir():
        raise SpfError(f"{folder}: not a folder")
    items, _ignored = discover(root.resolve())
    if not items:
        raise SpfError(f"{folder}: no images found (png/jpg/webp/... with captions.jsonl, captions.csv or .txt "
                       "sidecars)")
    problems: list[str] = []
    for item in items:
        try:
            if item.reject is not None or item.path is None:
                raise Rejected(*(item.reject or ("invalid_path", "")))
            load_rgb(item.path, max_pixels=cfg.max_pixels, max_file_bytes=cfg.max_file_bytes)
            raw = read_sidecar(item.path) or item.manifest_caption
            if raw is not None or cfg.require_caption:
                parse_caption(raw, target_phrase=cfg.target_phrase, min_chars=cfg.caption_min_chars,
                              max_chars=cfg.caption_max_chars, forbidden=cfg.forbidden_words,
                              require_target=cfg.require_target)
        except Rejected as r:
            problems.append(f"{item.source_path}: {r.reason}" + (f" ({r.detail})" if r.detail else ""))
        except OSError as e:  # unreadable file (permissions, a dangling path)
            problems.append(f"{item.source_path}: unreadable ({type(e).__name__}: {e.strerror or e})")
    return PrecheckResult(n_inputs=len(items), n_images_ok=len(items) - len(problems), problems=problems)
