"""``evaluate(cfg)``: the evaluation stage end to end (generate original/tuned, score, report, log).

Output folder (written atomically; a failed run leaves any previous result untouched)::

    metrics.json        flat {name: float | None} + "unavailable" {name: reason} + "pollution_detail" + "eval_set"
    pairs.json          per prompt/seed scores
    report.html         the report (original | tuned | diff, scores, summary); text, linking the PNGs below
    images/original/<kind>_<idx>_s<seed>.png, images/tuned/..., images/diff/...
    eval_config.json    the resolved config
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spf_lib.errors import SpfError
from spf_lib.eval.config import EvalConfig
from spf_lib.eval.evalset import resolve_eval_set

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
#: metrics.json keys that are not ``name: float | None``.
STRUCTURED_KEYS = ("unavailable", "pollution_detail", "eval_set", "id_scale", "adapter")


@dataclass
class EvalResult:
    output_dir: Path
    metrics: dict[str, float | None]
    unavailable: dict[str, str]
    pollution_detail: dict[str, Any]
    eval_set: dict[str, Any]
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    mlflow_run_id: str | None = None

    @property
    def report_path(self) -> Path:
        return self.output_dir / "report.html"

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / METRICS_FILE

    def kfp_metrics(self) -> dict[str, float]:
        return kfp_metrics(self.metrics)


def kfp_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Flat ``{name: float}`` for ``Metrics.log_metric``: numbers only (KFP rejects None and nested values)."""
    return {k: float(v) for k, v in metrics.items()
            if k not in STRUCTURED_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def load_metrics(path: str | Path) -> dict[str, Any]:
    """Read metrics.json (a file or an evaluation output folder)."""
    p = Path(path)
    p = p / METRICS_FILE if p.is_dir() else p
    if not p.is_file():
        raise SpfError(f"{p}: missing; not an evaluation output written by `spf evaluate`")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SpfError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from e


def _check_inputs(cfg: EvalConfig) -> None:
    """Fail on bad paths before loading any model."""
    from spf_lib.methods import read_adapter_info

    if not Path(cfg.adapter_dir).is_dir():
        raise SpfError(f"adapter {cfg.adapter_dir}: folder does not exist")
    read_adapter_info(cfg.adapter_dir)
    if cfg.reference_faces_dir is not None and not Path(cfg.reference_faces_dir).is_dir():
        raise SpfError(f"reference_faces_dir {cfg.reference_faces_dir}: folder does not exist")
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise SpfError(f"output {out}: exists and is not a folder")
    # The output folder is replaced as a whole: refuse to wipe a folder that is not an earlier evaluation.
    if out.is_dir() and any(out.iterdir()) and not (out / METRICS_FILE).is_file():
        raise SpfError(f"output {out}: folder is not empty and holds no {METRICS_FILE}; give a new or empty folder")
    from spf_lib.devices import check_device
    from spf_lib.io import check_output_target

    check_output_target(out, owned_if=(METRICS_FILE,), flag="output")  # unwritable / mount point: before any work
    check_device(cfg.device)


def generate_pairs(cfg: EvalConfig, items: list[Any]) -> tuple[dict, dict, int, dict[str, float]]:
    """Load the base model once, put the adapter in, generate with the adapter off and on."""
    from spf_lib.eval.generate import default_resolution, generate_images
    from spf_lib.methods import load_adapter
    from spf_lib.models.loading import load_pipeline

    pipe = load_pipeline(cfg.base_model, dtype=cfg.dtype, device=cfg.device, cache_dir=cfg.cache_dir)
    handle = load_adapter(pipe, cfg.adapter_dir)
    res = cfg.resolution or default_resolution(pipe)
    kw = {"steps": cfg.num_inference_steps, "guidance": cfg.guidance_scale, "resolution": res,
          "batch_size": cfg.batch_size, "device": cfg.device, "progress": cfg.progress}
    t0 = time.perf_counter()
    handle.disable()
    orig = generate_images(pipe, items, desc="original", **kw)
    t1 = time.perf_counter()
    handle.enable()
    tuned = generate_images(pipe, items, prompt_fn=handle.prompt, desc="tuned", **kw)
    t2 = time.perf_counter()
    timing = {"seconds": t2 - t0, "images": 2 * len(items), "images_per_s": 2 * len(items) / max(t2 - t0, 1e-9),
              "original_s": t1 - t0, "tuned_s": t2 - t1}
    del pipe, handle
    return orig, tuned, res, timing


def evaluate(cfg: EvalConfig) -> EvalResult:
    """Run one evaluation; see the module docstring for the output folder."""
    from spf_lib.eval import metrics as M
    from spf_lib.eval.clip_score import BackboneUnavailable, load_clip
    from spf_lib.eval.extra import lpips_fid
    from spf_lib.eval.faces import DlibEncoder, OnnxEncoder
    from spf_lib.eval.generate import save_images
    from spf_lib.eval.identity import adapter_trigger, class_noun_prompt
    from spf_lib.eval.pollution import diff_heatmap
    from spf_lib.eval.probe_scores import probe_scores
    from spf_lib.eval.report import pair_grid, render_report
    from spf_lib.io import atomic_dir, write_json_atomic, write_text_atomic
    from spf_lib.methods import read_adapter_info

    _check_inputs(cfg)
    info = read_adapter_info(cfg.adapter_dir)
    es = resolve_eval_set(cfg.eval_set, info)
    trigger = adapter_trigger(info)
    items = list(es.items)
    base, target = es.of_kind("base"), es.of_kind("target")
    log.info("evaluating %s + %s on %s v%s (%d images per model)", cfg.base_model, cfg.adapter_dir, es.name,
             es.version, len(items))
    from spf_lib.devices import oom_as_error

    with oom_as_error("evaluate", f"lower --batch-size (now {cfg.batch_size}) or --resolution"):
        orig, tuned, res, gen_timing = generate_pairs(cfg, items)

    state = M.MetricState()
    state.timings["generation"] = gen_timing
    M.structural(state, base, target, orig, tuned)
    M.identity(state, base, target, orig, tuned, cfg.face_encoder, cfg.reference_faces_dir, trigger=trigger,
               min_size=cfg.id_min_size, fallback_box=cfg.id_fallback_box)
    try:
        scorer, reason = load_clip(cfg.clip_model, device=cfg.device, cache_dir=cfg.cache_dir,
                                   allow_untrained=cfg.allow_untrained_backbones), None
    except BackboneUnavailable as e:
        scorer, reason = None, str(e)
    M.clip_scores(state, base, target, orig, tuned, scorer, reason,
                  text_fn=(lambda p: class_noun_prompt(p, trigger)) if trigger else None)
    probe_scores(state, base, target, orig, tuned, cfg.probes)
    lpips_fid(state, base, orig, tuned, cfg)
    detail = M.combine_pollution(state, cfg.pollution_weights)
    state.metrics.update({"n_base_pairs": float(len(base)), "n_target_pairs": float(len(target)),
                          "resolution": float(res)})
    id_scale = DlibEncoder.scale if cfg.face_encoder == "dlib" else OnnxEncoder.scale

    out = Path(cfg.output_dir)
    with atomic_dir(out, owned_if=(METRICS_FILE,), flag="output") as tmp:
        diffs = {k: diff_heatmap(orig[k], tuned[k]) for k in orig}
        paths = {"original": save_images(orig, tmp / "images" / "original"),
                 "tuned": save_images(tuned, tmp / "images" / "tuned"),
                 "diff": save_images(diffs, tmp / "images" / "diff")}
        from spf_lib.io import sha256_tree

        # which adapter these numbers are about: registration refuses metrics of another adapter
        doc = {**state.metrics, "unavailable": state.unavailable, "pollution_detail": detail,
               "eval_set": es.info(), "id_scale": id_scale,
               "adapter": {"hash": sha256_tree(cfg.adapter_dir), "dir": str(cfg.adapter_dir)}}
        write_json_atomic(tmp / METRICS_FILE, doc)
        write_json_atomic(tmp / "pairs.json", {it.key: {"kind": it.kind, "prompt": it.prompt, "seed": it.seed,
                                                         **state.pairs.get(it.key, {})} for it in items})
        write_json_atomic(tmp / "eval_config.json", {**cfg.to_dict(), "eval_set": es.info()})
        write_json_atomic(tmp / "timings.json", state.timings)
        context = {"base model": cfg.base_model, "adapter": str(cfg.adapter_dir), "clip model": cfg.clip_model or "-",
                   "face encoder": cfg.face_encoder, "id scale": id_scale, "steps": cfg.num_inference_steps,
                   "guidance": cfg.guidance_scale, "resolution": res}
        html_text = render_report(tmp, title="spf evaluation report", metrics=state.metrics,
                                  unavailable=state.unavailable, pollution_detail=detail, eval_set=es.info(),
                                  items=items, pairs=state.pairs, paths=paths, embed=cfg.report_embed_images,
                                  context=context)
        write_text_atomic(tmp / "report.html", html_text)
    run_id = None
    if cfg.log_mlflow:
        from spf_lib.eval.mlflow_log import log_evaluation

        grids = {k: pair_grid(orig[k], tuned[k], diffs[k]) for k in orig}
        run_id = log_evaluation(out, run_id=cfg.mlflow_run_id, metrics=state.metrics, items=items,
                                pairs=state.pairs, grids=grids)
    return EvalResult(output_dir=out, metrics=state.metrics, unavailable=state.unavailable,
                      pollution_detail=detail, eval_set=es.info(), timings=state.timings, mlflow_run_id=run_id)
