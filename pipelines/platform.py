"""Kubernetes-side settings applied to each pipeline task (GPU pools, resources, secrets, retries, caching).

The pipeline (``pipelines/portrait.py``) calls ``configure_<stage>(task, params)`` once per task. ``params`` maps
the keys below to either a pipeline parameter (a ``dsl.PipelineParameterChannel``: the value is chosen per run at
submission time) or a Python constant (fixed at compile time). Keys not listed are ignored, so the pipeline may pass
all of its parameters. Locally (``kfp.local``) every setting here is ignored; they compile into the YAML for Kubeflow.

Pipeline parameter keys (type, default):

- ``accelerator_type`` (str, ``nvidia.com/gpu``): extended resource name of the GPU (``amd.com/gpu`` works too).
- ``accelerator_count`` (int, 1): GPUs for the training pod; the train step runs ``accelerate launch`` on all of them.
- ``eval_accelerator_count`` (int, 1): GPUs for the evaluation pod.
- ``node_selector`` (dict, ``{}``): node-pool selector, e.g. ``{"cloud.google.com/gke-accelerator": "nvidia-l4"}``.
- ``tolerations`` (list, ``[]``): tolerations for the GPU pool's taints (list of Kubernetes toleration objects).
- ``s3_secret_name`` (str, ``spf-s3``): Secret with ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``.
- ``mlflow_secret_name`` (str, ``spf-mlflow``): Secret with ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``
  (both optional: a tracking server without auth needs no such Secret).

Compile-time keys (Python constants only; KFP needs them when it writes the YAML):

- ``git_secret_name`` (``spf-git``; ``""`` disables): optional Secret with ``GIT_TOKEN`` (and ``GIT_USERNAME``) for an
  HTTPS data repository; the prepare pod sees them as ``SPF_GIT_TOKEN``/``SPF_GIT_USERNAME``.
- ``git_ssh_secret_name`` (``spf-git-ssh``; ``""`` disables): optional Secret of type ``kubernetes.io/ssh-auth``
  (``ssh-privatekey``, plus ``known_hosts``) for an SSH data repository, mounted read-only at ``GIT_SSH_MOUNT``.
- ``config_map_name`` (``spf-config``): ConfigMap with the non-secret addresses (``MLFLOW_TRACKING_URI``,
  ``MLFLOW_S3_ENDPOINT_URL``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``), optional.
- ``checkpoint_pvc`` (``spf-checkpoints``; ``""`` disables): PVC mounted at ``CHECKPOINT_MOUNT`` on the train task.
- ``train_cpu_request``/``train_cpu_limit``/``train_memory_request``/``train_memory_limit``, the same with ``eval_``
  and ``prepare_`` prefixes: Kubernetes quantities (``"8"``, ``"48Gi"``).
- ``shm_size`` (``16Gi``): size of the in-memory ``/dev/shm`` (PyTorch DataLoader workers and NCCL need more than the
  container default of 64 MiB).
- ``prepare_retries`` (2), ``train_retries`` (3), ``eval_retries`` (2), ``register_retries`` (3): retries with
  exponential backoff (preemptible/spot GPU nodes). NOTE: the kfp 2.17 local runner honours retries AND their backoff
  (60 s, 120 s, ... for training), so a pipeline built for local tests may pass 0 here to fail fast.
- ``train_timeout_s`` (86400): ``activeDeadlineSeconds`` of a training pod.

Resume on retry (our choice): training checkpoints go to a PVC, not to the pipeline root, because a retried pod is a
new pod whose local disk is gone, and the pipeline root (object storage) only receives outputs when a task succeeds.
``configure_train`` mounts the PVC at ``CHECKPOINT_MOUNT`` and sets ``SPF_CHECKPOINT_ROOT``; the train component
writes checkpoints to ``$SPF_CHECKPOINT_ROOT/<kfp_run_id>`` (see ``checkpoint_dir``) and passes ``resume="latest"``,
so a retry of the same run picks up the newest checkpoint, while a new run (new id) starts fresh. Without the env
(local runs) the component keeps checkpoints in its own output folder.

Multi-GPU: the train component re-executes its work under ``pipelines.runtime.train_launch_prefix()``
(``accelerate launch`` over every GPU of the pod). Multi-node: ``pipelines.multinode`` creates a PyTorchJob from
``infra/k8s/training/pytorchjob.yaml``; each of its pods runs ``launch_prefix_from_env()``.
"""

from __future__ import annotations

from typing import Any

from kfp import dsl, kubernetes
from kfp.dsl.pipeline_channel import PipelineChannel

# Run-time helpers (kfp-free, importable inside a component's pod), re-exported for the pipeline author.
from pipelines.runtime import checkpoint_dir, launch_prefix_from_env, train_launch_prefix, visible_gpu_count

__all__ = [
    "checkpoint_dir", "configure_evaluate", "configure_prepare", "configure_register", "configure_train",
    "launch_prefix_from_env", "train_launch_prefix", "visible_gpu_count",
]

CHECKPOINT_MOUNT = "/mnt/checkpoints"
SHM_VOLUME = "dshm"

