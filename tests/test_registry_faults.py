"""Fault injection over register, promote and rollback against a real `mlflow server`.

Every mutating request a clean command sends is an injection point. For each one, a fresh model goes through the
command while a loopback proxy drops that request's reply (the server did the work, the client never hears), and at
a few points the server is killed right after doing the work and restarted. After each: exactly one version per
registration, champion / challenger / previous-champion consistent with the history, no half-done change, no RUNNING
run, no lock left; when the command failed, running the same command again succeeds and ends in the intended state.

The CI run injects at a representative subset (``_injection_points``): every request of promote; every distinct
request kind of rollback (its every position is swept in-memory by tests/test_rollback_retry.py); every request of
register but the middle ones of a run of artifact uploads (the same PUT, another file). ``SPF_FULL_SWEEP=1`` drops
the reply of every mutating request, as before (tests/README.md).
"""

from __future__ import annotations

import os

import pytest

from tests._fault_helpers import (
    Fault,
    ReplyDroppingProxy,
    check_consistent,
    no_lock_left,
    registry_state,
    running_runs,
)
from tests._registry_helpers import BETTER, GOOD, MlflowServer, lineage_for, lora_adapter, tiny_base  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST = None  # set in the fixture (RetryPolicy needs spf_lib imported)
PATIENT = None
ONE_SHOT = None  # no in-process retry: a lost reply reaches the caller, who runs the command again


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    global FAST, PATIENT, ONE_SHOT
    from spf_lib.registry import RetryPolicy

    ONE_SHOT = RetryPolicy(attempts=1)
    FAST = RetryPolicy(attempts=6, initial_delay=0.05, factor=2.0, max_delay=0.5)
    PATIENT = RetryPolicy(attempts=60, initial_delay=0.5, factor=2.0, max_delay=3.0)  # a restart takes ~11-60 s
    server = MlflowServer(tmp_path_factory.mktemp("faults"))
    server.start()
    proxy = ReplyDroppingProxy(server.port, server).start()
    yield server, proxy
    proxy.stop()
    server.stop()


