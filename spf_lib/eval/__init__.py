"""Evaluation stage: ID similarity, CLIP-T/CLIP-I, pollution score, HTML report (docs/internals.md section 3).

Entry points: ``spf_lib.eval.config.EvalConfig``, ``spf_lib.eval.run.evaluate(cfg) -> EvalResult``,
``spf_lib.eval.run.kfp_metrics(metrics)`` and ``load_metrics(path)``. Heavy imports happen inside functions.
"""
