"""The promotion gate: a challenger takes `champion` only if its metrics pass rules relative to the champion.

Each rule compares one metric: ``lower`` is better (pollution) or ``higher`` is better (CLIP-T, ID). ``epsilon``
is the tolerated regression against the current champion; ``bound`` is an absolute limit that holds even for the
first model. Every rule set should hold a floor on target response (``clip_t_gain``, or the probe's
``target_rate`` where one exists): without it a model that learned nothing passes every pollution rule. A metric
that is missing or was marked unavailable by the evaluation is never silently treated as a pass: ``on_missing``
says whether it fails the gate (default) or is skipped, and the result says which happened.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spf_lib.errors import SpfError
from spf_lib.registry.metrics import Metrics

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous-champion"


class MetricRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(min_length=1, description="metric name as in the evaluation's metrics.json")
    better: Literal["lower", "higher"] = Field(description="which direction is an improvement")
    epsilon: float | None = Field(default=None, ge=0, description="tolerated regression vs the champion; "
                                  "None = not compared with the champion")
    bound: float | None = Field(default=None, description="absolute limit: max for 'lower', min for 'higher'")

    @model_validator(mode="after")
    def _some_check(self) -> MetricRule:
        if self.epsilon is None and self.bound is None:
            raise ValueError(f"rule for {self.metric!r}: give epsilon, bound or both")
        return self

    def describe(self) -> str:
        op = "<=" if self.better == "lower" else ">="
        parts = []
        if self.epsilon is not None:
            parts.append(f"{self.metric} {op} champion {'+' if self.better == 'lower' else '-'} {self.epsilon:g}")
        if self.bound is not None:
            parts.append(f"{self.metric} {op} {self.bound:g}")
        return " and ".join(parts)


#: The floor on target response: CLIP-T on target prompts must rise by at least this much over the original's
#: (same prompts and seeds). Pollution rules alone promote a model that learned nothing — it changed nothing, so it
#: pollutes nothing (issue 14: a 40-step demo at CLIP-T gain +0.0013 became champion). 0.01 is a few times the
#: seed-to-seed noise of a mean over the default eval set; a tuned model that draws the target clears it.
TARGET_CLIP_GAIN_FLOOR = 0.01


def default_rules() -> list[MetricRule]:
    """Production defaults: it learned the target (absolute floor), it did not pollute (bound + vs champion), it
    kept identity, and it is no worse than the champion on the target."""
    return [
        MetricRule(metric="clip_t_gain", better="higher", bound=TARGET_CLIP_GAIN_FLOOR),
        MetricRule(metric="pollution", better="lower", epsilon=0.01, bound=0.5),
        MetricRule(metric="clip_t", better="higher", epsilon=0.01),
        MetricRule(metric="id_sim", better="higher", bound=0.0),
    ]


class GateRules(BaseModel):
    """The rules file of `spf promote --rules` (YAML or JSON) has exactly these fields."""

    model_config = ConfigDict(extra="forbid")

    rules: list[MetricRule] = Field(default_factory=default_rules)
    on_missing: Literal["fail", "skip"] = "fail"

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[MetricRule]) -> list[MetricRule]:
        names = [r.metric for r in rules]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"metric(s) {dupes} have more than one rule")
        return rules

    @classmethod
    def from_file(cls, path: str | Path) -> GateRules:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise SpfError(f"--rules {p}: no such file")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise SpfError(f"--rules {p}: not valid YAML/JSON ({str(e).splitlines()[0]})") from e
        return cls.parse(raw, source=str(p))

    @classmethod
    def parse(cls, raw: object, *, source: str = "rules") -> GateRules:
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"]) or "(top level)"
            raise SpfError(f"{source}: {where}: {err['msg']} (got {err.get('input')!r})") from e

    def with_rule(self, metric: str, **changes) -> GateRules:
        """Copy with one rule's fields changed (added if absent); the CLI's --pollution-max etc. use this."""
        rules = [r.model_copy() for r in self.rules]
        for i, r in enumerate(rules):
            if r.metric == metric:
                rules[i] = MetricRule.model_validate({**r.model_dump(), **changes})
                break
        else:
            rules.append(MetricRule.model_validate({"metric": metric, **changes}))
        return GateRules(rules=rules, on_missing=self.on_missing)


@dataclass(frozen=True)
class Check:
    metric: str
    passed: bool
    skipped: bool
    reason: str


@dataclass(frozen=True)
class GateVerdict:
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


#: What the evaluation can produce (docs: pollution and its drifts in [0, 1], identity scores in [0, 1], CLIP cosines
#: in [-1, 1]). A value outside is a bug or a hand-edited file: never a win, and never a yardstick for others.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "pollution": (0.0, 1.0), "id_sim": (0.0, 1.0), "id_sim_target": (0.0, 1.0), "id_ref_sim": (0.0, 1.0),
    "clip_t": (-1.0, 1.0), "clip_t_original": (-1.0, 1.0), "clip_i": (-1.0, 1.0), "clip_i_target": (-1.0, 1.0),
    "ssim": (-1.0, 1.0), "pixel_mae": (0.0, 1.0),
}


def metric_range(name: str) -> tuple[float, float] | None:
    if name in METRIC_RANGES:
        return METRIC_RANGES[name]
    return (0.0, 1.0) if name.startswith("pollution_") else None


def out_of_range(name: str, value: float) -> str | None:
    """Why ``value`` is impossible for metric ``name``, or None."""
    rng = metric_range(name)
    if rng is None or rng[0] <= value <= rng[1]:
        return None
    return f"{name}={value:.6g} is outside its possible range [{rng[0]:g}, {rng[1]:g}]"


def _missing(rule: MetricRule, who: str, metrics: Metrics, on_missing: str) -> Check | None:
    if metrics.values.get(rule.metric) is not None:
        return None
    why = metrics.unavailable.get(rule.metric)
    state = f"unavailable ({why})" if why else "missing"
    if on_missing == "skip":
        return Check(rule.metric, True, True, f"{rule.metric}: {who} value {state}; rule skipped (on_missing=skip)")
    return Check(rule.metric, False, False, f"{rule.metric}: {who} value {state}; required by rule "
                 f"'{rule.describe()}' (on_missing=fail)")


def evaluate_gate(rules: GateRules, challenger: Metrics, champion: Metrics | None) -> GateVerdict:
    """Pure decision: no registry access, so every rule outcome is testable on plain numbers."""
    checks: list[Check] = []
    for rule in rules.rules:
        if (miss := _missing(rule, "challenger", challenger, rules.on_missing)) is not None:
            checks.append(miss)
            continue
        value = float(challenger.values[rule.metric])  # type: ignore[arg-type]
        if (bad := out_of_range(rule.metric, value)) is not None:
            checks.append(Check(rule.metric, False, False, f"{bad}; refusing impossible metrics"))
            continue
        lower = rule.better == "lower"
        if rule.bound is not None:
            ok = value <= rule.bound if lower else value >= rule.bound
            if not ok:
                checks.append(Check(rule.metric, False, False, f"{rule.metric}={value:.6g} violates absolute bound "
                                    f"{'<=' if lower else '>='} {rule.bound:g}"))
                continue
        if rule.epsilon is not None and champion is not None:
            if champion.values.get(rule.metric) is None:  # cannot compare: say so, never block forever on it
                why = champion.unavailable.get(rule.metric, "missing")
                checks.append(Check(rule.metric, True, True, f"{rule.metric}={value:.6g}; champion has no value "
                                    f"({why}), relative check skipped"))
                continue
            ref = float(champion.values[rule.metric])  # type: ignore[arg-type]
            if (bad := out_of_range(rule.metric, ref)) is not None:  # an impossible champion blocks nobody
                checks.append(Check(rule.metric, True, True, f"{rule.metric}={value:.6g}; champion's {bad}, "
                                    "relative check skipped"))
                continue
            limit = ref + rule.epsilon if lower else ref - rule.epsilon
            ok = value <= limit if lower else value >= limit
            if not ok:
                checks.append(Check(rule.metric, False, False,
                                    f"{rule.metric}={value:.6g} is worse than champion {ref:.6g} by more than "
                                    f"epsilon {rule.epsilon:g} (limit {limit:.6g})"))
                continue
            checks.append(Check(rule.metric, True, False, f"{rule.metric}={value:.6g} ok vs champion {ref:.6g}"))
            continue
        note = "no champion yet; only the bound applies" if rule.epsilon is not None and rule.bound is not None \
            else ("no champion yet; nothing to compare" if rule.epsilon is not None else "within bound")
        checks.append(Check(rule.metric, True, rule.bound is None, f"{rule.metric}={value:.6g} ok ({note})"))
    return GateVerdict(checks)


def rules_json(rules: GateRules) -> str:
    return json.dumps(rules.model_dump(), sort_keys=True)
