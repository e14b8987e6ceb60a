"""Keep credentials out of everything we write to MLflow (params, tags, metrics names, the model card, reports).

Lineage arrives from pipelines, environment variables and ``--lineage k=v`` on a command line, so a token can slip
in by accident. Anything whose KEY names a secret, or whose VALUE looks like one, is replaced before it leaves the
process. Recognising credentials is detect-secrets' job (Yelp's scanner: AWS, GitHub, GitLab, Slack, private keys,
basic-auth URLs, JWTs, ...; its entropy and keyword heuristics are left out: they flag ordinary hashes and HTML).
We add the few shapes it lacks: Hugging Face and shorter prefixed tokens (ghp_, glpat_, xoxb_, ...), ``Bearer``
headers, and, for short values only, a bare AWS secret access key (40 mixed-case characters): over a whole document
that shape matches base64 image data and paths, so documents (``find_secrets``) rely on detect-secrets' contextual
AWS rule instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

REDACTED = "***"

_SECRET_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential|auth|session[_-]?key|"
    r"signature|cookie)", re.IGNORECASE,
)
_EXTRA_PATTERNS = [
    # prefixed tokens of any length (detect-secrets wants GitHub's exact 36; HF tokens it does not know)
    ("prefixed token", re.compile(r"\b(ghp|gho|ghs|ghu|ghr|github_pat|hf|glpat|xox[abpr])_[A-Za-z0-9_]{16,}")),
    ("Bearer token", re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)),
    ("URL password", re.compile(r"://[^/\s:@'\"<>]+:(?!\*\*\*@)[^/\s@'\"<>]+@")),
]
_AWS_SECRET_SHAPE = re.compile(r"(?<![0-9a-fA-F])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[0-9])"
                               r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])")
_SHORT_VALUE = 1000
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+):[^/\s@]+@")
#: detect-secrets plugins that match a credential's own format (no entropy or keyword guessing).
_DETECT_SECRETS_PLUGINS = (
    "AWSKeyDetector", "ArtifactoryDetector", "AzureStorageKeyDetector", "BasicAuthDetector", "CloudantDetector",
    "DiscordBotTokenDetector", "GitHubTokenDetector", "GitLabTokenDetector", "IbmCloudIamDetector",
    "IbmCosHmacDetector", "JwtTokenDetector", "MailchimpDetector", "NpmDetector", "OpenAIDetector",
    "PrivateKeyDetector", "PypiTokenDetector", "SendGridDetector", "SlackDetector", "SoftlayerDetector",
    "SquareOAuthDetector", "StripeDetector", "TelegramBotTokenDetector", "TwilioKeyDetector",
)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def find_secrets(text: str) -> list[str]:
    """Kinds of credential found in ``text`` (a document: scanned line by line), empty when none."""
    try:
        from detect_secrets.core.scan import scan_line
        from detect_secrets.settings import transient_settings
    except ImportError as e:  # an environment set up before it became a dependency
        from spf_lib.errors import SpfError

        raise SpfError("detect-secrets is not installed (a dependency since issue 14): run `make setup`") from e

    found: list[str] = [name for name, pattern in _EXTRA_PATTERNS if pattern.search(text)]
    with transient_settings({"plugins_used": [{"name": n} for n in _DETECT_SECRETS_PLUGINS],
                             "filters_used": []}):
        for line in text.splitlines():
            found += [s.type for s in scan_line(line) if s.type not in found]
    return found


def looks_secret(value: str) -> bool:
    """A param/tag/lineage value that holds a credential (also a bare AWS secret key, which only short values may
    be checked for)."""
    if len(value) <= _SHORT_VALUE and _AWS_SECRET_SHAPE.search(value):
        return True
    return bool(find_secrets(value))


def scrub_value(value: str) -> str:
    """Redact the secret part of a value; a URL keeps its host so the tag still says where things came from."""
    if _URL_PASSWORD.search(value) and not looks_secret(_URL_PASSWORD.sub(r"\1:***@", value)):
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
