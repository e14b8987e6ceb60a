"""Shared fixtures for the kube/infra tests: a small pipeline wired like the real one, compile helpers.

No `from __future__ import annotations` here: KFP reads the component annotations as real types.
"""


import copy
import itertools
import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import parse_qs, urlparse

import yaml
from kfp import compiler, dsl

from pipelines import platform

REPO = Path(__file__).resolve().parent.parent
IMAGE = "ghcr.io/spf-portrait/spf:test"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prep(data_rev: str, out: dsl.Output[dsl.Dataset]) -> str:
    from pathlib import Path

    Path(out.path).mkdir(parents=True, exist_ok=True)
    (Path(out.path) / "rev.txt").write_text(data_rev)
    return data_rev


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def fit(data: dsl.Input[dsl.Dataset], kfp_run_id: str, model: dsl.Output[dsl.Model]) -> str:
    import os
    from pathlib import Path

    from pipelines.runtime import checkpoint_dir

    ckpt = checkpoint_dir(kfp_run_id, default=os.path.join(model.path, "checkpoints"))
    Path(ckpt).mkdir(parents=True, exist_ok=True)
    rev = (Path(data.path) / "rev.txt").read_text()
    Path(model.path, "weights.txt").write_text(f"trained on {rev}")
    return ckpt


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def score(model: dsl.Input[dsl.Model]) -> float:
    from pathlib import Path

    return float(len(Path(model.path, "weights.txt").read_text()))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def record(value: float) -> str:
    return f"registered {value}"


