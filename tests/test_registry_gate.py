"""The gate's decisions on plain numbers, rule files, secret scrubbing, retry classification: no server, no model."""

from __future__ import annotations

import pytest
import requests

from spf_lib.errors import SpfError
from spf_lib.registry.gate import GateRules, MetricRule, evaluate_gate
from spf_lib.registry.lineage import parse_model_uri
from spf_lib.registry.lineage_keys import KEYS, complete, is_real
from spf_lib.registry.metrics import Metrics, eval_set_lineage, parse_metrics
from spf_lib.registry.scrub import REDACTED, scrub
from spf_lib.registry.session import RetryPolicy, is_unreachable, redact_uri, with_retries


def m(**values) -> Metrics:
    return parse_metrics(values, source="test")


CHAMP = m(pollution=0.20, clip_t=0.30, id_sim=0.9, clip_t_gain=0.05)
G = 0.05  # a challenger that learned the target: CLIP-T gain over the original above the default floor


def test_better_challenger_passes():
    v = evaluate_gate(GateRules(), m(pollution=0.15, clip_t=0.31, id_sim=0.9, clip_t_gain=G), CHAMP)
    assert v.passed and [c.metric for c in v.checks] == ["clip_t_gain", "pollution", "clip_t", "id_sim"]


def test_within_epsilon_passes_beyond_fails():
    rules = GateRules()
    assert evaluate_gate(rules, m(pollution=0.205, clip_t=0.295, id_sim=0.5, clip_t_gain=G), CHAMP).passed
    v = evaluate_gate(rules, m(pollution=0.25, clip_t=0.30, id_sim=0.5, clip_t_gain=G), CHAMP)
    assert not v.passed and [c.metric for c in v.failed] == ["pollution"]
    assert "worse than champion 0.2" in v.failed[0].reason
    v = evaluate_gate(rules, m(pollution=0.1, clip_t=0.2, id_sim=0.5, clip_t_gain=G), CHAMP)
    assert [c.metric for c in v.failed] == ["clip_t"]


def test_absolute_bound_applies_even_when_better_than_champion():
    bad_champ = m(pollution=0.9, clip_t=0.3, id_sim=0.9)
    v = evaluate_gate(GateRules(), m(pollution=0.6, clip_t=0.3, id_sim=0.9, clip_t_gain=G), bad_champ)
    assert not v.passed and "absolute bound <= 0.5" in v.failed[0].reason


def test_first_model_needs_only_bounds():
    assert evaluate_gate(GateRules(), m(pollution=0.4, clip_t=0.01, id_sim=0.1, clip_t_gain=G), None).passed
    assert not evaluate_gate(GateRules(), m(pollution=0.7, clip_t=0.9, id_sim=0.1, clip_t_gain=G), None).passed


def test_a_model_that_learned_nothing_is_never_promoted():
    """Unchanged model: no pollution at all, CLIP-T as the original's. It fails the target floor as the first
    champion and against a champion alike; with the floor removed it would have passed every other rule."""
    nothing = m(pollution=0.0, clip_t=0.2215, clip_t_original=0.2202, clip_t_gain=0.0013, id_sim=1.0)
    for champion in (None, m(pollution=0.2, clip_t=0.22, id_sim=0.9, clip_t_gain=0.05)):
        v = evaluate_gate(GateRules(), nothing, champion)
        assert not v.passed and [c.metric for c in v.failed] == ["clip_t_gain"]
        assert "violates absolute bound >= 0.01" in v.failed[0].reason
    no_floor = GateRules(rules=[r for r in GateRules().rules if r.metric != "clip_t_gain"])
    assert evaluate_gate(no_floor, nothing, None).passed
    # where probes exist (the demo), the floor is on the probe's target rate
    from spf_lib.demo import demo_gate_rules

    demo = GateRules.parse(demo_gate_rules())
    assert not evaluate_gate(demo, m(target_rate=0.02, probe_pollution=0.0, pollution=0.0), None).passed
    assert evaluate_gate(demo, m(target_rate=0.6, probe_pollution=0.05, pollution=0.1), None).passed


