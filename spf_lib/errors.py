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
