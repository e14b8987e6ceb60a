"""Keep credentials out of everything we write to MLflow (params, tags, metrics names, the model card).

Lineage arrives from pipelines, environment variables and ``--lineage k=v`` on a command line, so a token can slip
in by accident. Anything whose KEY names a secret, or whose VALUE looks like one (URL passwords, AWS key ids,
bearer tokens, long high-entropy strings), is replaced before it leaves the process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

REDACTED = "***"

_SECRET_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential|auth|session[_-]?key|"
    r"signature|cookie)", re.IGNORECASE,
)
_SECRET_VALUE = [
    re.compile(r"://[^/\s:@]+:[^/\s@]+@"),                 # scheme://user:password@host
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),            # AWS access key id
    re.compile(r"\bBearer\s+\S+", re.IGNORECASE),
    re.compile(r"\b(ghp|gho|ghs|github_pat|hf|glpat|xox[abpr])_[A-Za-z0-9_]{16,}"),  # GitHub/HF/GitLab/Slack tokens
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?<![0-9a-fA-F])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[0-9])"
               r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"),     # AWS secret access key shape (mixed case, 40 chars)
]
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+):[^/\s@]+@")


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def looks_secret(value: str) -> bool:
    return any(p.search(value) for p in _SECRET_VALUE)


def scrub_value(value: str) -> str:
    """Redact the secret part of a value; a URL keeps its host so the tag still says where things came from."""
    if _URL_PASSWORD.search(value) and not any(p.search(_URL_PASSWORD.sub(r"\1:***@", value))
                                                for p in _SECRET_VALUE[1:]):
        return _URL_PASSWORD.sub(r"\1:***@", value)
    return REDACTED if looks_secret(value) else value


def scrub(mapping: Mapping[str, object]) -> tuple[dict[str, str], list[str]]:
    """Return (clean str->str dict, names of the keys that were redacted)."""
    clean: dict[str, str] = {}
    redacted: list[str] = []
    for k, v in mapping.items():
        text = "" if v is None else str(v)
        if is_secret_key(str(k)):
            clean[str(k)] = REDACTED
            redacted.append(str(k))
            continue
        new = scrub_value(text)
        if new != text:
            redacted.append(str(k))
        clean[str(k)] = new
    return clean, redacted