def test_missing_and_unavailable_metrics_are_reported():
    chal = parse_metrics({"pollution": 0.1, "clip_t": None, "unavailable": {"clip_t": "no CLIP weights"}},
                         source="t")
    v = evaluate_gate(GateRules(), chal, CHAMP)
    reasons = {c.metric: c.reason for c in v.failed}
    assert set(reasons) == {"clip_t_gain", "clip_t", "id_sim"}
    assert "unavailable (no CLIP weights)" in reasons["clip_t"] and "missing" in reasons["id_sim"]
    skip = evaluate_gate(GateRules(on_missing="skip"), chal, CHAMP)
    assert skip.passed and {c.metric for c in skip.checks if c.skipped} == {"clip_t_gain", "clip_t", "id_sim"}


def test_champion_without_metric_skips_relative_check_but_keeps_bound():
    champ = m(clip_t=0.3, id_sim=0.9)  # no pollution recorded for the old champion
    v = evaluate_gate(GateRules(), m(pollution=0.4, clip_t=0.3, id_sim=0.9, clip_t_gain=G), champ)
    pol = next(c for c in v.checks if c.metric == "pollution")
    assert pol.passed and pol.skipped and "champion has no value" in pol.reason
    assert not evaluate_gate(GateRules(), m(pollution=0.6, clip_t=0.3, id_sim=0.9, clip_t_gain=G), champ).passed


def test_rules_file_and_bad_values(tmp_path):
    f = tmp_path / "rules.yaml"
    f.write_text("rules:\n  - {metric: pollution, better: lower, bound: 0.1}\non_missing: skip\n")
    r = GateRules.from_file(f)
    assert r.rules == [MetricRule(metric="pollution", better="lower", bound=0.1)] and r.on_missing == "skip"
    f.write_text("rules:\n  - {metric: pollution, better: down, bound: 0.1}\n")
    with pytest.raises(SpfError, match=r"rules.yaml: rules.0.better: .*'down'"):
        GateRules.from_file(f)
    f.write_text("rules:\n  - {metric: pollution, better: lower}\n")
    with pytest.raises(SpfError, match="give epsilon, bound or both"):
        GateRules.from_file(f)
    f.write_text("rules: [\n")
    with pytest.raises(SpfError, match="not valid YAML"):
        GateRules.from_file(f)
    with pytest.raises(SpfError, match="epsilon"):
        GateRules.parse({"rules": [{"metric": "x", "better": "lower", "epsilon": -1}]})


def test_with_rule_overrides_and_adds():
    r = GateRules().with_rule("pollution", bound=0.05).with_rule("fid", better="lower", bound=30)
    assert next(x for x in r.rules if x.metric == "pollution").bound == 0.05
    assert next(x for x in r.rules if x.metric == "pollution").epsilon == 0.01
    assert r.rules[-1].metric == "fid"


def test_metrics_parse_and_tag_round_trip():
    raw = {"pollution": 0.125, "clip_t": None, "fid": float("nan"), "unavailable": {"clip_t": "no weights"}}
    parsed = parse_metrics(raw, source="metrics.json")
    assert "fid" not in raw["unavailable"]  # caller's dict untouched
    back = Metrics.from_tags(parsed.as_tags())
    assert back.values == {"pollution": 0.125, "clip_t": None, "fid": None}
    assert back.unavailable["clip_t"] == "no weights" and "non-finite" in back.unavailable["fid"]
    with pytest.raises(SpfError, match="metrics.json: metric 'x' = '0.3' is a string"):
        parse_metrics({"x": "0.3"}, source="metrics.json")
    # the evaluation's own metrics.json carries structured and descriptive entries next to the numbers
    full = parse_metrics({"pollution": 0.2, "id_encoder_is_dlib": True, "id_scale": "dlib: clip(1 - L2/1.2)",
                          "pollution_detail": {"weights": {"ssim": 1}}, "eval_set": {"name": "portrait", "hash": "h"},
                          "unavailable": {}}, source="metrics.json")
    assert full.values == {"pollution": 0.2, "id_encoder_is_dlib": 1.0}
    assert eval_set_lineage({"eval_set": {"name": "portrait", "version": 1, "hash": "h", "target": "x"}}) == {
        "eval_set_name": "portrait", "eval_set_version": "1", "eval_set_hash": "h"}


