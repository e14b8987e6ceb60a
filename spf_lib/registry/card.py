"""The model card: one page that answers "what is this model, what made it, how good is it".

It is written from the same scrubbed tags that go to the registry, so it cannot carry a secret the tags don't.
``README.md`` is the card as text; ``card.html`` is the same card with the summary grid inlined, because MLflow's
artifact preview shows one file in a sandboxed frame where a relative image link cannot load. The summary grid
compares original and tuned on the evaluation's own prompts and seeds (base prompts first, then target prompts).
Its first lines become the model version's description.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import tempfile
from pathlib import Path

from spf_lib.registry.metrics import Metrics

log = logging.getLogger(__name__)

CARD_DIR = "model_card"
GRID_NAME = "summary_grid.png"
#: Shown first in the card and in the version description; the rest of the metrics follow in the card only.
HEADLINE = ("pollution", "clip_t_gain", "clip_t", "target_rate", "id_sim", "ssim", "lpips")
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp")
MAX_ROWS = 12


def _metric_rows(metrics: Metrics, keys) -> list[str]:
    rows = []
    for k in keys:
        if k in metrics.values and metrics.values[k] is not None:
            rows.append(f"| {k} | {metrics.values[k]:.4g} |")
        elif k in metrics.values or k in metrics.unavailable:
            rows.append(f"| {k} | unavailable: {metrics.unavailable.get(k, 'no value')} |")
    return rows


def summary(name: str, tags: dict[str, str], metrics: Metrics) -> str:
    """The card's opening: what, from which data, how good (markdown; the model version's description)."""
    rev, data_hash = tags.get("data_rev", "unknown"), tags.get("data_hash", "unknown")
    lines = [f"**{tags.get('method', 'unknown')}** adapter on `{tags.get('base_model', 'unknown')}`, trained on "
             f"data rev `{rev[:12]}` (DVC hash `{data_hash}`) by pipeline run `{tags.get('kfp_run_id', 'unknown')}`."]
    rows = _metric_rows(metrics, HEADLINE)
    if rows:
        lines += ["", "| metric | value |", "|---|---|", *rows]
    lines += ["", f"Full model card with the summary grid: `{CARD_DIR}/card.html` in the source run."]
    return "\n".join(lines)


def render_card(name: str, tags: dict[str, str], metrics: Metrics, *, has_grid: bool, report: str | None) -> str:
    lines = [f"# Model card: {name}", "", summary(name, tags, metrics).rsplit("\n\nFull model card", 1)[0], ""]
    if has_grid:
        lines += ["## Summary grid", "", "Original vs tuned, same prompt and seed (base prompts: should not change; "
                  "target prompts: should show the target).", "", f"![summary grid]({GRID_NAME})", ""]
    lines += ["## Lineage", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in sorted(tags.items())]
    lines += ["", "## Evaluation", ""]
    if metrics.values or metrics.unavailable:
        lines += ["| metric | value |", "|---|---|",
                  *_metric_rows(metrics, sorted(set(metrics.values) | set(metrics.unavailable)))]
    else:
        lines.append("No evaluation metrics were given at registration.")
    if report:
        lines += ["", f"The full evaluation report is `{report}` in the source run."]
    lines += ["", "## Use", "", "```python", "import mlflow",
              f"model = mlflow.pyfunc.load_model('models:/{name}@champion')",
              "png_bytes = model.predict({'prompt': ['a portrait photo of a person']})[0]", "```", ""]
    return "\n".join(lines)


def card_html(markdown: str, grid_png: bytes | None) -> str:
    """The card as one HTML file (tables and the grid inlined): what MLflow's artifact preview renders."""
    out, table, code = [], [], False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                table.append(cells)
            continue
        if table:
            head, *body = table
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table>")
            table = []
        if line.startswith("```"):
            out.append("</pre>" if code else "<pre>")
            code = not code
        elif code:
            out.append(html.escape(line))
        elif line.startswith("!["):
            if grid_png:
                out.append("<img alt='summary grid' src='data:image/png;base64,"
                           + base64.b64encode(grid_png).decode("ascii") + "'>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    style = ("body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>" \
           + "\n".join(out) + "</body></html>"


def _inline(text: str) -> str:
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def summary_grid(eval_dir: Path, out: Path, max_rows: int = MAX_ROWS) -> bool:
    """Original | tuned for the evaluation's prompts and seeds, labelled; False when the evaluation has no pairs."""
    from PIL import Image

    from spf_lib.eval.grid import labelled_grid

    orig_dir, tuned_dir = eval_dir / "images" / "original", eval_dir / "images" / "tuned"
    if not (orig_dir.is_dir() and tuned_dir.is_dir()):
        return False
    keys = sorted(p.stem for p in orig_dir.iterdir() if p.suffix.lower() in _IMAGE_EXT
                  and (tuned_dir / p.name).is_file())
    if not keys:
        return False
    info: dict = {}
    if (eval_dir / "pairs.json").is_file():
        try:
            info = json.loads((eval_dir / "pairs.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            info = {}
    keys.sort(key=lambda k: (info.get(k, {}).get("kind") != "base", k))
    base = [k for k in keys if info.get(k, {}).get("kind") == "base"]
    other = [k for k in keys if k not in base]
    half = max_rows // 2
    chosen = (base[:half] + other[:max_rows - min(len(base), half)])[:max_rows] if base and other else keys[:max_rows]
    rows = []
    for k in chosen:
        meta = info.get(k, {})
        label = f"{meta.get('kind', '')}: {meta.get('prompt', k)}\nseed {meta.get('seed', '?')}" if meta else k
        rows.append((label, [Image.open(orig_dir / f"{k}.png"), Image.open(tuned_dir / f"{k}.png")]))
    labelled_grid(rows, ["original", "tuned"], title="original vs tuned (same prompt, same seed)").save(out)
    return True


def log_model_card(client, run_id: str, *, name: str, tags: dict[str, str], metrics: Metrics,
                   eval_dir: Path | None) -> str:
    """Write the card into ``run_id``'s ``model_card/``; return its summary (the model version's description)."""
    from spf_lib.eval.mlflow_log import SINGLE_FILE_REPORT, log_report

    report = None
    existing = {a.path for a in client.list_artifacts(run_id, "eval")}
    if f"eval/{SINGLE_FILE_REPORT}" in existing:  # the evaluation already attached it to this run
        report = f"eval/{SINGLE_FILE_REPORT}"
    elif eval_dir and log_report(client, run_id, eval_dir, artifact_path=f"{CARD_DIR}/report"):
        report = f"{CARD_DIR}/report/{SINGLE_FILE_REPORT}"
    with tempfile.TemporaryDirectory(prefix="spf-card-") as tmp:
        d = Path(tmp)
        has_grid = bool(eval_dir) and summary_grid(eval_dir, d / GRID_NAME)
        text = render_card(name, tags, metrics, has_grid=has_grid, report=report)
        (d / "README.md").write_text(text, encoding="utf-8")
        (d / "card.html").write_text(card_html(text, (d / GRID_NAME).read_bytes() if has_grid else None),
                                     encoding="utf-8")
        client.log_artifacts(run_id, str(d), artifact_path=CARD_DIR)
    return summary(name, tags, metrics)
