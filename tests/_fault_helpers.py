"""Fault injection between us and a real `mlflow server`: a loopback HTTP proxy that forwards every request and can
drop the reply of a chosen one (the server did the work; the client never hears), or kill and restart the server
right after it did the work. Plus the registry invariants every fault must preserve."""

from __future__ import annotations

import http.client
import socketserver
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

MUTATING = ("POST", "PUT", "PATCH", "DELETE")
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
       "content-length", "host"}


@dataclass
class Fault:
    """Act on the ``index``-th mutating request (0-based) seen after ``arm``: ``drop`` its reply, or ``kill`` the
    server after it answered (the reply is dropped too) and restart it in the background."""

    index: int
    kind: str = "drop"  # drop | kill


@dataclass
class ReplyDroppingProxy:
    upstream_port: int
    server: object = None  # MlflowServer, for kill faults
    port: int = 0
    seen: list[tuple[str, str]] = field(default_factory=list)
    fired: list[tuple[str, str, str]] = field(default_factory=list)
    fault: Fault | None = None
    restarted: threading.Event = field(default_factory=threading.Event)
    _count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> ReplyDroppingProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                action = proxy._decide(self.command, self.path)
                up = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                    up.request(self.command, self.path, body=body, headers=headers)
                    resp = up.getresponse()
                    data = resp.read()
                except OSError:
                    self.close_connection = True
                    self.connection.close()
                    return
                finally:
                    up.close()
                if action is not None:
                    if action == "kill":
                        proxy.server.stop()
                        proxy.restarted.clear()
                        threading.Thread(target=lambda: (proxy.server.start(), proxy.restarted.set()),
                                         daemon=True).start()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    self.connection.close()
                    return
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self, fault: Fault | None) -> None:
        with self._lock:
            self.fault, self._count, self.seen, self.fired = fault, 0, [], []

    def _decide(self, method: str, path: str) -> str | None:
        with self._lock:
            if method not in MUTATING:
                return None
            self.seen.append((method, path.split("?")[0]))
            i = self._count
            self._count += 1
            if self.fault is not None and i == self.fault.index:
                self.fired.append((self.fault.kind, method, path.split("?")[0]))
                return self.fault.kind
            return None

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def registry_state(client, name: str) -> dict:
    """Aliases, history, journal and versions of one registered model."""
    import json

    from spf_lib.registry.champion_state import HISTORY_TAG, OP_TAG

    rm = client.get_registered_model(name)
    aliases = {}
    for a in ("champion", "challenger", "previous-champion"):
        try:
            aliases[a] = str(client.get_model_version_by_alias(name, a).version)
        except Exception:  # noqa: BLE001 - absent
            aliases[a] = None
    history = [v for v in rm.tags.get(HISTORY_TAG, "").split(",") if v]
    op = json.loads(rm.tags[OP_TAG]) if OP_TAG in rm.tags else None
    versions = client.search_model_versions(f"name = '{name}'")
    return {"aliases": aliases, "history": history, "op": op,
            "versions": sorted(int(v.version) for v in versions),
            "keys": [v.tags.get("spf.registration_key") for v in versions]}


def check_consistent(state: dict) -> list[str]:
    """The invariants: champion heads the history, previous-champion is the one before it, the challenger is never
    the champion, and no change is left half-done."""
    problems = []
    a, h = state["aliases"], state["history"]
    if h and a["champion"] != h[-1]:
        problems.append(f"champion {a['champion']} != history head {h[-1]} ({h})")
    if not h and a["champion"] is not None:
        problems.append(f"champion {a['champion']} without history")
    want_prev = h[-2] if len(h) >= 2 else None
    if a["previous-champion"] != want_prev:
        problems.append(f"previous-champion {a['previous-champion']} != {want_prev} (history {h})")
    if a["challenger"] is not None and a["challenger"] == a["champion"]:
        problems.append(f"challenger == champion == {a['champion']}")
    if state["op"] is not None and state["op"].get("state") != "done":
        problems.append(f"journal left {state['op'].get('state')}: {state['op']}")
    keys = [k for k in state["keys"] if k]
    if len(keys) != len(set(keys)):
        problems.append(f"a registration made more than one version: {state['keys']}")
    return problems


def running_runs(client, experiment_name: str = "spf-portrait") -> list[str]:
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        return []
    return [r.info.run_id for r in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")]


def no_lock_left(client, name: str) -> bool:
    from spf_lib.registry.promotion_lock import LOCK_SUFFIX

    try:
        client.get_registered_model(name + LOCK_SUFFIX)
        return False
    except Exception:  # noqa: BLE001 - absent
        return True


def write_report(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