def test_scrub_keys_and_values():
    clean, redacted = scrub({
        "data_rev": "a" * 40, "config_hash": "b" * 64, "aws_secret_access_key": "x",
        "MY_TOKEN": "abc", "remote": "s3://user:hunter2@minio:9000/bucket",
        "note": "AKIAABCDEFGHIJKLMNOP", "hf": "hf_" + "a1B2" * 8, "pem": "-----BEGIN RSA PRIVATE KEY-----",
        "secretish": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "plain": "a portrait photo",
    })
    assert clean["data_rev"] == "a" * 40 and clean["config_hash"] == "b" * 64 and clean["plain"] == "a portrait photo"
    assert clean["aws_secret_access_key"] == REDACTED and clean["MY_TOKEN"] == REDACTED
    assert clean["remote"] == "s3://user:***@minio:9000/bucket"
    for k in ("note", "hf", "pem", "secretish"):
        assert clean[k] == REDACTED, k
    assert set(redacted) == {"aws_secret_access_key", "MY_TOKEN", "remote", "note", "hf", "pem", "secretish"}


def test_lineage_completion_fills_every_key_and_scrubs():
    out = complete({"data_rev": "r1", "kfp_run_id": "{{workflow.uid}}", "api_key": "zzz"},
                   base_model="/m", method="lora")
    assert set(KEYS) <= set(out) and out["data_rev"] == "r1" and out["api_key"] == REDACTED
    assert out["base_model"] == "/m" and out["method"] == "lora" and out["pipeline_name"] == "unknown"
    assert not is_real(out["kfp_run_id"]) and is_real("run-7") and not is_real("unknown")
    with pytest.raises(SpfError, match="mlflow"):
        complete({"mlflow.user": "x"}, base_model="/m", method="lora")


def test_model_uri_parsing():
    assert parse_model_uri("models:/m@champion") == ("m", "champion", None)
    assert parse_model_uri("models:/m/3") == ("m", None, "3")
    for bad in ("runs:/x/model", "models:/m", "models:/m/x"):
        with pytest.raises(SpfError, match="expected models:/NAME@ALIAS"):
            parse_model_uri(bad)


def test_retries_then_one_clear_error():
    calls, slept = [], []

    def down():
        calls.append(1)
        raise requests.ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded")

    with pytest.raises(SpfError, match=r"register m: MLflow tracking server http://h:1 unreachable after 4 attempts"):
        with_retries("register m", down, target="http://h:1", policy=RetryPolicy(4, 1.0, 2.0, 3.0), sleep=slept.append)
    assert len(calls) == 4 and slept == [1.0, 2.0, 3.0]


def test_retries_recover_and_real_errors_pass_through():
    state = {"n": 0}

    def flaky():
        state["n"] += 1
        if state["n"] < 3:
            raise OSError("[Errno 111] Connection refused")
        return "ok"

    assert with_retries("x", flaky, target="t", policy=RetryPolicy(5, 0, 1, 0), sleep=lambda s: None) == "ok"
    with pytest.raises(KeyError):
        with_retries("x", lambda: {}["k"], target="t", sleep=lambda s: None)
    assert not is_unreachable(ValueError("RESOURCE_DOES_NOT_EXIST"))
    assert redact_uri("https://u:p@mlflow.example:5000/x") == "https://***@mlflow.example:5000/x"


def test_code_rev_prefers_the_image_variable(monkeypatch):
    from spf_lib.registry.lineage_keys import code_rev

    monkeypatch.setenv("SPF_CODE_REV", "deadbeef")
    assert code_rev() == "deadbeef"
    monkeypatch.delenv("SPF_CODE_REV")
    rev = code_rev()
    sha = rev.removesuffix("-dirty")
    assert rev == "unknown" or (len(sha) == 40 and all(c in "0123456789abcdef" for c in sha))
