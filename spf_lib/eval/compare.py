"""One picture that shows what fine-tuning did: rows = prompts, columns = original | method A | method B.

WHY one picture: the per-pair HTML report answers "what changed on this prompt"; a person deciding whether a method
works wants the whole story at a glance — the target shows up on target prompts, and base prompts look like the
original's. Every column comes from an evaluation output folder (`spf evaluate`) of the SAME eval set (same prompts
and seeds), so the images in a row share their initial noise and differ only by the adapter.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path

from spf_lib.errors import SpfError

log = logging.getLogger(__name__)

#: Metrics shown under the picture when an evaluation has them (key, label).
SUMMARY_METRICS: tuple[tuple[str, str], ...] = (
    ("target_rate", "target rate (glasses probe, target prompts)"),
    ("target_rate_original", "target rate of the original"),
    ("probe_pollution", "pollution (probe-read base attributes changed)"),
    ("target_leak", "target leak on base prompts"),
    ("red_bg_delta", "red background rise on base prompts"),
    ("smile_delta", "smile rise on base prompts"),
    ("pollution", "pollution (image similarity to the original)"),
    ("clip_t_gain", "CLIP-T gain on target prompts"),
)


def _pairs(eval_dir: Path) -> dict[str, dict]:
    p = eval_dir / "pairs.json"
    if not p.is_file():
        raise SpfError(f"{eval_dir}: no pairs.json; not an evaluation output written by `spf evaluate`")
    return json.loads(p.read_text(encoding="utf-8"))


def _eval_hash(eval_dir: Path) -> str | None:
    try:
        return json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8")).get("eval_set", {}).get("hash")
    except (OSError, ValueError, AttributeError):
        return None


def pick_rows(pairs: dict[str, dict], max_prompts: int, max_seeds: int) -> list[tuple[str, str, list[str]]]:
    """(kind, prompt, [item keys]) for the first prompts of each kind: base rows first, then the same prompts'
    target rows, so a reader compares a base prompt with its target version in the same column."""
    rows = []
    for kind in ("base", "target"):
        by_prompt: dict[int, tuple[str, list[str]]] = {}
        for key, item in sorted(pairs.items()):
            if item.get("kind") != kind:
                continue
            idx = int(key.split("_")[1])
            by_prompt.setdefault(idx, (item["prompt"], []))[1].append(key)
        for idx in sorted(by_prompt)[:max_prompts]:
            prompt, keys = by_prompt[idx]
            keys = sorted(keys, key=lambda k: int(pairs[k]["seed"]))[:max_seeds]
            rows.append((kind, prompt, keys))
    return rows


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font only
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def comparison_picture(columns: dict[str, str | Path], output: str | Path, *, max_prompts: int = 4,
                       max_seeds: int = 2, cell: int = 128, title: str = "") -> dict:
    """Write a labelled PNG grid; ``columns`` maps a column header to an evaluation output folder.

    The first folder's ``images/original`` is the "original" column; each folder's ``images/tuned`` is its own
    column. All folders must hold the same eval set (hash in metrics.json). Returns what was drawn.
    """
    from PIL import Image, ImageDraw

    if not columns:
        raise SpfError("comparison picture: no evaluation folders given")
    dirs = {label: Path(d) for label, d in columns.items()}
    for label, d in dirs.items():
        if not (d / "images" / "tuned").is_dir():
            raise SpfError(f"comparison picture: column {label!r}: {d} has no images/tuned; not an evaluation output")
    hashes = {label: _eval_hash(d) for label, d in dirs.items()}
    if len(set(hashes.values())) > 1:
        raise SpfError(f"comparison picture: the evaluations used different eval sets {hashes}; columns would not "
                       "share prompts and seeds")
    first = next(iter(dirs.values()))
    rows = pick_rows(_pairs(first), max_prompts, max_seeds)
    if not rows:
        raise SpfError(f"comparison picture: {first}/pairs.json lists no base or target prompts")
    heads = [("original", first / "images" / "original")] + [(lbl, d / "images" / "tuned") for lbl, d in dirs.items()]
    n_seeds = max(len(keys) for _, _, keys in rows)
    font, bold = _font(15), _font(20)
    pad, label_w, head_h = 10, 300, 70 if title else 40
    group_w = n_seeds * cell + (n_seeds - 1) * 2
    width = label_w + len(heads) * (group_w + pad) + pad
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    heights = [max(cell, 18 * len(_wrap(probe, p, font, label_w - 2 * pad)) + 24) for _, p, _ in rows]
    height = head_h + sum(h + pad for h in heights) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 8), title, fill="black", font=bold)
    for c, (label, _) in enumerate(heads):
        x = label_w + c * (group_w + pad)
        draw.text((x + group_w / 2, head_h - 14), label, fill="black", font=bold, anchor="ms")
    y = head_h
    for r, ((kind, prompt, keys), h) in enumerate(zip(rows, heights)):
        tag = "base prompt (no target)" if kind == "base" else "target prompt"
        draw.text((pad, y + 2), tag, fill=(30, 90, 180) if kind == "base" else (180, 40, 40), font=font)
        for i, line in enumerate(_wrap(draw, prompt, font, label_w - 2 * pad)):
            draw.text((pad, y + 22 + 18 * i), line, fill="black", font=font)
        for c, (label, folder) in enumerate(heads):
            x = label_w + c * (group_w + pad)
            for s, key in enumerate(keys):
                path = folder / f"{key}.png"
                if not path.is_file():
                    raise SpfError(f"comparison picture: column {label!r}: {path} is missing")
                with Image.open(path) as im:
                    canvas.paste(im.convert("RGB").resize((cell, cell), Image.Resampling.LANCZOS),
                                 (x + s * (cell + 2), y))
        y += h + pad
        if kind == "base" and r + 1 < len(rows) and rows[r + 1][0] == "target":
            draw.line((pad, y - pad // 2, width - pad, y - pad // 2), fill=(160, 160, 160), width=2)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    canvas.save(tmp, format="PNG")
    tmp.replace(output)
    return {"picture": str(output), "columns": [h for h, _ in heads],
            "rows": [{"kind": k, "prompt": p, "seeds": [int(_pairs(first)[x]["seed"]) for x in keys]}
                     for k, p, keys in rows]}


def method_summary(eval_dir: str | Path) -> dict[str, float]:
    """The numbers a person compares methods by (those the evaluation has)."""
    raw = json.loads((Path(eval_dir) / "metrics.json").read_text(encoding="utf-8"))
    return {k: float(raw[k]) for k, _ in SUMMARY_METRICS if isinstance(raw.get(k), (int, float))}


def comparison_html(png: str | Path, summaries: dict[str, dict[str, float]], title: str) -> str:
    """A self-contained page (the image inlined) for the KFP UI, whose HTML viewer shows one file."""
    import base64

    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    keys = [k for k, _ in SUMMARY_METRICS if any(k in s for s in summaries.values())]
    labels = dict(SUMMARY_METRICS)
    head = "".join(f"<th>{html.escape(m)}</th>" for m in summaries)
    body = "".join(
        f"<tr><td>{html.escape(labels[k])}</td>"
        + "".join(f"<td>{s[k]:.3f}</td>" if k in s else "<td>-</td>" for s in summaries.values()) + "</tr>"
        for k in keys)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:16px}table{border-collapse:collapse;margin-top:12px}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
            f"</style></head><body><h2>{html.escape(title)}</h2>"
            f"<img alt='comparison' src='data:image/png;base64,{data}' style='max-width:100%'>"
            f"<table><tr><th>metric</th>{head}</tr>{body}</table></body></html>")
