"""The model card: one markdown page that answers "what is this model, what made it, how good is it".

It is written from the same scrubbed tags that go to the registry, so it cannot carry a secret the tags don't.
The summary grid is the evaluation's own grid image when there is one, else a contact sheet of its images.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from spf_lib.registry.metrics import Metrics
from spf_lib.registry.scrub import looks_secret

log = logging.getLogger(__name__)

CARD_DIR = "model_card"
GRID_NAME = "summary_grid.png"
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp")


def render_card(name: str, tags: dict[str, str], metrics: Metrics, *, has_grid: bool, has_report: bool) -> str:
    lines = [f"# Model card: {name}", "",
             f"Method **{tags.get('method', 'unknown')}** on base model `{tags.get('base_model', 'unknown')}`.", "",
             "## Lineage", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in sorted(tags.items())]
    lines += ["", "## Evaluation", ""]
    if metrics.values or metrics.unavailable:
        lines += ["| metric | value |", "|---|---|"]
        for k in sorted(set(metrics.values) | set(metrics.unavailable)):
            v = metrics.values.get(k)
            lines.append(f"| {k} | {v:.6g} |" if v is not None
                         else f"| {k} | unavailable: {metrics.unavailable.get(k, 'no value')} |")
    else:
        lines.append("No evaluation metrics were given at registration.")
    if has_grid:
        lines += ["", "## Summary grid", "", f"![summary grid]({GRID_NAME})"]
    if has_report:
        lines += ["", "The full evaluation report is `report.html` next to this card."]
    lines += ["", "## Use", "", "```python", "import mlflow",
              f"model = mlflow.pyfunc.load_model('models:/{name}@champion')",
              "png_bytes = model.predict({'prompt': ['a portrait photo of a person']})[0]", "```", ""]
    return "\n".join(lines)


def summary_grid(eval_dir: Path, out: Path, max_images: int = 16) -> bool:
    """Copy the evaluation's grid, or build a contact sheet of its first images; False when there are none."""
    from PIL import Image

    images_dir = eval_dir / "images"
    files = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in _IMAGE_EXT) if images_dir.is_dir() else []
    grids = [p for p in files if "grid" in p.stem.lower()]
    if grids:
        Image.open(grids[0]).convert("RGB").save(out)
        return True
    if not files:
        return False
    tiles = [Image.open(p).convert("RGB") for p in files[:max_images]]
    size = min(256, max(t.width for t in tiles))
    cols = min(4, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * size, rows * size), "white")
    for i, t in enumerate(tiles):
        t.thumbnail((size, size))
        sheet.paste(t, ((i % cols) * size, (i // cols) * size))
    sheet.save(out)
    return True


def log_model_card(client, run_id: str, *, name: str, tags: dict[str, str], metrics: Metrics,
                   eval_dir: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="spf-card-") as tmp:
        d = Path(tmp)
        has_grid = bool(eval_dir) and summary_grid(eval_dir, d / GRID_NAME)
        has_report = False
        if eval_dir and (eval_dir / "report.html").is_file():
            html = (eval_dir / "report.html").read_text(encoding="utf-8", errors="replace")
            if looks_secret(html):
                log.warning("%s/report.html looks like it holds a credential; not attached", eval_dir)
            else:
                (d / "report.html").write_text(html, encoding="utf-8")
                has_report = True
        (d / "README.md").write_text(render_card(name, tags, metrics, has_grid=has_grid, has_report=has_report),
                                     encoding="utf-8")
        client.log_artifacts(run_id, str(d), artifact_path=CARD_DIR)
