"""The lineage keys of docs/internals.md, completed and cleaned before they become run and version tags.

Every key is always present (``unknown`` when no stage told us) so `spf lineage` prints the same shape for every
version and a missing key is visible instead of silently absent.
"""

from __future__ import annotations

import logging

from spf_lib.errors import SpfError
from spf_lib.lineage import LINEAGE_KEYS
from spf_lib.lineage import code_revision as code_rev
from spf_lib.registry.scrub import scrub

log = logging.getLogger(__name__)

KEYS = LINEAGE_KEYS
UNKNOWN = "unknown"
MAX_TAG_VALUE = 5000


def is_real(value: str | None) -> bool:
    """False for empty/unknown values and for KFP placeholders that were never substituted."""
    return bool(value) and value != UNKNOWN and "{{" not in value and "$(" not in value


def complete(lineage: dict | None, *, base_model: str, method: str) -> dict[str, str]:
    """Known keys filled (``unknown`` when absent), extras kept, secrets scrubbed, values fit MLflow's limits."""
    lineage = dict(lineage or {})
    for k in lineage:
        if not isinstance(k, str) or not k or k.startswith("mlflow.") or len(k) > 250:
            raise SpfError(f"lineage key {k!r}: must be a non-empty string up to 250 chars, not mlflow.*")
    out: dict[str, str] = {k: UNKNOWN for k in KEYS}
    out.update({k: str(v) for k, v in lineage.items() if v is not None and str(v) != ""})
    out.setdefault("base_model", base_model)
    if out["base_model"] == UNKNOWN:
        out["base_model"] = base_model
    if out["method"] == UNKNOWN:
        out["method"] = method
    if out["code_rev"] == UNKNOWN:
        out["code_rev"] = code_rev()
    clean, redacted = scrub(out)
    if redacted:
        log.warning("lineage: redacted values of %s (they looked like credentials)", ", ".join(sorted(redacted)))
    return {k: v[:MAX_TAG_VALUE] for k, v in clean.items()}
