"""Multi-node training through Kubeflow's training operator: fill the PyTorchJob template, create it, wait for it.

Kept free of kfp imports (it also runs inside the PyTorchJob pods as ``python -m pipelines.multinode launch ...``).
A pipeline step launches a job with ``launch_component(image)`` (a lightweight component built on demand), which
needs the run's service account to be allowed to create ``pytorchjobs`` (infra/k8s/base/rbac.yaml).
"""

# No `from __future__ import annotations`: launch_component() defines a KFP component whose annotations must be real.

import copy
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from spf_lib.errors import SpfError

log = logging.getLogger(__name__)

TEMPLATE = Path(__file__).resolve().parent.parent / "infra" / "k8s" / "training" / "pytorchjob.yaml"
GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"


def render_pytorchjob(
    *,
    job_name: str,
    image: str,
    nodes: int,
    gpus_per_node: int,
    train_args: list[str],
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict] | None = None,
    checkpoint_pvc: str | None = None,
    accelerator_type: str = "nvidia.com/gpu",
    s3_secret_name: str = "spf-s3",
    service_account: str = "spf-pipeline-runner",
    template: Path = TEMPLATE,
) -> dict[str, Any]:
    """The PyTorchJob manifest: ``nodes`` pods (1 master + workers), each with ``gpus_per_node`` GPUs.

    ``checkpoint_pvc`` must be ReadWriteMany when ``nodes > 1`` (all pods mount it); None drops the volume."""
    import yaml

    if nodes < 1 or gpus_per_node < 1:
        raise SpfError(f"pytorchjob: nodes ({nodes}) and gpus_per_node ({gpus_per_node}) must be >= 1")
    if not job_name or len(job_name) > 63 or not job_name.replace("-", "").isalnum() or job_name != job_name.lower():
        raise SpfError(f"pytorchjob: job name {job_name!r} is not a DNS-1123 label")
    job = yaml.safe_load(template.read_text())
    job["metadata"]["name"] = job_name
    job["spec"]["nprocPerNode"] = str(gpus_per_node)
    specs = job["spec"]["pytorchReplicaSpecs"]
    for role, replicas in (("Master", 1), ("Worker", nodes - 1)):
        spec = specs[role]
        spec["template"] = pod = copy.deepcopy(spec["template"])  # the YAML anchor shares one object
        spec["replicas"] = replicas
        pod_spec = pod["spec"]
        pod_spec["serviceAccountName"] = service_account
        pod_spec["nodeSelector"] = dict(node_selector or {})
        pod_spec["tolerations"] = list(tolerations or [])
        (container,) = pod_spec["containers"]
        container["image"] = image
        container["args"] = ["--", *train_args]
        for res in ("requests", "limits"):
            container["resources"][res].pop("nvidia.com/gpu", None)
            container["resources"][res][accelerator_type] = str(gpus_per_node)
        for env in container["env"]:
            if "valueFrom" in env:
                env["valueFrom"]["secretKeyRef"]["name"] = s3_secret_name
        if checkpoint_pvc:
            next(v for v in pod_spec["volumes"] if v["name"] == "checkpoints")["persistentVolumeClaim"][
                "claimName"] = checkpoint_pvc
        else:
            pod_spec["volumes"] = [v for v in pod_spec["volumes"] if v["name"] != "checkpoints"]
            container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "checkpoints"]
            container["env"] = [e for e in container["env"] if e["name"] != "SPF_CHECKPOINT_ROOT"]
    if nodes == 1:
        del specs["Worker"]
    return job


def job_state(job: dict[str, Any]) -> str | None:
    """``Succeeded``/``Failed`` once the operator says so, else None."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Succeeded", "Failed") and cond.get("status") == "True":
            return cond["type"]
    return None


def submit_pytorchjob(manifest: dict, namespace: str, *, api: Any = None, wait: bool = True,
                      timeout_s: float = 7 * 86400, poll_s: float = 30.0) -> str:
    """Create the job (or adopt one of the same name, so a retried pipeline step does not start a second job) and
    wait for its final state. Raises SpfError when it fails."""
    if api is None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api = client.CustomObjectsApi()
    name = manifest["metadata"]["name"]
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
        log.info("created PyTorchJob %s/%s", namespace, name)
    except Exception as e:  # the kubernetes ApiException; 409 = exists: adopt it
        if getattr(e, "status", None) != 409:
            raise
        log.info("PyTorchJob %s/%s exists: waiting for it", namespace, name)
    if not wait:
        return "Created"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = job_state(api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
        if state == "Failed":
            raise SpfError(f"PyTorchJob {namespace}/{name} failed (kubectl -n {namespace} describe pytorchjob {name})")
        if state == "Succeeded":
            return state
        time.sleep(poll_s)
    raise SpfError(f"PyTorchJob {namespace}/{name}: no final state after {timeout_s:.0f}s")


def launch_command(train_args: list[str], env: dict[str, str] | None = None, num_gpus: int | None = None) -> list[str]:
    """What each PyTorchJob pod runs: accelerate over its GPUs, joined to the other nodes."""
    from pipelines.runtime import launch_prefix_from_env

    return [*launch_prefix_from_env(env, num_gpus=num_gpus), "spf_lib.cli.main", "train", *train_args]


def launch_component(image: str):
    """A KFP component that renders, creates and waits for a PyTorchJob (kfp imported only here)."""
    from kfp import dsl

    @dsl.component(base_image=image, install_kfp_package=False)
    def launch_pytorchjob(job_name: str, image: str, nodes: int, gpus_per_node: int, train_args: list,
                          node_selector_json: dict, tolerations_json: list, checkpoint_pvc: str,
                          namespace: str = "") -> str:
        from pathlib import Path

        from pipelines.multinode import render_pytorchjob, submit_pytorchjob

        ns = namespace or Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip()
        manifest = render_pytorchjob(job_name=job_name, image=image, nodes=nodes, gpus_per_node=gpus_per_node,
                                     train_args=[str(a) for a in train_args], node_selector=node_selector_json,
                                     tolerations=tolerations_json, checkpoint_pvc=checkpoint_pvc or None)
        return submit_pytorchjob(manifest, ns)

    return launch_pytorchjob


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.multinode launch [--dry-run] -- <spf train args>``"""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "launch":
        print("usage: python -m pipelines.multinode launch [--dry-run] -- <spf train args>", file=sys.stderr)
        return 2
    dry = "--dry-run" in args[1:args.index("--")] if "--" in args else "--dry-run" in args
    train_args = args[args.index("--") + 1:] if "--" in args else []
    cmd = launch_command(train_args)
    if dry:
        print(" ".join(cmd))
        return 0
    os.execvp(cmd[0], cmd)
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
