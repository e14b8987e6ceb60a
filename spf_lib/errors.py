"""One exception type for bad input: the CLI prints its message as one line and exits non-zero."""

from __future__ import annotations

import re


class SpfError(Exception):
    """A user-facing error. The message names the file or field and what is wrong with it."""

    exit_code = 2


_URL_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@:]+(?::[^/\s@]*)?@")
_TOKENS = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"(\bBearer\s+)\S+", re.IGNORECASE),
    re.compile(r"\b(ghp|gho|ghs|github_pat|hf|glpat|xox[abpr])_[A-Za-z0-9_]{16,}"),
    re.compile(r"((?:password|passwd|secret|token|api[_-]?key|access[_-]?key)\s*[=:]\s*)[^\s,;&'\"]+", re.IGNORECASE),
]


def redact_text(text: str) -> str:
    """Credentials out of free text (error lines, log lines, metadata): ``https://user:pw@host`` keeps scheme and
    host, tokens become ``***``. Cheap enough to run on every message the CLI prints or logs."""
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    for pat in _TOKENS:
        text = pat.sub(lambda m: (m.group(1) if pat.groups and m.group(1) and not m.group(1).isalnum()
                                  and m.group(1)[-1] in " =:\t" else "") + "***", text)
    return text


def _redacted_exc_text(record) -> None:
    """A record's traceback carries its exceptions' messages (a failed request names its URL): when that text holds a
    credential, the record keeps only the redacted text (``exc_text``, which logging's Formatter prints) and drops
    the live exception, so no handler (DVC's own formats ``exc_info`` itself) can print the original."""
    import traceback

    try:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    except Exception:  # noqa: BLE001 - a broken exc_info is the logging module's to report
        return
    clean = redact_text(text)
    if clean != text:
        record.exc_info, record.exc_text = None, clean


def install_log_redaction() -> None:
    """From now on every log record in this process is formatted at creation and redacted, whatever handler later
    prints it: messages (``https://user:pw@host`` from a library's debug line) and tracebacks. Idempotent; the CLI
    installs it at start, the DVC layer when it is called (a KFP component runs no CLI)."""
    import logging

    base = logging.getLogRecordFactory()
    if getattr(base, "_spf_scrub", False):
        return

    def factory(*args, **kwargs):
        record = base(*args, **kwargs)
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the logging module's to report
            return record
        clean = redact_text(msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[1] is not None:
            _redacted_exc_text(record)
        return record

    factory._spf_scrub = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