@pytest.fixture
def client(rig, monkeypatch):
    import mlflow

    server, proxy = rig
    for k in ("MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    # a client that talks to the server directly, for setting up and checking (never through a fault)
    return mlflow.MlflowClient(tracking_uri=server.uri, registry_uri=server.uri), proxy, server


def _seed(direct, name: str, metrics: list[dict]) -> None:
    """Versions with metric tags as registration writes them (promote/rollback read only tags and aliases)."""
    from spf_lib.registry.metrics import parse_metrics

    direct.create_registered_model(name)
    for m in metrics:
        direct.create_model_version(name, "s3://spf-faults/model", tags=parse_metrics(m, source="t").as_tags())


def _run(fn):
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - recorded: the invariants must hold either way
        return None, e


def _checked(direct, name: str, label: str, problems: list[str], *, want: dict) -> None:
    state = registry_state(direct, name)
    for p in check_consistent(state):
        problems.append(f"{label}: {p}")
    got = {k: state["aliases"][k] for k in want}
    if got != want:
        problems.append(f"{label}: aliases {got} != intended {want}")
    if not no_lock_left(direct, name):
        problems.append(f"{label}: promotion lock left behind")


def _promote_case(direct, proxy, name: str, fault: Fault | None, problems: list[str], policy) -> list:
    from spf_lib.registry import promote

    _seed(direct, name, [GOOD, BETTER])
    direct.set_registered_model_alias(name, "challenger", "1")
    promote(name, retry=FAST)  # v1 first champion
    direct.set_registered_model_alias(name, "challenger", "2")
    proxy.arm(fault)
    res, err = _run(lambda: promote(name, retry=policy))
    seen = list(proxy.seen)
    proxy.arm(None)
    label = f"promote fault={fault}"
    if err is not None:
        res, err2 = _run(lambda: promote(name, retry=FAST))
        if err2 is not None or not res.passed:
            problems.append(f"{label}: first try failed ({err}); retry failed too ({err2 or res.message})")
    elif not res.passed:
        problems.append(f"{label}: not promoted: {res.message}")
    _checked(direct, name, label, problems, want={"champion": "2", "previous-champion": "1", "challenger": None})
    return seen


def _rollback_case(direct, proxy, name: str, fault: Fault | None, problems: list[str], policy) -> list:
    """The operator's view: the rollback's reply is lost (one attempt, no in-process retry), so they run the same
    rollback again (same idempotency key) without knowing whether the first went through. The end state must be ONE
    rollback (3 -> 2), whatever the fault, and the repeat says whether it changed anything."""
    from spf_lib.registry import promote, rollback

    _seed(direct, name, [GOOD, BETTER, {**BETTER, "pollution": 0.05}])
    for v in ("1", "2", "3"):
        direct.set_registered_model_alias(name, "challenger", v)
        promote(name, retry=FAST)
    key = f"rollback-{name}"
    proxy.arm(fault)
    res, err = _run(lambda: rollback(name, idempotency_key=key, retry=ONE_SHOT if fault else FAST))
    seen = list(proxy.seen)
    proxy.arm(None)
    label = f"rollback fault={fault}"
    if fault is None and (err is not None or not res.changed):
        problems.append(f"{label}: the clean rollback did not roll back ({err or res.message})")
    again, err2 = _run(lambda: rollback(name, idempotency_key=key, retry=policy))  # always: "did it go through?"
    if err2 is not None:
        problems.append(f"{label}: first try {'failed (' + str(err) + ')' if err else 'succeeded'}; the repeat "
                        f"failed ({err2})")
    elif err is None and again.changed:
        problems.append(f"{label}: the repeat of a rollback that succeeded changed something: {again.message}")
    _checked(direct, name, label, problems, want={"champion": "2", "previous-champion": "1"})
    if registry_state(direct, name)["history"] != ["1", "2"]:
        problems.append(f"{label}: history {registry_state(direct, name)['history']} != ['1', '2']")
    return seen


def _register_case(direct, proxy, adapter, base, name: str, fault: Fault | None, problems: list[str], policy) -> list:
    from spf_lib.registry import register_model

    lin = {k: v for k, v in lineage_for(name, 1, "rev-A").items() if k != "kfp_run_id"}  # the CLI case: no KFP id
    # code_rev is part of the registration (a redeployed image is new lineage); pin it so that a commit in this
    # checkout while the suite runs (it did once: the retry then made a 2nd version) is not mistaken for a fault
    lin["code_rev"] = "fault-suite"
    call = lambda p: register_model(adapter, str(base), metrics=GOOD, lineage=lin, model_name=name, retry=p)  # noqa
    proxy.arm(fault)
    first, err = _run(lambda: call(policy))
    seen = list(proxy.seen)
    proxy.arm(None)
    label = f"register fault={fault}"
    again, err2 = _run(lambda: call(FAST))  # the operator (or KFP) runs the same command again
    if err2 is not None:
        problems.append(f"{label}: retry failed ({err2}); first try: {err}")
    state = registry_state(direct, name)
    if state["versions"] != [1]:
        problems.append(f"{label}: versions {state['versions']} (want exactly [1]); first try: {err}")
    if again is not None and again.version != "1":
        problems.append(f"{label}: retry answered version {again.version}")
    if state["aliases"]["challenger"] != "1":
        problems.append(f"{label}: challenger is {state['aliases']['challenger']}")
    if running := running_runs(direct):
        problems.append(f"{label}: runs left RUNNING: {running}")
    return seen


FULL_SWEEP = os.environ.get("SPF_FULL_SWEEP", "") not in ("", "0")


def _is_upload(request: tuple[str, str]) -> bool:
    return request[0] == "PUT" and "/mlflow-artifacts/artifacts/" in request[1]


def _kind(request: tuple[str, str]) -> tuple[str, str]:
    """A request without the run / logged-model ids in its path: the same request in another case."""
    import re

    return request[0], re.sub(r"[0-9a-f]{32}", "*", request[1])


def _injection_points(seen: list[tuple[str, str]], kinds_once: bool = False, full: bool = FULL_SWEEP) -> list[int]:
    """The requests whose reply is dropped: all of them with ``full``; else all but the middle ones of a run of
    artifact uploads (first and last kept: one file's PUT is another's), and with ``kinds_once`` only the first
    request of each kind (method + path), for a command whose every position is swept in-memory elsewhere."""
    if full:
        return list(range(len(seen)))
    if kinds_once:
        first: dict[tuple[str, str], int] = {}
        for i, request in enumerate(seen):
            first.setdefault(_kind(request), i)
        return sorted(first.values())
    return [i for i in range(len(seen)) if not (
        _is_upload(seen[i]) and 0 < i < len(seen) - 1 and _is_upload(seen[i - 1]) and _is_upload(seen[i + 1]))]


def test_the_ci_subset_keeps_every_kind_of_request():
    """The subset rule itself: no kind of request (method + path, uploads as one kind) is left out of CI."""
    up = [("PUT", f"/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/{f}") for f in "abcd"]
    seen = [("POST", "/runs/create"), *up[:3], ("POST", "/logged-models"), up[3], ("POST", "/runs/update")]
    assert _injection_points(seen, full=True) == list(range(7))
    assert _injection_points(seen) == [0, 1, 3, 4, 5, 6]  # the 2nd of three uploads in a row is the one left out
    tags = [("POST", "/create"), ("POST", "/set-tag"), ("POST", "/set-tag"), ("POST", "/alias"), ("POST", "/set-tag")]
    assert _injection_points(tags, kinds_once=True) == [0, 1, 3]
    for points in (_injection_points(seen), _injection_points(tags, kinds_once=True)):
        assert points == sorted(set(points))


def _sweep(case, label: str, direct, proxy, report: list[str], problems: list[str], kills: list[int],
           kinds_once: bool = False) -> tuple[int, list[tuple[str, str]]]:
    """Count the clean command's mutating requests, then drop the replies of ``_injection_points`` once each
    (checking that each drop hit the request it meant); kill the server at ``kills``. Returns the number of
    injections and the clean run's requests."""
    import time

    t0 = time.perf_counter()
    seen = case(f"{label}-clean", None, FAST)
    n = len(seen)
    assert n > 0, f"{label}: the clean run sent no mutating request through the proxy"
    assert not problems, problems
    t_clean = time.perf_counter() - t0
    points = _injection_points(seen, kinds_once)
    for i in points:
        hit = case(f"{label}-d{i}", Fault(i, "drop"), FAST)
        if [_kind(r) for r in hit[:i + 1]] != [_kind(r) for r in seen[:i + 1]]:
            problems.append(f"{label}-d{i}: the drop was meant for {seen[i]}, the case sent {hit[:i + 1][-1:]}"
                            " there (the clean run's requests are not every case's)")
    t_drops = time.perf_counter() - t0 - t_clean
    for i in kills:
        case(f"{label}-k{i}", Fault(min(i, n - 1), "kill"), PATIENT)
        proxy.restarted.wait(120)
    report.append(f"{label}: clean run {t_clean:.1f} s, {len(points)} drop cases {t_drops:.0f} s, "
                  f"{len(kills)} kill cases {time.perf_counter() - t0 - t_clean - t_drops:.0f} s")
    tried = len(points) + len(kills)
    subset = "" if len(points) == n else f" (CI subset {points}; SPF_FULL_SWEEP=1: all {n})"
    report.append(f"{label}: {n} mutating requests, {tried} injections ({len(points)} dropped replies{subset}, "
                  f"{len(kills)} kills) in {time.perf_counter() - t0:.0f} s")
    return tried, seen


def test_promote_and_rollback_under_every_fault(client, capsys):
    direct, proxy, _server = client
    problems: list[str] = []
    report: list[str] = []
    tried, _ = _sweep(lambda n, f, p: _promote_case(direct, proxy, n, f, problems, p), "promote", direct, proxy,
                      report, problems, kills=[])
    # rollback: every position is swept in-memory (tests/test_rollback_retry.py); here each kind of request once
    tried += _sweep(lambda n, f, p: _rollback_case(direct, proxy, n, f, problems, p), "rollback", direct, proxy,
                    report, problems, kills=[5], kinds_once=True)[0]
    with capsys.disabled():
        print("\n" + "\n".join(report) + f"\ninjections: {tried}, failures: {len(problems)}")
    assert not problems, "\n".join(problems)


def test_register_under_every_fault(client, lora_adapter, tiny_base, capsys):  # noqa: F811
    direct, proxy, _server = client
    problems: list[str] = []
    report: list[str] = []
    from spf_lib.registry.session import mlflow_session, resolve_experiment_id

    # the experiment first, as the first registration would make it: then the clean run's requests are every
    # case's (experiments/create is sent once per server, never by a later case)
    with mlflow_session() as settings:
        resolve_experiment_id(settings)
    tried, seen = _sweep(lambda n, f, p: _register_case(direct, proxy, lora_adapter, tiny_base, n, f, problems, p),
                         "register", direct, proxy, report, problems, kills=[])
    # one kill, at the model-version creation: the version exists, the client never heard of it
    idx = next(i for i, (m, p) in enumerate(seen) if p.endswith("/model-versions/create"))
    _register_case(direct, proxy, lora_adapter, tiny_base, "register-kill", Fault(idx, "kill"), problems, PATIENT)
    proxy.restarted.wait(120)
    with capsys.disabled():
        print("\n" + "\n".join(report) + f"\n+1 kill at model-versions/create (request {idx})"
              f"\ninjections: {tried + 1}, failures: {len(problems)}")
    assert not problems, "\n".join(problems)


def test_two_promotes_at_once_20_trials(rig, monkeypatch, capsys):
    """Two `promote` calls start together (a barrier) against the real server, 20 times: exactly one moves the
    champion; the other answers with one line (the lock is held, or: already champion) and nothing is doubled."""
    import threading

    import mlflow

    from spf_lib.errors import SpfError
    from spf_lib.registry import promote
    from spf_lib.registry.champion_state import HISTORY_TAG
    from spf_lib.registry.metrics import parse_metrics

    server, _proxy = rig
    for k in ("MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    direct = mlflow.MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)
    problems, answers = [], []
    for trial in range(20):
        name = f"concurrent-{trial}"
        direct.create_registered_model(name, tags={HISTORY_TAG: "1"})
        for m in (GOOD, BETTER):
            direct.create_model_version(name, "s3://spf-faults/model", tags=parse_metrics(m, source="t").as_tags())
        direct.set_registered_model_alias(name, "champion", "1")
        direct.set_registered_model_alias(name, "challenger", "2")
        barrier = threading.Barrier(2)
        out: list = [None, None]

        def go(i):
            barrier.wait()
            try:
                out[i] = promote(name, retry=FAST)
            except SpfError as e:
                out[i] = e

        threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        moved = [o for o in out if not isinstance(o, SpfError) and o is not None and o.passed
                 and o.champion_before == "1" and o.champion_after == "2"]
        other = [o for o in out if o not in moved]
        if len(moved) != 1 or len(other) != 1:
            problems.append(f"trial {trial}: {out}")
            continue
        line = str(other[0]) if isinstance(other[0], SpfError) else other[0].message
        answers.append("lock" if "in progress" in line else "already" if "already champion" in line else line)
        if "\n" in line or answers[-1] not in ("lock", "already"):
            problems.append(f"trial {trial}: loser said {line!r}")
        state = registry_state(direct, name)
        problems += [f"trial {trial}: {p}" for p in check_consistent(state)]
        if state["aliases"] != {"champion": "2", "challenger": None, "previous-champion": "1"}:
            problems.append(f"trial {trial}: aliases {state['aliases']}")
        if not no_lock_left(direct, name):
            problems.append(f"trial {trial}: lock left behind")
    with capsys.disabled():
        print(f"\ntwo promotes at once: 20 trials, loser answers {sorted(set(answers))} "
              f"({answers.count('lock')} lock, {answers.count('already')} already-champion), "
              f"failures: {len(problems)}")
    assert not problems, "\n".join(problems)


def test_rollback_to_a_version_and_by_key_are_idempotent(client, capsys):
    """`--to VERSION` and `--idempotency-key`: the same rollback again changes nothing and says so; a plain
    rollback is one step each time (the documented default)."""
    from spf_lib.cli.main import main
    from spf_lib.errors import SpfError
    from spf_lib.registry import promote, rollback

    direct, _proxy, _server = client
    name = "rollback-idem"
    _seed(direct, name, [GOOD, BETTER, {**BETTER, "pollution": 0.05}, {**BETTER, "pollution": 0.04}])
    for v in ("1", "2", "3", "4"):
        direct.set_registered_model_alias(name, "challenger", v)
        promote(name, retry=FAST)
    capsys.readouterr()  # mlflow's "waiting for model version" lines from seeding

    def cli(*argv):
        with pytest.raises(SystemExit) as e:
            main(["rollback", name, *argv])
        out = capsys.readouterr()
        return int(e.value.code or 0), out.out.strip(), out.err.strip()

    assert cli("--to", "2") == (0, f"{name}: champion rolled back from version 4 to version 2; 'previous-champion' "
                                   "is now version 1", "")
    assert cli("--to", "2") == (0, f"{name}: version 2 is already champion; nothing changed", "")
    state = registry_state(direct, name)
    assert state["history"] == ["1", "2"] and state["aliases"]["champion"] == "2"
    code, _, err = cli("--to", "3")  # cut from the history by the rollback: not an earlier champion any more
    assert code == 2 and "version 3 of 'rollback-idem' was never champion before version 2" in err
    assert len(err.splitlines()) == 1
    assert cli("--to", "x")[2] == "error: --to 'x': a model version number (e.g. 3)"

    first = rollback(name, idempotency_key="ticket-42", retry=FAST)
    assert first.changed and (first.restored, first.demoted) == ("1", "2")
    again = rollback(name, idempotency_key="ticket-42", retry=FAST)
    assert not again.changed and (again.restored, again.demoted) == ("1", "2") and "already done" in again.message
    assert registry_state(direct, name)["aliases"]["champion"] == "1"
    with pytest.raises(SpfError, match="no previous champion"):  # plain: one more step, and there is none
        rollback(name, retry=FAST)
    assert no_lock_left(direct, name) and not check_consistent(registry_state(direct, name))
