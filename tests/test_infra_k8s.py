"""Every manifest under infra/k8s renders and validates against Kubernetes schemas, offline, without secrets."""

import json
import os
import re
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from pipelines import multinode, platform
from tests._kube_helpers import REPO, kubectl_kustomize, render_kustomization

K8S = REPO / "infra" / "k8s"
K8S_VERSION = "1.32.0"
TARGETS = ["base", "overlays/cpu-local", "overlays/gke-gpu", "overlays/eks-gpu"]
TEMPLATES = {p.stem: yaml.safe_load(p.read_text()) for p in (K8S / "secret-templates").glob("*.yaml")}


def _key(d: dict) -> tuple:
    return d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]


@pytest.fixture(scope="module", params=TARGETS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render_kustomization(K8S / request.param)


def test_renders_like_kustomize(rendered):
    target, docs = rendered
    real = kubectl_kustomize(K8S / target)
    if real is None:
        pytest.skip("no kustomize/kubectl binary: the test renderer's output is validated below")
    assert sorted(docs, key=_key) == sorted(real, key=_key)


def test_every_resource_validates_strictly(rendered):
    _, docs = rendered
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Job",
            "PersistentVolumeClaim"} <= kinds
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any schema violation


def test_overlays_set_namespace_and_storage(rendered):
    target, docs = rendered
    if target == "base":
        assert all("namespace" not in d["metadata"] for d in docs)
        return
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"spf-portrait"}
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["subjects"][0]["namespace"] == "spf-portrait"
    pvcs = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    expected = {"overlays/gke-gpu": "standard-rwo", "overlays/eks-gpu": "gp3"}.get(target)
    assert {s.get("storageClassName") for s in pvcs.values()} == {expected}


def test_secrets_by_reference_only(rendered):
    _, docs = rendered
    assert "Secret" not in {d["kind"] for d in docs}, "Secrets are created out of band, never deployed from git"
    refs = []

    def walk(node):
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                refs.append((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
            if "secretRef" in node:
                refs.append((node["secretRef"]["name"], None))
            for k, v in node.items():
                if k == "env":
                    for e in v:
                        if re.search("PASSWORD|SECRET|TOKEN", e["name"]):
                            assert "valueFrom" in e, f"{e['name']} must come from a Secret"
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(docs)
    assert refs
    for name, key in refs:
        assert name in TEMPLATES, f"Secret {name} has no template in infra/k8s/secret-templates"
        assert key is None or key in TEMPLATES[name]["stringData"]


def test_secret_templates_hold_no_values():
    assert set(TEMPLATES) == {"spf-s3", "spf-postgres", "spf-mlflow"}
    for doc in TEMPLATES.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert "data" not in doc and all(v == "" for v in doc["stringData"].values())
    for path in K8S.rglob("kustomization.yaml"):
        kust = yaml.safe_load(path.read_text())
        assert not [r for r in kust.get("resources", []) if "secret-templates" in r], path
        assert "secretGenerator" not in kust


def test_no_credentials_anywhere_in_infra():
    pattern = re.compile(r"AKIA[0-9A-Z]{16}|-----BEGIN|(password|secret|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{8,}",
                         re.IGNORECASE)
    for path in (REPO / "infra").rglob("*"):
        if path.is_file():
            hits = [m.group(0) for m in pattern.finditer(path.read_text())]
            assert not hits, f"{path}: {hits}"


@pytest.mark.parametrize("overlay", ["cpu-local", "gke-gpu", "eks-gpu"])
def test_overlay_run_params_are_platform_params(overlay):
    params = json.loads((K8S / "overlays" / overlay / "run-params.json").read_text())
    assert set(params) <= platform.RUNTIME_KEYS
    for key in params:
        platform._get(params, key)  # raises ValueError naming a bad value
    for tol in params["tolerations"]:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
               "spec": {"containers": [{"name": "c", "image": "i"}], "tolerations": [tol],
                        "nodeSelector": params["node_selector"]}}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def _pod_template(job: dict, role: str) -> dict:
    tpl = job["spec"]["pytorchReplicaSpecs"][role]["template"]
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"x-{role.lower()}"}, "template": tpl}