DEFAULTS: dict[str, Any] = {
    "accelerator_type": "nvidia.com/gpu",
    "accelerator_count": 1,
    "eval_accelerator_count": 1,
    "node_selector": {},
    "tolerations": [],
    "s3_secret_name": "spf-s3",
    "mlflow_secret_name": "spf-mlflow",
    "config_map_name": "spf-config",
    "git_secret_name": "spf-git",
    "git_ssh_secret_name": "spf-git-ssh",
    "checkpoint_pvc": "spf-checkpoints",
    "prepare_cpu_request": "2",
    "prepare_cpu_limit": "4",
    "prepare_memory_request": "4Gi",
    "prepare_memory_limit": "8Gi",
    "train_cpu_request": "8",
    "train_cpu_limit": "16",
    "train_memory_request": "48Gi",
    "train_memory_limit": "64Gi",
    "eval_cpu_request": "4",
    "eval_cpu_limit": "8",
    "eval_memory_request": "24Gi",
    "eval_memory_limit": "32Gi",
    "register_cpu_request": "1",
    "register_memory_request": "2Gi",
    "register_memory_limit": "4Gi",
    "shm_size": "16Gi",
    "prepare_retries": 2,
    "train_retries": 3,
    "eval_retries": 2,
    "register_retries": 3,
    "train_timeout_s": 86400,
}
# Which keys may be pipeline parameters (chosen per run); the rest must be constants at compile time.
RUNTIME_KEYS = frozenset(
    {"accelerator_type", "accelerator_count", "eval_accelerator_count", "node_selector", "tolerations",
     "s3_secret_name", "mlflow_secret_name"}
)
S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
MLFLOW_SECRET_KEYS = {
    "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
}
GIT_SECRET_KEYS = {"GIT_TOKEN": "SPF_GIT_TOKEN", "GIT_USERNAME": "SPF_GIT_USERNAME"}  # see spf_lib.data.dvc_guard
GIT_SSH_MOUNT = "/etc/spf/git-ssh"
CONFIG_MAP_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
                   "SPF_DVC_REMOTE_URL")  # the cluster's DVC store for data repos whose default remote is a folder
POD_LABEL = "app.kubernetes.io/part-of"


def _get(params: dict, key: str) -> Any:
    """A parameter's value, with validation of constants (channels are checked by the backend at run time)."""
    value = params.get(key, DEFAULTS[key])
    if isinstance(value, PipelineChannel):
        if key not in RUNTIME_KEYS:
            raise ValueError(f"platform param {key!r} must be a constant at compile time, got a pipeline parameter")
        return value
    if key.endswith(("_count", "_retries", "_timeout_s")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"platform param {key!r} must be an integer >= 0, got {value!r}")
    elif key == "node_selector" and not isinstance(value, dict):
        raise ValueError(f"platform param 'node_selector' must be a dict, got {type(value).__name__}")
    elif key == "tolerations" and not isinstance(value, list | dict):
        raise ValueError(f"platform param 'tolerations' must be a list of tolerations, got {value!r}")
    elif key not in ("node_selector", "tolerations") and not isinstance(value, str):
        raise ValueError(f"platform param {key!r} must be a string, got {value!r}")
    return value


def _resources(task: dsl.PipelineTask, params: dict, prefix: str) -> None:
    setters = {
        "cpu_request": task.set_cpu_request,
        "cpu_limit": task.set_cpu_limit,
        "memory_request": task.set_memory_request,
        "memory_limit": task.set_memory_limit,
    }
    for suffix, setter in setters.items():
        key = f"{prefix}_{suffix}"
        if key in DEFAULTS and _get(params, key):
            setter(_get(params, key))


def _node_pool(task: dsl.PipelineTask, params: dict) -> None:
    """Node selector and tolerations; a pipeline parameter is always wired so each run can pick its pool."""
    selector = _get(params, "node_selector")
    if isinstance(selector, PipelineChannel) or selector:
        kubernetes.add_node_selector_json(task, selector)
    tolerations = _get(params, "tolerations")
    if isinstance(tolerations, PipelineChannel):
        kubernetes.add_toleration_json(task, tolerations)
    else:
        for toleration in [tolerations] if isinstance(tolerations, dict) else tolerations:
            kubernetes.add_toleration_json(task, toleration)


def _credentials(task: dsl.PipelineTask, params: dict, *, mlflow: bool = True, s3: bool = True) -> None:
    """Secrets become env vars by reference: the YAML holds Secret names and keys, never values."""
    if s3:
        kubernetes.use_secret_as_env(task, _get(params, "s3_secret_name"), S3_SECRET_KEYS)
    if mlflow:
        kubernetes.use_secret_as_env(task, _get(params, "mlflow_secret_name"), MLFLOW_SECRET_KEYS, optional=True)
    config_map = _get(params, "config_map_name")
    if config_map:
        kubernetes.use_config_map_as_env(task, config_map, {k: k for k in CONFIG_MAP_KEYS}, optional=True)


