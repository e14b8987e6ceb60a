"""The shared training loop (``run.train``), its config (``config.TrainConfig``), checkpoints and validation grids.

Methods plug in through ``spf_lib.methods.base.TrainingMethod``; see docs/internals.md section 2.
"""