@dsl.pipeline(name="spf-kube-test")
def tiny_pipeline(
    data_rev: str = "abc123",
    accelerator_type: str = "nvidia.com/gpu",
    accelerator_count: int = 2,
    node_selector: dict = {"cloud.google.com/gke-accelerator": "nvidia-l4"},  # noqa: B006 - KFP default
    tolerations: list = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],  # noqa: B006
    s3_secret_name: str = "spf-s3",
    mlflow_secret_name: str = "spf-mlflow",
) -> None:
    params = {
        "accelerator_type": accelerator_type,
        "accelerator_count": accelerator_count,
        "node_selector": node_selector,
        "tolerations": tolerations,
        "s3_secret_name": s3_secret_name,
        "mlflow_secret_name": mlflow_secret_name,
        "data_rev": data_rev,  # not a platform key: ignored by the hooks
    }
    p = prep(data_rev=data_rev)
    platform.configure_prepare(p, params)
    t = fit(data=p.outputs["out"], kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    platform.configure_train(t, params)
    e = score(model=t.outputs["model"])
    platform.configure_evaluate(e, params)
    r = record(value=e.output)
    platform.configure_register(r, params)


def compile_to(pipeline, path: Path) -> list[dict]:
    """Compile and return the YAML documents (pipeline spec, then the platform spec)."""
    compiler.Compiler().compile(pipeline, package_path=str(path))
    return list(yaml.safe_load_all(path.read_text()))


# ---- a recording stand-in for the KFP v2beta1 REST API on 127.0.0.1 ----------------------------------------------


API = "/apis/v2beta1"


class FakeKfp:
    """Answers the calls our client makes the way the KFP API server does (snake_case JSON, display_name filters)
    and records every request (method, path, query, headers, JSON or raw body) for the tests to inspect."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.multi_user = False
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.experiments: dict[str, dict] = {}
        self.recurring: dict[str, dict] = {}
        self.required_token: str | None = None  # when set, other bearer tokens get 401 like an auth proxy's
        self.fail: dict[tuple[str, str], int] = {}  # (method, path) -> status to answer instead (e.g. 500)
        self._ids = itertools.count(1)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _handle(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw and "json" in (self.headers.get("Content-Type") or "") else None
                except ValueError:
                    body = None
                req = {"method": self.command, "path": url.path, "query": parse_qs(url.query),
                       "headers": {k.lower(): v for k, v in self.headers.items()}, "json": body, "raw": raw}
                owner.requests.append(req)
                status, payload = owner.answer(req)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    @staticmethod
    def _filtered(items: list[dict], query: dict) -> list[dict]:
        if "filter" not in query:
            return items
        preds = json.loads(query["filter"][0]).get("predicates", [])
        for p in preds:
            value = p.get("string_value", p.get("stringValue"))
            items = [i for i in items if i.get(p["key"]) == value]
        return items

    def calls(self, method: str, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]

    def answer(self, req: dict) -> tuple[int, dict]:
        m, path, q, body = req["method"], req["path"], req["query"], req["json"]
        if self.required_token and req["headers"].get("authorization") != f"Bearer {self.required_token}":
            return 401, {"error": "Unauthorized", "code": 16, "message": "request is not authenticated"}
        if (m, path) in self.fail:
            status = self.fail[(m, path)]
            return status, {"error": f"fake KFP: injected {status}", "code": 13,
                            "message": f"injected failure for {m} {path}"}
        if path == f"{API}/healthz":
            return 200, {"multi_user": self.multi_user}
        if path == f"{API}/pipelines" and m == "GET":
            return 200, {"pipelines": self._filtered(list(self.pipelines.values()), q)}
        if path == f"{API}/pipelines" and m == "POST":
            pid = self.new_id("pipeline")
            self.pipelines[pid] = {**body, "pipeline_id": pid}
            self.versions[pid] = []
            return 200, self.pipelines[pid]
        if path == f"{API}/pipelines/upload_version" and m == "POST":
            pid = q["pipelineid"][0]
            version = {"pipeline_id": pid, "pipeline_version_id": self.new_id("version"),
                       "display_name": q["name"][0]}
            self.versions[pid].append(version)
            return 200, version
        if path.startswith(f"{API}/pipelines/") and path.endswith("/versions") and m == "GET":
            pid = path.split("/")[4]
            items = self._filtered(list(self.versions.get(pid, [])), q)
            if q.get("sort_by") == ["created_at desc"]:
                items = items[::-1]
            return 200, {"pipeline_versions": items[: int(q.get("page_size", ["10"])[0])]}
        if path == f"{API}/experiments" and m == "GET":
            return 200, {"experiments": self._filtered(list(self.experiments.values()), q)}
        if path == f"{API}/experiments" and m == "POST":
            eid = self.new_id("experiment")
            self.experiments[eid] = {**body, "experiment_id": eid}
            return 200, self.experiments[eid]
        if path == f"{API}/runs" and m == "POST":
            return 200, {**body, "run_id": self.new_id("run"), "state": "PENDING"}
        if path == f"{API}/recurringruns" and m == "GET":
            items = [r for r in self.recurring.values()
                     if not q.get("experiment_id") or r.get("experiment_id") == q["experiment_id"][0]]
            return 200, {"recurringRuns": self._filtered(items, q)}  # the API really spells it so
        if path == f"{API}/recurringruns" and m == "POST":
            rid = self.new_id("recurring")
            self.recurring[rid] = {**body, "recurring_run_id": rid}
            return 200, self.recurring[rid]
        if path.startswith(f"{API}/recurringruns/") and m == "DELETE":
            self.recurring.pop(path.rsplit("/", 1)[1], None)
            return 200, {}
        return 404, {"error": f"fake KFP: no route for {m} {path}", "code": 5}


# ---- a minimal kustomize for the features infra/k8s uses (fallback when no kustomize binary exists) ----------------


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
                  "CustomResourceDefinition"}


def _smp(base, patch):
    """Strategic-merge subset: maps merge, lists of named maps merge by name, other lists replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _smp(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and base and patch
            and all(isinstance(i, dict) and "name" in i for i in base + patch)):
        out = [copy.deepcopy(i) for i in base]
        for item in patch:
            idx = next((n for n, b in enumerate(out) if b["name"] == item["name"]), None)
            if idx is None:
                out.append(copy.deepcopy(item))
            else:
                out[idx] = _smp(out[idx], item)
        return out
    return copy.deepcopy(patch)


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if "template" in spec else spec
    return pod.get("containers", []) + pod.get("initContainers", [])


def render_kustomization(folder: Path) -> list[dict]:
    """resources, namespace, labels (includeSelectors: false), patches (strategic merge), images."""
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "resources", "namespace", "labels", "patches", "images"}
    unknown = set(kust) - known
    assert not unknown, f"{folder}: kustomize features the test renderer lacks: {unknown}"
    docs: list[dict] = []
    for res in kust.get("resources", []):
        path = (folder / res).resolve()
        if path.is_dir():
            docs += render_kustomization(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch_ref in kust.get("patches", []):
        for patch in yaml.safe_load_all((folder / patch_ref["path"]).read_text()):
            hits = [i for i, d in enumerate(docs)
                    if d["kind"] == patch["kind"] and d["metadata"]["name"] == patch["metadata"]["name"]]
            assert len(hits) == 1, f"patch {patch_ref['path']} matches {len(hits)} resources"
            docs[hits[0]] = _smp(docs[hits[0]], patch)
    for label in kust.get("labels", []):
        assert label.get("includeSelectors") is False, "renderer only supports includeSelectors: false"
        for d in docs:
            d["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in kust.get("images", []):
        for d in docs:
            for c in _containers(d):
                name = c["image"].split("@")[0].rsplit(":", 1)[0] if ":" in c["image"].split("/")[-1] else c["image"]
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    ns = kust.get("namespace")
    if ns:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = ns
            if d["kind"] in ("RoleBinding", "ClusterRoleBinding"):
                for s in d.get("subjects", []):
                    if s["kind"] == "ServiceAccount":
                        s["namespace"] = ns
    return docs


def kubectl_kustomize(folder: Path) -> list[dict] | None:
    """The real renderer when a kubectl (built-in kustomize) or kustomize binary is on PATH, else None."""
    if shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(folder)]
    elif shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(folder)]
    else:
        return None
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]
