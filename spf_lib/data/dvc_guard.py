"""What every call into the DVC layer goes through: no credential leaves it, and DVC's console does not get in the way.

Credentials: a private data repository's token or SSH key comes from the environment (``git_credentials``), never
from a URL that KFP or MLflow would store (``refuse_credentials_in_url``), and every public function of the layer is
``@scrubbed``. Console: ``import dvc`` binds its handlers to the streams of that moment (``rebind_dvc_console``), and
DVC prints hints we act on ourselves (``dvc_silenced``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from spf_lib.errors import SpfError, install_log_redaction, redact_text

log = logging.getLogger(__name__)

# ---- private data repositories ----------------------------------------------------------------------------------
# On a cluster the prepare pod gets these from the Kubernetes Secrets named in pipelines/platform.py; the compiled
# pipeline only names the Secrets. The pipeline parameter data_repo, the lineage tags and every message keep the
# plain URL: the token is added to the clone URL in memory and scrubbed from errors.

GIT_TOKEN_ENV = "SPF_GIT_TOKEN"  # HTTPS: a personal/project access token
GIT_USERNAME_ENV = "SPF_GIT_USERNAME"  # HTTPS user for the token (GitHub: any; GitLab: oauth2); default oauth2
GIT_SSH_DIR_ENV = "SPF_GIT_SSH_DIR"  # SSH: a folder with `ssh-privatekey` (kubernetes.io/ssh-auth) and `known_hosts`


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def quiet_dvc() -> None:
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def rebind_dvc_console() -> None:
    """``import dvc`` binds DVC's console handlers to the sys.stdout / sys.stderr of that moment. A process that
    swaps its streams later (pytest's capture, a notebook, a KFP launcher) leaves them writing to a closed file, and
    DVC turns that logging error into a LoggingException that replaces the real error. Point them at today's
    streams before each call into DVC."""
    import sys

    for name in ("dvc", "dvc_objects", "dvc_data"):
        for h in logging.getLogger(name).handlers:
            if type(h).__name__ == "LoggerHandler" and isinstance(h, logging.StreamHandler):
                want = sys.stderr if h.level >= logging.WARNING else sys.stdout
                if h.stream is not want:
                    with h.lock:  # not setStream(): it flushes the old stream, which may be the closed one
                        h.stream = want


@contextlib.contextmanager
def dvc_silenced(level_while: int = logging.WARNING) -> Iterator[None]:
    """DVC's own loggers print git hints ("To track the changes with git...") that we act on ourselves, and
    dvc_data warns about objects a fresh clone's remote cannot have yet; what DVC prints itself (progress bars,
    hints) is dropped too: our caller reports the outcome in its own words."""
    loggers = [logging.getLogger(name) for name in ("dvc", "dvc_data", "dvc_objects")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level_while, lg.level))
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def scrubbed(fn):
    """Nothing that leaves the DVC layer carries a credential. A DVC remote URL (``.dvc/config``, ``remote_config``,
    ``$SPF_DVC_REMOTE_URL``) or a git remote may hold ``user:password@``, and DVC, fsspec, aiohttp and git put the
    URL into their exceptions and log lines (fsspec logs every request URL at DEBUG). So: log records are redacted
    at creation (``install_log_redaction``); an SpfError's message is redacted and its chained cause is cut when the
    cause's text holds a credential; any other exception whose traceback text holds one becomes a one-line SpfError
    with the credential removed (raising the original would print it in the KFP task log)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import traceback

        install_log_redaction()
        rebind_dvc_console()
        try:
            return fn(*args, **kwargs)
        except SpfError as e:
            text = str(e)
            if redact_text(text) != text:
                e.args = (redact_text(text), *e.args[1:])
            chained = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
            if chained is not None:
                chain = "".join(traceback.format_exception(chained))
                if redact_text(chain) != chain:
                    e.__cause__, e.__context__, e.__suppress_context__ = None, None, True
            raise
        except Exception as e:
            chain = "".join(traceback.format_exception(e))
            if redact_text(chain) == chain:
                raise
            raise SpfError(redact_text(f"{fn.__name__}: {type(e).__name__}: {one_line(e)}")) from None

    return wrapper


def refuse_credentials_in_url(url: str, flag: str) -> None:
    """A password/token inside the URL would be stored by KFP (run parameters) and MLflow (lineage tags)."""
    from urllib.parse import urlsplit

    if "://" in url and urlsplit(url).password:
        raise SpfError(f"{flag}: the URL carries a password or token, which would be stored with the run and the "
                       f"model's lineage; give the URL without it and the token as ${GIT_TOKEN_ENV} (on Kubeflow: "
                       "the spf-git Secret, docs/operations.md)")


@contextlib.contextmanager
def git_credentials(url: str):
    """Yield (URL to clone, redact function). HTTPS + ``$SPF_GIT_TOKEN``: the token goes into the clone URL only.
    SSH + ``$SPF_GIT_SSH_DIR``: ``GIT_SSH_COMMAND`` uses a private copy of the key (a mounted Secret is 0644, which
    ssh refuses) and the Secret's known_hosts, strictly."""
    import shutil
    import tempfile
    from urllib.parse import quote, urlsplit, urlunsplit

    secrets: list[str] = []
    clone_url = url
    token = os.environ.get(GIT_TOKEN_ENV, "").strip()
    parts = urlsplit(url) if "://" in url else None
    if token and parts and parts.scheme in ("http", "https") and not parts.username:
        user = os.environ.get(GIT_USERNAME_ENV, "").strip() or "oauth2"
        clone_url = urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(token, safe='')}@{parts.netloc}"))
        secrets += [token, quote(token, safe="")]

    def redact(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    ssh_dir = Path(os.environ.get(GIT_SSH_DIR_ENV, "")) if os.environ.get(GIT_SSH_DIR_ENV) else None
    key = ssh_dir / "ssh-privatekey" if ssh_dir else None
    is_ssh = (parts is not None and parts.scheme == "ssh") or (parts is None and re.match(r"^[\w.-]+@[\w.-]+:", url))
    if not (key and key.is_file() and is_ssh):
        yield clone_url, redact
        return
    saved = os.environ.get("GIT_SSH_COMMAND")
    tmp = Path(tempfile.mkdtemp(prefix="spf-ssh-"))
    try:
        private = tmp / "id"
        private.touch(mode=0o600)
        private.write_bytes(key.read_bytes())
        known = ssh_dir / "known_hosts"
        if known.is_file():
            host_opts = f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes"
        else:
            log.warning("%s has no known_hosts: the git host's key is accepted unchecked", ssh_dir)
            host_opts = f"-o UserKnownHostsFile={tmp / 'known_hosts'} -o StrictHostKeyChecking=accept-new"
        os.environ["GIT_SSH_COMMAND"] = f"ssh -i {private} -o IdentitiesOnly=yes -o BatchMode=yes {host_opts}"
        yield clone_url, redact
    finally:
        if saved is None:
            os.environ.pop("GIT_SSH_COMMAND", None)
        else:
            os.environ["GIT_SSH_COMMAND"] = saved
        shutil.rmtree(tmp, ignore_errors=True)