def _git_credentials(task: dsl.PipelineTask, params: dict) -> None:
    """A private data repository: token or SSH key from optional Secrets (a public repo needs neither). Only the
    prepare task clones the data repo, so only it sees them; the YAML names the Secrets, never their values."""
    token_secret = _get(params, "git_secret_name")
    if token_secret:
        kubernetes.use_secret_as_env(task, token_secret, GIT_SECRET_KEYS, optional=True)
    ssh_secret = _get(params, "git_ssh_secret_name")
    if ssh_secret:
        kubernetes.use_secret_as_volume(task, ssh_secret, GIT_SSH_MOUNT, optional=True)
        task.set_env_variable("SPF_GIT_SSH_DIR", GIT_SSH_MOUNT)


def _common(task: dsl.PipelineTask, stage: str) -> None:
    kubernetes.add_pod_label(task, POD_LABEL, "spf-portrait")
    kubernetes.add_pod_label(task, "spf-portrait/stage", stage)
    task.set_env_variable("MLFLOW_DISABLE_TELEMETRY", "true")
    task.set_env_variable("GX_ANALYTICS_ENABLED", "false")
    task.set_env_variable("HF_HUB_DISABLE_TELEMETRY", "1")


def _gpu(task: dsl.PipelineTask, params: dict, count_key: str) -> None:
    accel_type, accel_count = _get(params, "accelerator_type"), _get(params, count_key)
    task.set_accelerator_type(accel_type)
    task.set_accelerator_limit(accel_count)
    # kfp keeps only the placeholder text of a resource channel, so a task inside dsl.If (the baseline branch) would
    # reference a parameter its condition sub-DAG never receives; registering the channels as task inputs makes the
    # compiler pass them down (top-level tasks compile exactly as before).
    for channel in (accel_type, accel_count):
        # (identity, not `in`: a channel's == builds a condition expression, which is always truthy)
        if isinstance(channel, PipelineChannel) and all(c is not channel for c in task.channel_inputs):
            task.channel_inputs.append(channel)
    _node_pool(task, params)
    kubernetes.empty_dir_mount(task, SHM_VOLUME, "/dev/shm", medium="Memory", size_limit=_get(params, "shm_size"))


def _retry(task: dsl.PipelineTask, retries: int, first: str, cap: str) -> None:
    if retries:
        task.set_retry(num_retries=retries, backoff_duration=first, backoff_factor=2.0, backoff_max_duration=cap)


def configure_prepare(task: dsl.PipelineTask, params: dict) -> None:
    """Data preparation: CPU only, cached. The cache key covers every input, and ``data_rev`` is an input, so a new
    data revision misses the cache and the same revision hits it (pass an immutable revision: a commit sha)."""
    _common(task, "prepare")
    _resources(task, params, "prepare")
    _credentials(task, params, mlflow=False)
    _git_credentials(task, params)
    _retry(task, _get(params, "prepare_retries"), "30s", "600s")
    task.set_caching_options(True)


def configure_train(task: dsl.PipelineTask, params: dict) -> None:
    """Training: GPU node pool, no caching, retries that resume from the last checkpoint on the PVC."""
    _common(task, "train")
    _resources(task, params, "train")
    _gpu(task, params, "accelerator_count")
    _credentials(task, params)
    pvc = _get(params, "checkpoint_pvc")
    if pvc:
        kubernetes.mount_pvc(task, pvc_name=pvc, mount_path=CHECKPOINT_MOUNT)
        task.set_env_variable("SPF_CHECKPOINT_ROOT", CHECKPOINT_MOUNT)
    task.set_env_variable("SPF_RESUME", "latest")
    task.set_env_variable("MLFLOW_ENABLE_MULTIPART_UPLOAD", "true")
    _retry(task, _get(params, "train_retries"), "60s", "3600s")
    kubernetes.set_timeout(task, _get(params, "train_timeout_s"))
    task.set_caching_options(False)


def configure_evaluate(task: dsl.PipelineTask, params: dict) -> None:
    """Evaluation: GPU like training (same pool), no caching so a re-run re-measures."""
    _common(task, "evaluate")
    _resources(task, params, "eval")
    _gpu(task, params, "eval_accelerator_count")
    _credentials(task, params)
    _retry(task, _get(params, "eval_retries"), "60s", "1800s")
    task.set_caching_options(False)


def configure_register(task: dsl.PipelineTask, params: dict) -> None:
    """Registration: CPU, never cached (a cached register would skip writing the registry); retried because
    ``register_model`` is idempotent per ``kfp_run_id``."""
    _common(task, "register")
    _resources(task, params, "register")
    _credentials(task, params)
    task.set_env_variable("MLFLOW_ENABLE_MULTIPART_UPLOAD", "true")
    task.set_env_variable("MLFLOW_HTTP_REQUEST_TIMEOUT", "600")
    _retry(task, _get(params, "register_retries"), "30s", "600s")
    task.set_caching_options(False)



def configure_compare(task: dsl.PipelineTask, params: dict) -> None:
    """The comparison picture: CPU, light; MLflow credentials to attach the picture; not cached (it reads this
    run's evaluations)."""
    _common(task, "compare")
    _credentials(task, params, s3=False)
    _retry(task, _get(params, "register_retries"), "30s", "600s")
    task.set_caching_options(False)
