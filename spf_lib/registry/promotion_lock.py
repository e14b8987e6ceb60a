"""One promote/rollback per model at a time: a lock that is a registered model ``<name>--spf-lock``.

Creating a registered model is the one atomic compare-and-set MLflow offers; its tags name the holder, and a holder
that died on this host, or whose lease expired, is taken over. A tag on the model itself would hide better in
MLflow's UI, but MLflow has no conditional tag write: two promotes could both "take" it. So the lock stays a model
that exists only while a command runs, and its description says what it is and that it is safe to ignore.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator

from spf_lib.errors import SpfError
from spf_lib.registry.champion_state import utc_now

log = logging.getLogger(__name__)

LOCK_SUFFIX = "--spf-lock"
LOCK_LEASE_S = float(os.environ.get("SPF_PROMOTE_LOCK_LEASE", "300"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _lock_is_stale(tags: dict[str, str]) -> str | None:
    """Why the holder can be taken over (it died on this host, or its lease ran out), or None if it holds."""
    host, _, pid = tags.get("spf.lock_owner", "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        return f"its holder (pid {pid} on this host) is gone"
    try:
        if time.time() > float(tags.get("spf.lock_expires", "0")):
            return "its lease expired"
    except ValueError:
        return "its lease is unreadable"
    return None


def _lock_description(name: str, what: str) -> str:
    """What MLflow's UI shows for the lock model (it appears in the model list while a promote/rollback runs)."""
    return (f"Not a model: the lock of one `spf {what}` of {name!r}, in progress since {utc_now()}. Safe to ignore; "
            "it is deleted when that command ends. If it stays (the command was killed), the next promote/rollback "
            f"of {name!r} takes it over once its holder is gone or its lease (SPF_PROMOTE_LOCK_LEASE, now "
            f"{LOCK_LEASE_S:.0f} s) has run out. Do not delete it while a command runs.")


def _acquire(client, name: str, token: str, what: str) -> None:
    from mlflow.exceptions import MlflowException

    lock = name + LOCK_SUFFIX
    for _ in range(3):
        tags = {"spf.lock_token": token, "spf.lock_owner": f"{socket.gethostname()}:{os.getpid()}",
                "spf.lock_what": what, "spf.lock_for": name, "spf.lock_since": utc_now(),
                "spf.lock_expires": f"{time.time() + LOCK_LEASE_S:.0f}"}
        try:
            client.create_registered_model(lock, tags=tags, description=_lock_description(name, what))
            return
        except MlflowException as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise
        try:
            held = client.get_registered_model(lock).tags
        except MlflowException as e:
            if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code):
                continue  # released meanwhile: try again
            raise
        if held.get("spf.lock_token") == token:
            return  # our own earlier attempt created it and its reply was lost
        stale = _lock_is_stale(held)
        if stale is None:
            raise SpfError(f"model {name!r}: another {held.get('spf.lock_what', 'promote/rollback')} is in progress "
                           f"({held.get('spf.lock_owner', '?')} since {held.get('spf.lock_since', '?')}); "
                           "run it again when that one has finished")
        log.warning("model %s: taking over the promotion lock (%s)", name, stale)
        _release(client, name, held.get("spf.lock_token", ""))
    raise SpfError(f"model {name!r}: could not take the promotion lock {lock!r}; run it again")


def _release(client, name: str, token: str) -> None:
    from mlflow.exceptions import MlflowException

    lock = name + LOCK_SUFFIX
    try:
        if client.get_registered_model(lock).tags.get("spf.lock_token") != token:
            return  # taken over (our lease ran out): not ours to delete
        client.delete_registered_model(lock)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" not in str(e.error_code):
            raise


@contextlib.contextmanager
def locked(client, name: str, token: str, what: str) -> Iterator[None]:
    _acquire(client, name, token, what)
    ok = False
    try:
        yield
        ok = True
    finally:
        try:
            _release(client, name, token)
        except Exception:  # noqa: BLE001 - the retry (same token) or the next command (stale holder) frees it
            if ok:
                raise
            log.warning("model %s: could not release the promotion lock now; it is freed on the next attempt", name)
