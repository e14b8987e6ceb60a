"""The HTML report: per prompt and seed original | tuned | difference heatmap with its scores, and the summary table.

``report.html`` is text only: its images are the PNG files under ``images/`` beside it, linked relatively, so it
opens from the evaluation folder (or a downloaded artifact folder) and a credential scan reads text, not base64
pixels that look like keys. Two viewers show ONE file in a sandboxed frame where relative links cannot resolve:
KFP's HTML artifact viewer and MLflow's artifact preview (a blob: iframe). For them ``inline_images`` builds a
single-file copy AFTER the text was scanned, replacing only links to our own PNG files with data URIs; the copy's
text is the scanned text. A small script at the end records whether every image decoded (``#spf-image-check``),
which the headless-browser test reads back.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

HEADLINE = ("pollution", "id_sim", "id_ref_sim", "clip_t", "clip_t_gain", "clip_i", "ssim", "lpips", "fid")
POLLUTION_KEYS = ("pollution_identity", "pollution_clip_i", "pollution_ssim", "pollution_lpips", "pollution_pixel")
SUMMARY_ORDER = HEADLINE + POLLUTION_KEYS + (
    "id_l2", "id_raw_cos", "id_sim_target", "clip_t_original", "clip_i_target", "ssim_target", "pixel_mae",
)
PAIR_COLUMNS = ("ssim", "pixel_mae", "id_sim", "clip_i", "clip_t", "clip_t_original", "id_ref_sim")

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.na{color:#999}
.pair img{width:192px;height:192px;image-rendering:pixelated;display:block}
.pair td{text-align:center}
.scores td{text-align:right;font-variant-numeric:tabular-nums}
h2{margin-top:1.5em}
.prompt{font-family:monospace;font-size:90%}
"""

CHECK_JS = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var el = document.getElementById('spf-image-check');
  el.setAttribute('data-total', imgs.length);
  el.setAttribute('data-loaded', ok.length);
  el.setAttribute('data-ok', String(imgs.length > 0 && ok.length === imgs.length));
  el.textContent = ok.length + ' of ' + imgs.length + ' images loaded';
});
</script>
"""


def _fmt(v: Any) -> str:
    if v is None:
        return '<span class="na">n/a</span>'
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) >= 1 else f"{v:.4f}"
    return html.escape(str(v))


def _src(out_dir: Path, rel: str, embed: bool) -> str:
    if not embed:
        return html.escape(rel)
    data = (out_dir / rel).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def summary_rows(metrics: dict[str, Any], unavailable: dict[str, str],
                 keys: tuple[str, ...] | None = None) -> list[tuple[str, Any, str]]:
    if keys is None:
        keys = tuple(k for k in SUMMARY_ORDER if k in metrics) + tuple(sorted(
            k for k in metrics if k not in SUMMARY_ORDER and isinstance(metrics[k], (int, float, type(None)))))
    return [(k, metrics[k], unavailable.get(k, "")) for k in keys if k in metrics]


def _table(rows: list[tuple[str, Any, str]], cls: str) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td><td>{html.escape(note)}</td></tr>"
                   for k, v, note in rows)
    return f"<table class='{cls}'><tr><th>metric</th><th>value</th><th>note</th></tr>{body}</table>"


def render_report(out_dir: Path, *, title: str, metrics: dict[str, Any], unavailable: dict[str, str],
                  pollution_detail: dict[str, Any], eval_set: dict[str, Any], items: list[Any],
                  pairs: dict[str, dict[str, Any]], paths: dict[str, dict[str, str]], embed: bool = False,
                  context: dict[str, Any] | None = None) -> str:
    """Return the report HTML. ``paths[kind][key]`` is the relative path of original/tuned/diff images."""
    head = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>")
    parts = [head, f"<h1>{html.escape(title)}</h1>"]
    ctx = {**(context or {}), "eval set": f"{eval_set['name']} v{eval_set['version']} "
                                           f"(sha256 {eval_set['hash'][:12]}…)", "target": eval_set["target"]}
    parts.append("<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                                     for k, v in ctx.items()) + "</table>")
    parts.append("<h2>Summary</h2>" + _table(summary_rows(metrics, unavailable, HEADLINE), "summary"))
    weights = ", ".join(f"{k}={w:g}" for k, w in pollution_detail.get("weights_used", {}).items()) or "none"
    parts.append(f"<h3>Pollution components</h3><p>pollution = {html.escape(pollution_detail['formula'])}; "
                 f"weights used: {html.escape(weights)}</p>"
                 + _table(summary_rows(metrics, unavailable, POLLUTION_KEYS), "pollution"))
    for kind, heading in (("base", "Base prompts (pollution: should NOT change)"),
                          ("target", "Target prompts (should show the target attribute)")):
        parts.append(f"<h2>{heading}</h2>")
        for it in (i for i in items if i.kind == kind):
            row = pairs.get(it.key, {})
            cells = "".join(
                f"<td><img alt='{label} {it.key}' src='{_src(out_dir, paths[label][it.key], embed)}'>{label}</td>"
                for label in ("original", "tuned", "diff"))
            scores = "".join(f"<tr><td>{c}</td><td>{_fmt(row.get(c))}</td></tr>" for c in PAIR_COLUMNS if c in row)
            faces = (f"<tr><td>face original / tuned</td><td>{_fmt(row.get('face_original'))} / "
                     f"{_fmt(row.get('face_tuned'))}</td></tr>") if "face_original" in row else ""
            parts.append(f"<h3 id='{it.key}'><span class='prompt'>{html.escape(it.prompt)}</span> · seed {it.seed}"
                         f"</h3><table class='pair'><tr>{cells}<td><table class='scores'>{scores}{faces}</table>"
                         "</td></tr></table>")
    parts.append("<h2>All metrics</h2>" + _table(summary_rows(metrics, unavailable), "all-metrics"))
    parts.append("<div id='spf-image-check' data-ok='pending'>image check pending</div>")
    parts.append(f"<script type='application/json' id='spf-metrics'>{html.escape(json.dumps(metrics))}</script>")
    parts.append(CHECK_JS + "</body></html>")
    return "\n".join(parts)


_IMG_SRC = re.compile(r"src='([^':]+\.png)'")


def inline_images(html_text: str, base_dir: Path) -> str:
    """A single-file copy of a text-only report: each relative ``src='….png'`` under ``base_dir`` becomes a data URI
    (links that leave ``base_dir`` or name no file stay as they are, and then show as missing)."""
    root = base_dir.resolve()

    def sub(m: re.Match) -> str:
        path = (root / html.unescape(m.group(1))).resolve()
        if not path.is_file() or root not in path.parents:
            return m.group(0)
        return "src='data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii") + "'"

    return _IMG_SRC.sub(sub, html_text)


def pair_grid(original: Any, tuned: Any, diff: Any, gap: int = 4) -> Any:
    """original | tuned | diff side by side in one image (for MLflow's image view)."""
    from PIL import Image

    w, h = original.size
    grid = Image.new("RGB", (3 * w + 2 * gap, h), (255, 255, 255))
    for n, im in enumerate((original, tuned, diff.resize((w, h)))):
        grid.paste(im.convert("RGB"), (n * (w + gap), 0))
    return grid
