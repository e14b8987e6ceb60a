"""Evaluation metrics as the registry sees them: a number, or explicitly unavailable with a reason.

The evaluation stage writes ``{name: float | None, ..., "unavailable": {name: reason}}``. A metric that could not
be computed must stay distinguishable from one that was never asked for: the gate reports both differently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from spf_lib.errors import SpfError

TAG_PREFIX = "metric."
UNAVAILABLE_PREFIX = "unavailable: "
EVAL_PREFIX = "eval/"


@dataclass(frozen=True)
class Metrics:
    values: dict[str, float | None] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def as_tags(self) -> dict[str, str]:
        tags = {f"{TAG_PREFIX}{k}": repr(float(v)) for k, v in self.values.items() if v is not None}
        for k in set(self.values) | set(self.unavailable):
            if self.values.get(k) is None:
                tags[f"{TAG_PREFIX}{k}"] = UNAVAILABLE_PREFIX + self.unavailable.get(k, "no value")[:500]
        return tags

    def subset(self, names: set[str]) -> Metrics:
        return Metrics({k: v for k, v in self.values.items() if k in names},
                       {k: v for k, v in self.unavailable.items() if k in names})

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Metrics:
        values: dict[str, float | None] = {}
        unavailable: dict[str, str] = {}
        for k, v in tags.items():
            if not k.startswith(TAG_PREFIX):
                continue
            name = k[len(TAG_PREFIX):]
            if v.startswith(UNAVAILABLE_PREFIX):
                values[name] = None
                unavailable[name] = v[len(UNAVAILABLE_PREFIX):]
                continue
            try:
                values[name] = float(v)
            except ValueError:
                values[name] = None
                unavailable[name] = f"tag value {v!r} is not a number"
        return cls(values, unavailable)


def version_metrics(client, mv) -> Metrics:
    """A model version's metrics: its ``metric.*`` tags, completed by its run's metrics for every other name.

    Versions carry as tags only what the default gate and the card need; a rule on any other metric reads it
    from the run the version links to (the evaluation or the registration logged every number there).
    """
    tagged = Metrics.from_tags(dict(mv.tags))
    run_id = getattr(mv, "run_id", None)
    if not run_id:
        return tagged
    try:
        run_metrics = client.get_run(run_id).data.metrics
    except Exception:  # a deleted run: the tags are what is left
        return tagged
    known = set(tagged.values) | set(tagged.unavailable)
    extra: dict[str, float | None] = {}
    for k, v in run_metrics.items():  # the evaluation logs "eval/<name>"; a registration alone logs "<name>"
        name = k.removeprefix(EVAL_PREFIX)
        if "/" not in name and name not in known:
            extra[name] = float(v)
    return Metrics({**extra, **tagged.values}, dict(tagged.unavailable))


def _numeric_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def eval_set_lineage(raw: dict) -> dict[str, str]:
    """The evaluation set's identity (metrics.json ``eval_set``) as lineage: which yardstick produced the numbers."""
    es = raw.get("eval_set") if isinstance(raw, dict) else None
    return {f"eval_set_{k}": str(es[k]) for k in ("name", "version", "hash") if isinstance(es, dict) and k in es}


def parse_metrics(raw: dict, *, source: str) -> Metrics:
    """Numbers (bools count as 0/1) and nulls of ``raw`` (metrics.json shape); structured entries and descriptive
    text are not metrics and are skipped; a number written as a string is an error naming ``source`` and key."""
    if not isinstance(raw, dict):
        raise SpfError(f"{source}: expected an object of metric name -> number")
    unavailable = raw.get("unavailable") or {}
    if not isinstance(unavailable, dict):
        raise SpfError(f"{source}: 'unavailable' must be an object of metric name -> reason")
    unavailable = dict(unavailable)
    values: dict[str, float | None] = {}
    for k, v in raw.items():
        if k == "unavailable":
            continue
        if not isinstance(k, str) or not k or len(k) > 200:
            raise SpfError(f"{source}: metric name {k!r} is not a short string")
        if isinstance(v, (dict, list)):  # structured entries of metrics.json (pollution_detail, eval_set, ...)
            continue
        if isinstance(v, str):
            if _numeric_text(v):
                raise SpfError(f"{source}: metric {k!r} = {v!r} is a string; write the number without quotes")
            continue  # descriptive text (id_scale, ...)
        if v is None:
            values[k] = None
        elif not isinstance(v, (int, float)):
            raise SpfError(f"{source}: metric {k!r} = {v!r} is not a number or null")
        elif not math.isfinite(float(v)):
            values[k] = None
            unavailable.setdefault(k, f"non-finite value {v}")
        else:
            values[k] = float(v)
    return Metrics(values, {str(k): str(r) for k, r in unavailable.items()})
