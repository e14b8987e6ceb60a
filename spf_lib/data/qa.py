"""Great Expectations suite over the written manifest: the stage's last line of defence.

The face and caption rules already filtered rows; this suite checks what was actually WRITTEN (crop files on disk,
paths, boxes, scores, captions, row counts) so a bug or a changed threshold cannot slip data through unnoticed.
Per-row expectations accept up to ``qa_tolerance`` of bad rows (GX ``mostly``); table-level ones are strict.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any

from spf_lib.data.config import PrepareConfig

log = logging.getLogger(__name__)

SITE_NAME = "spf_prepare_site"  # the ephemeral context already owns "local_site"
SUITE_NAME = "portrait_manifest"
UNSAFE_PATH_RE = r"(?:^/|^\\|^[A-Za-z]:|(?:^|/)\.\.(?:/|$))"


def qa_frame(df, out_dir: Path):
    """The manifest plus facts measured from the written files (crop sizes), without list-valued columns."""
    from PIL import Image

    q = df.drop(columns=["box", "landmarks", "base_phrases"]).copy()
    q["n_landmarks"] = df["landmarks"].map(len).astype("int64") if len(df) else []
    q["n_base_phrases"] = df["base_phrases"].map(len).astype("int64") if len(df) else []
    widths, heights = [], []
    for rel in df["crop_path"]:
        p = out_dir / rel
        try:
            with Image.open(p) as im:
                w, h = im.size
        except OSError:
            w = h = -1
        widths.append(w)
        heights.append(h)
    q["crop_file_w"] = widths
    q["crop_file_h"] = heights
    return q


def build_expectations(cfg: PrepareConfig, n_input: int) -> list:
    import great_expectations as gx

    E = gx.expectations
    mostly = 1.0 - cfg.qa_tolerance
    min_rows = max(cfg.min_kept, math.ceil(cfg.min_kept_fraction * n_input))
    exps = [
        E.ExpectTableRowCountToBeBetween(min_value=min_rows, max_value=max(n_input, min_rows)),
        E.ExpectColumnValuesToBeUnique(column="id"),
        E.ExpectColumnValuesToNotBeNull(column="id"),
        E.ExpectColumnValuesToMatchRegex(column="id", regex=r"^[0-9a-f]{16}$", mostly=mostly),
        E.ExpectColumnValuesToBeUnique(column="sha256"),
        E.ExpectColumnValuesToBeUnique(column="source_path"),
        E.ExpectColumnValuesToNotMatchRegex(column="source_path", regex=UNSAFE_PATH_RE),
        E.ExpectColumnValuesToMatchRegex(column="crop_path", regex=r"^crops/[0-9a-f]{16}\.png$"),
        E.ExpectColumnValuesToBeBetween(column="crop_file_w", min_value=cfg.size, max_value=cfg.size, mostly=mostly),
        E.ExpectColumnValuesToBeBetween(column="crop_file_h", min_value=cfg.size, max_value=cfg.size, mostly=mostly),
        E.ExpectColumnValuesToBeBetween(column="box_x0", min_value=0, mostly=mostly),
        E.ExpectColumnValuesToBeBetween(column="box_y0", min_value=0, mostly=mostly),
        E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="box_x1", column_B="box_x0", mostly=mostly),
        E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="box_y1", column_B="box_y0", mostly=mostly),
        E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="img_w", column_B="box_x1", or_equal=True, mostly=mostly),
        E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="img_h", column_B="box_y1", or_equal=True, mostly=mostly),
        E.ExpectColumnValuesToBeBetween(column="n_landmarks", min_value=5, max_value=5, mostly=mostly),
        E.ExpectColumnValuesToBeBetween(column="face_px", min_value=cfg.min_face_px, mostly=mostly),
        E.ExpectColumnValuesToBeBetween(column="det_score", min_value=cfg.min_det_score, mostly=mostly),
        E.ExpectColumnValuesToBeBetween(column="blur", min_value=cfg.min_blur, mostly=mostly),
        E.ExpectColumnValuesToBeBetween(column="n_faces", min_value=1,
                                        max_value=1 if cfg.multi_face == "reject" else None, mostly=mostly),
    ]
    if cfg.require_caption:
        exps.append(E.ExpectColumnValuesToNotBeNull(column="caption", mostly=mostly))
    exps.append(E.ExpectColumnValueLengthsToBeBetween(column="caption", min_value=cfg.caption_min_chars,
                                                      max_value=cfg.caption_max_chars, mostly=mostly))
    if cfg.forbidden_words:
        words = "|".join(re.escape(w.lower().strip()) for w in cfg.forbidden_words)
        exps.append(E.ExpectColumnValuesToNotMatchRegex(column="caption", regex=rf"(?i)(?<!\w)(?:{words})(?!\w)",
                                                        mostly=mostly))
    if cfg.require_target:
        exps.append(E.ExpectColumnValuesToNotBeNull(column="target_phrase", mostly=mostly))
    exps.append(E.ExpectColumnValuesToMatchRegex(  # nulls are skipped: only present targets must be the target
        column="target_phrase", regex=rf"(?i)^{re.escape(cfg.target_phrase.strip())}$", mostly=mostly))
    return exps


def expectation_name(cfg_obj) -> str:
    kw = cfg_obj.kwargs
    col = kw.get("column") or (f"{kw['column_A']},{kw['column_B']}" if "column_A" in kw else "table")
    return f"{cfg_obj.type}({col})"


def run_qa(df, out_dir: Path, qa_dir: Path, cfg: PrepareConfig, *, n_input: int) -> dict[str, Any]:
    """Validate, write Data Docs under ``qa_dir/data_docs``; return success, failed names, per-expectation rows."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    qa_dir.mkdir(parents=True, exist_ok=True)
    frame = qa_frame(df, out_dir)
    ctx = gx.get_context(mode="ephemeral")
    _quiet(ctx)
    ctx.add_data_docs_site(site_name=SITE_NAME, site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(qa_dir / "data_docs")},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    asset = ctx.data_sources.add_pandas("prepare").add_dataframe_asset("manifest")
    batch_def = asset.add_batch_definition_whole_dataframe("manifest")
    suite = ctx.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    for exp in build_expectations(cfg, n_input):
        suite.add_expectation(exp)
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name="prepare_manifest", data=batch_def, suite=suite))
    cp = ctx.checkpoints.add(gx.Checkpoint(name="prepare", validation_definitions=[vd],
                                           actions=[UpdateDataDocsAction(name="docs", site_names=[SITE_NAME])]))
    res = cp.run(batch_parameters={"dataframe": frame})
    rows: list[dict[str, Any]] = []
    for vr in res.run_results.values():
        for er in vr.results:
            name = expectation_name(er.expectation_config)
            r = er.result or {}
            rows.append({"name": name, "success": bool(er.success),
                         "unexpected_percent": _round(r.get("unexpected_percent")),
                         "observed": r.get("observed_value"),
                         "partial_unexpected": [str(v) for v in (r.get("partial_unexpected_list") or [])[:5]]})
            if er.exception_info and er.exception_info.get("raised_exception"):
                rows[-1]["success"] = False
                rows[-1]["observed"] = str(er.exception_info.get("exception_message"))[:200]
    failed = [r["name"] for r in rows if not r["success"]]
    return {"success": bool(res.success) and not failed, "failed": failed, "expectations": rows}


def _round(v):
    return None if v is None else round(float(v), 3)


def _quiet(ctx) -> None:
    """GX prints a tqdm bar per validation; the stage has its own progress output."""
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # noqa: BLE001 - older/newer GX: only cosmetics are lost
        log.debug("could not disable GX progress bars")
