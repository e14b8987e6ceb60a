"""spf-portrait: customize text-to-image portrait models without semantic pollution.

The library never imports kfp; KFP components in ``components/`` are thin wrappers around it.

The stages are plain functions, usable from a notebook without Kubeflow (README, "From Python"):

- ``prepare_dataset(input_dir, output_dir, PrepareConfig(...))``: faces found, aligned and cropped, captions checked,
  the Great Expectations suite run; bad data raises ``SpfError`` before any GPU is paid for.
- ``train_model(TrainConfig(method=..., base_model=..., data_dir=..., output_dir=...))``: the adapter, with
  checkpoints and resume.
- ``evaluate_model(EvalConfig(base_model=..., adapter_dir=..., output_dir=...))``: original vs tuned on fixed
  prompts and seeds; pollution, CLIP, identity metrics and the HTML report.
- ``register_model(adapter_dir, base_model, metrics=..., lineage=...)``: an MLflow model version, alias
  ``challenger``.
- ``promote(model_name, GateRules(...))``: the gate; ``champion`` moves only when the rules pass; ``rollback``.
- ``pull_data`` / ``add_data``: the DVC-versioned data at a git revision, and a folder put under DVC.

Every name is imported on first use (``spf_lib.train_model`` loads torch and diffusers then, not at ``import
spf_lib``), so the CLI and light scripts start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute). Names avoid the subpackages' own names (``train``, ``eval``): an import of
# ``spf_lib.train.run`` sets ``spf_lib.train`` to the subpackage, which would shadow a function of that name.
_EXPORTS: dict[str, tuple[str, str]] = {
    "PrepareConfig": ("spf_lib.data.config", "PrepareConfig"),
    "prepare_dataset": ("spf_lib.data.prepare", "prepare_dataset"),
    "TrainConfig": ("spf_lib.train.config", "TrainConfig"),
    "train_model": ("spf_lib.train.run", "train"),
    "EvalConfig": ("spf_lib.eval.config", "EvalConfig"),
    "evaluate_model": ("spf_lib.eval.run", "evaluate"),
    "register_model": ("spf_lib.registry.register", "register_model"),
    "GateRules": ("spf_lib.registry.gate", "GateRules"),
    "promote": ("spf_lib.registry.promotion", "promote"),
    "rollback": ("spf_lib.registry.promotion", "rollback"),
    "pull_data": ("spf_lib.data.dvc_io", "pull_data"),
    "add_data": ("spf_lib.data.dvc_versioning", "add_data"),
    "synth_dataset": ("spf_lib.data.synth", "synth_dataset"),
    "save_tiny_pipeline": ("spf_lib.models.factory", "save_tiny_pipeline"),
    "Settings": ("spf_lib.settings", "Settings"),
    "SpfError": ("spf_lib.errors", "SpfError"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'spf_lib' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

