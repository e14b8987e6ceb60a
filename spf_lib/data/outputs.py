"""Writing the prepare output folder: manifest.parquet, rejected.csv, qa/, prepare_summary.json.

Called inside the temporary folder that `atomic_dir` renames into place, so paths are relative to that folder and
stay valid after the rename.
"""

from __future__ import annotations

import csv
import html
from collections import Counter
from pathlib import Path
from typing import Any

from spf_lib.data.config import PrepareConfig, PrepareResult

MANIFEST_COLUMNS = [
    "id", "source_path", "sha256", "crop_path", "box", "landmarks", "det_score", "blur", "caption",
    "base_phrases", "target_phrase", "caption_source", "img_w", "img_h", "box_x0", "box_y0", "box_x1", "box_y1",
    "face_px", "n_faces", "phash", "original_mode", "exif_rotated",
]


def manifest_frame(kept: list[dict[str, Any]]):
    """Typed frame with the documented columns, also when nothing was kept (downstream reads the schema)."""
    import pandas as pd

    df = pd.DataFrame([{k: r[k] for k in MANIFEST_COLUMNS} for r in kept], columns=MANIFEST_COLUMNS)
    for col in ("img_w", "img_h", "box_x0", "box_y0", "box_x1", "box_y1", "face_px", "n_faces"):
        df[col] = df[col].astype("int64")
    for col in ("det_score", "blur"):
        df[col] = df[col].astype("float64")
    df["exif_rotated"] = df["exif_rotated"].astype("bool")
    return df


def _write_parquet(df, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("id", pa.string()), ("source_path", pa.string()), ("sha256", pa.string()), ("crop_path", pa.string()),
        ("box", pa.list_(pa.int64())), ("landmarks", pa.list_(pa.list_(pa.int64()))),
        ("det_score", pa.float64()), ("blur", pa.float64()), ("caption", pa.string()),
        ("base_phrases", pa.list_(pa.string())), ("target_phrase", pa.string()), ("caption_source", pa.string()),
        ("img_w", pa.int64()), ("img_h", pa.int64()), ("box_x0", pa.int64()), ("box_y0", pa.int64()),
        ("box_x1", pa.int64()), ("box_y1", pa.int64()), ("face_px", pa.int64()), ("n_faces", pa.int64()),
        ("phash", pa.string()), ("original_mode", pa.string()), ("exif_rotated", pa.bool_()),
    ])
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    pq.write_table(table, path)


def write_all(tmp: Path, final: Path, root: Path, kept: list[dict], rejected: list[dict], cfg: PrepareConfig, *,
              n_input: int, ignored: int, seconds: float, lineage: dict[str, str]) -> PrepareResult:
    from spf_lib.data.qa import run_qa
    from spf_lib.io import write_json_atomic

    df = manifest_frame(kept)
    _write_parquet(df, tmp / "manifest.parquet")
    with open(tmp / "rejected.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["source_path", "reason", "detail"])
        for r in rejected:
            w.writerow([r["source_path"], r["reason"], r["detail"]])
    qa_dir = tmp / "qa"
    qa = run_qa(df, tmp, qa_dir, cfg, n_input=n_input)
    reasons = dict(sorted(Counter(r["reason"] for r in rejected).items()))
    result = PrepareResult(
        input_dir=str(root), output_dir=str(final), n_input=n_input, n_kept=len(kept), n_rejected=len(rejected),
        rejected_by_reason=reasons, qa_passed=qa["success"], qa_failed=qa["failed"],
        manifest_path=str(final / "manifest.parquet"), rejected_path=str(final / "rejected.csv"),
        report_path=str(final / "qa" / "report.html"), data_docs_path=str(final / "qa" / "data_docs" / "index.html"),
        config=cfg.to_dict(), seconds=round(seconds, 3), images_per_s=round(n_input / seconds, 3) if seconds else 0.0,
        lineage=lineage,
    )
    summary = {
        "n_input": n_input, "n_kept": len(kept), "n_rejected": len(rejected), "ignored_files": ignored,
        "rejected_by_reason": reasons, "qa_passed": qa["success"], "qa_failed": qa["failed"],
        "expectations": qa["expectations"],
        "metrics": _metrics(df),
    }
    write_json_atomic(qa_dir / "summary.json", summary)
    (qa_dir / "report.html").write_text(_report_html(result, summary), encoding="utf-8")
    write_json_atomic(tmp / "prepare_summary.json", result.to_dict())
    return result


def _metrics(df) -> dict[str, Any]:
    if df.empty:
        return {}
    out: dict[str, Any] = {}
    for col in ("det_score", "blur", "face_px"):
        s = df[col].astype(float)
        out[col] = {"min": float(s.min()), "median": float(s.median()), "max": float(s.max())}
    out["target_phrase_fraction"] = float(df["target_phrase"].notna().mean())
    out["multi_face_fraction"] = float((df["n_faces"] > 1).mean())
    out["caption_chars_median"] = float(df["caption"].str.len().median())
    return out


def _report_html(result: PrepareResult, summary: dict[str, Any]) -> str:
    """One self-contained page (the KFP UI shows a single HTML file; the GX site needs its static folder)."""
    e = html.escape
    status = "PASSED" if result.qa_passed else "FAILED"
    color = "#1a7f37" if result.qa_passed else "#cf222e"
    reasons = "".join(f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in result.rejected_by_reason.items())
    exps = "".join(
        f"<tr><td style='color:{'#1a7f37' if x['success'] else '#cf222e'}'>{'pass' if x['success'] else 'FAIL'}</td>"
        f"<td>{e(x['name'])}</td><td>{e(str(x.get('unexpected_percent', '')))}</td>"
        f"<td>{e(str(x.get('observed', '')))}</td></tr>"
        for x in summary["expectations"])
    lineage = "".join(f"<li>{e(k)} = <code>{e(v)}</code></li>" for k, v in result.lineage.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>spf prepare QA</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:left}}</style></head><body>
<h1>Portrait data QA: <span style="color:{color}">{status}</span></h1>
<p>{result.n_input} inputs &rarr; {result.n_kept} kept, {result.n_rejected} rejected
({result.images_per_s:.1f} images/s). Input: <code>{e(result.input_dir)}</code></p>
<ul>{lineage}</ul>
<h2>Rejected by reason</h2><table><tr><th>reason</th><th>count</th></tr>{reasons}</table>
<h2>Great Expectations suite over the manifest</h2>
<table><tr><th></th><th>expectation</th><th>unexpected %</th><th>observed</th></tr>{exps}</table>
<p>Full Great Expectations Data Docs: <a href="data_docs/index.html">data_docs/index.html</a>;
rejected inputs: <code>rejected.csv</code>; manifest: <code>manifest.parquet</code>.</p>
</body></html>
"""
