"""Captions: where they come from, how they are normalised, split into phrases and checked.

Convention (shared with the synthetic world): a caption is comma-separated phrases,
``a photo of a woman, blonde hair, blue shirt, curtain background, wearing round glasses``. The phrase equal to the
configured target phrase (case/whitespace-insensitive) is the target; every other phrase is a base phrase.

Sources, highest precedence first: sidecar ``<image>.txt`` (``x.png.txt`` or ``x.txt``), ``captions.jsonl``
(``{"file": "images/x.png", "caption": "..."}``), ``captions.csv`` (header ``file,caption``). Files are read as bytes
and decoded with ``surrogateescape`` so one bad byte rejects one caption, not the whole dataset.
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from spf_lib.data.images import Rejected
from spf_lib.errors import SpfError

JSONL_NAME = "captions.jsonl"
CSV_NAME = "captions.csv"
_WS = re.compile(r"\s+")
_SURROGATE = re.compile("[\udc80-\udcff]")


@dataclass
class RawCaption:
    text: str  # decoded with surrogateescape: lone surrogates mark bytes that were not UTF-8
    source: str  # "sidecar", "jsonl:<line>", "csv:<line>"


@dataclass
class ParsedCaption:
    caption: str
    base_phrases: list[str]
    target_phrase: str | None


def _decode(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="surrogateescape")


def read_manifest_captions(root: Path) -> dict[str, RawCaption]:
    """Captions listed in captions.jsonl / captions.csv, keyed by the path string as written (not yet checked).

    A structurally broken line (not JSON, no "file") is an error naming the line: the file is ours to fix, and
    guessing which image it meant would be worse than stopping.
    """
    out: dict[str, RawCaption] = {}
    csv_path = root / CSV_NAME
    if csv_path.is_file() and not csv_path.is_symlink():
        reader = csv.reader(io.StringIO(_decode(csv_path.read_bytes()), newline=""))
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["file", "caption"]:
            raise SpfError(f"{csv_path}: first row must be the header 'file,caption', got {header!r}")
        for lineno, row in enumerate(reader, start=2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) != 2:
                raise SpfError(f"{csv_path}:{lineno}: expected 2 columns (file,caption), got {len(row)}")
            _put(out, row[0].strip(), RawCaption(row[1], f"csv:{lineno}"), csv_path)
    jsonl_path = root / JSONL_NAME
    if jsonl_path.is_file() and not jsonl_path.is_symlink():
        for lineno, line in enumerate(_decode(jsonl_path.read_bytes()).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SpfError(f"{jsonl_path}:{lineno}: not valid JSON ({e.msg})") from e
            if not isinstance(rec, dict) or not isinstance(rec.get("file"), str) or not rec["file"].strip():
                raise SpfError(f"{jsonl_path}:{lineno}: expected an object with a non-empty string 'file'")
            cap = rec.get("caption")
            if cap is not None and not isinstance(cap, str):
                raise SpfError(f"{jsonl_path}:{lineno}: 'caption' must be a string, got {type(cap).__name__}")
            _put(out, rec["file"].strip(), RawCaption(cap or "", f"jsonl:{lineno}"), jsonl_path)
    return out


def _put(out: dict[str, RawCaption], key: str, cap: RawCaption, path: Path) -> None:
    """A file listed twice with different captions is an error naming both lines (the last one used to win
    silently); listing it twice with the same caption is harmless."""
    if key in out and out[key].text != cap.text:
        raise SpfError(f"{path}: {key!r} is listed twice with different captions ({out[key].source} and "
                       f"{cap.source}); keep one")
    out.setdefault(key, cap)


def read_sidecar(image: Path) -> RawCaption | None:
    """``x.png.txt`` or ``x.txt`` beside the image; a sidecar that is a symlink is ignored (never followed)."""
    for cand in (image.with_name(image.name + ".txt"), image.with_suffix(".txt")):
        if cand.is_file() and not cand.is_symlink():
            return RawCaption(_decode(cand.read_bytes()), "sidecar")
    return None


def parse_caption(raw: RawCaption | None, *, target_phrase: str, min_chars: int, max_chars: int,
                  forbidden: list[str], require_target: bool) -> ParsedCaption:
    """Normalise and check one caption; raise `Rejected` with the rule it breaks."""
    if raw is None:
        raise Rejected("missing_caption", "no sidecar .txt and no entry in captions.jsonl/csv")
    if _SURROGATE.search(raw.text):
        raise Rejected("caption_not_utf8", f"caption ({raw.source}) contains bytes that are not UTF-8")
    text = unicodedata.normalize("NFC", raw.text)
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)  # control chars -> space
    text = _WS.sub(" ", text).strip()
    if not text:
        raise Rejected("empty_caption", f"caption ({raw.source}) is empty")
    if len(text) < min_chars:
        raise Rejected("caption_too_short", f"{len(text)} chars < {min_chars}")
    if len(text) > max_chars:
        raise Rejected("caption_too_long", f"{len(text)} chars > {max_chars}")
    low = text.lower()
    for word in forbidden:
        if re.search(rf"(?<!\w){re.escape(word.lower().strip())}(?!\w)", low):
            raise Rejected("forbidden_word", f"caption contains {word!r}")
    phrases = [p.strip() for p in text.split(",")]
    phrases = [p for p in phrases if p]
    key = _key(target_phrase)
    target = next((p for p in phrases if _key(p) == key), None)
    if target is None and require_target:
        raise Rejected("missing_target_phrase", f"caption lacks the target phrase {target_phrase!r}")
    base = [p for p in phrases if _key(p) != key]
    return ParsedCaption(caption=", ".join(phrases), base_phrases=base, target_phrase=target)


def _key(phrase: str) -> str:
    return _WS.sub(" ", phrase).strip().lower()