def test_pytorchjob_renders_valid_pods():
    job = multinode.render_pytorchjob(
        job_name="spf-train-abc", image="ghcr.io/spf-portrait/spf:0.1.0-cuda", nodes=3, gpus_per_node=8,
        train_args=["--method", "spf", "--config", "/cfg.json"], node_selector={"pool": "a100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        checkpoint_pvc="spf-checkpoints-rwx")
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 2
    assert job["spec"]["nprocPerNode"] == "8"
    for role in ("Master", "Worker"):
        kubernetes_validate.validate(_pod_template(job, role), K8S_VERSION, strict=True)
        c = specs[role]["template"]["spec"]["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8" and c["args"][0] == "--"
        assert specs[role]["template"]["spec"]["nodeSelector"] == {"pool": "a100"}
    assert "${" not in json.dumps(job)
    single = multinode.render_pytorchjob(job_name="one", image="i:1", nodes=1, gpus_per_node=2, train_args=[],
                                         checkpoint_pvc=None)
    assert "Worker" not in single["spec"]["pytorchReplicaSpecs"]
    pod = single["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["dshm"]
    with pytest.raises(Exception, match="DNS-1123"):
        multinode.render_pytorchjob(job_name="Bad_Name", image="i:1", nodes=1, gpus_per_node=1, train_args=[])


def test_pytorchjob_launch_command_from_operator_env():
    env = {**os.environ, "PET_NNODES": "2", "PET_NODE_RANK": "1", "MASTER_ADDR": "spf-train-master-0",
           "MASTER_PORT": "23456", "CUDA_VISIBLE_DEVICES": "0,1,2,3", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "pipelines.multinode", "launch", "--dry-run", "--", "--method", "spf"],
                         cwd=REPO, env=env, capture_output=True, text=True, check=True)
    cmd = out.stdout.split()
    assert cmd[cmd.index("--num_processes") + 1] == "8" and cmd[cmd.index("--machine_rank") + 1] == "1"
    assert cmd[cmd.index("--main_process_ip") + 1] == "spf-train-master-0"
    assert cmd[-4:] == ["spf_lib.cli.main", "train", "--method", "spf"]


class FakeCustomObjects:
    """Stands in for kubernetes.client.CustomObjectsApi: the job succeeds on the second poll."""

    def __init__(self, final: str, exists: bool = False):
        self.created, self.polls, self.final, self.exists = [], 0, final, exists

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        if self.exists:
            err = RuntimeError("conflict")
            err.status = 409
            raise err
        self.created.append((group, version, namespace, plural, body))

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.polls += 1
        conds = [{"type": "Running", "status": "True"}]
        if self.polls >= 2:
            conds.append({"type": self.final, "status": "True"})
        return {"status": {"conditions": conds}}


def test_submit_pytorchjob_waits_and_reports():
    from spf_lib.errors import SpfError

    job = multinode.render_pytorchjob(job_name="j", image="i:1", nodes=2, gpus_per_node=1, train_args=[])
    api = FakeCustomObjects("Succeeded")
    assert multinode.submit_pytorchjob(job, "team-a", api=api, poll_s=0) == "Succeeded"
    assert api.created[0][:4] == ("kubeflow.org", "v1", "team-a", "pytorchjobs") and api.polls == 2
    adopted = FakeCustomObjects("Succeeded", exists=True)  # a retried pipeline step adopts the running job
    assert multinode.submit_pytorchjob(job, "team-a", api=adopted, poll_s=0) == "Succeeded"
    with pytest.raises(SpfError, match="failed"):
        multinode.submit_pytorchjob(job, "team-a", api=FakeCustomObjects("Failed"), poll_s=0)


def test_launch_component_compiles(tmp_path):
    from kfp import compiler, dsl

    comp = multinode.launch_component("ghcr.io/spf-portrait/spf:0.1.0")

    @dsl.pipeline(name="multinode")
    def p(nodes: int = 2):
        comp(job_name="spf-train", image="img:1", nodes=nodes, gpus_per_node=8, train_args=["--method", "spf"],
             node_selector_json={}, tolerations_json=[], checkpoint_pvc="")

    compiler.Compiler().compile(p, str(tmp_path / "m.yaml"))
    assert "launch_pytorchjob" in (tmp_path / "m.yaml").read_text()
