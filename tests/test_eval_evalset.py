"""The versioned eval set: defaults, files, hashes, and bad input named by field."""

from __future__ import annotations

import json

import pytest

from spf_lib.errors import SpfError
from spf_lib.eval.evalset import build_eval_set, default_eval_set, load_eval_set, resolve_eval_set


def test_default_set_pairs_base_and_target_prompts_with_the_same_seeds():
    es = default_eval_set()
    base, target = es.of_kind("base"), es.of_kind("target")
    assert len(base) == len(target) == 8
    for b, t in zip(base, target):
        assert t.prompt == f"{b.prompt}, wearing round glasses" and t.seed == b.seed
        assert "glasses" not in b.prompt
    assert es.version and len(es.hash) == 64
    assert es.hash == default_eval_set().hash  # stable across calls / processes (content hash)


def test_yaml_and_json_files_give_the_same_set_and_hash(tmp_path):
    data = {"name": "s", "version": "2", "target": "blonde hair", "seeds": [3],
            "base_prompts": ["a photo of a man, grey suit", {"text": "a photo of a woman", "seeds": [5, 6]}]}
    (tmp_path / "s.json").write_text(json.dumps(data))
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    a, b = load_eval_set(tmp_path / "s.json"), load_eval_set(tmp_path / "s.yaml")
    assert a.hash == b.hash
    assert [(i.kind, i.seed) for i in a.items] == [("base", 3), ("base", 5), ("base", 6),
                                                    ("target", 3), ("target", 5), ("target", 6)]
    changed = build_eval_set({**data, "version": "3"})
    assert changed.hash != a.hash


def test_explicit_target_prompts(tmp_path):
    es = build_eval_set({"name": "s", "version": "1", "seeds": [0], "base_prompts": ["a"], "target_prompts": ["b, c"]})
    assert [i.prompt for i in es.of_kind("target")] == ["b, c"]


@pytest.mark.parametrize("data,needle", [
    ({"version": "1", "target": "x", "base_prompts": ["a"]}, "name is required"),
    ({"name": "n", "version": "1", "target": "x", "base_prompts": []}, "base_prompts must be a non-empty list"),
    ({"name": "n", "version": "1", "target": "x", "base_prompts": [3]}, r"base_prompts\[0\]"),
    ({"name": "n", "version": "1", "target": "x", "seeds": [-1], "base_prompts": ["a"]}, "seeds must be"),
    ({"name": "n", "version": "1", "base_prompts": ["a"]}, "give target"),
    ({"name": "n", "version": "1", "target": "glasses", "base_prompts": ["a, glasses"]}, "already contains"),
])
def test_bad_sets_name_the_field(data, needle):
    with pytest.raises(SpfError, match=needle):
        build_eval_set(data)


def test_bad_files(tmp_path):
    with pytest.raises(SpfError, match="does not exist"):
        resolve_eval_set(tmp_path / "nope.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed")
    with pytest.raises(SpfError, match="cannot parse"):
        load_eval_set(p)


def test_identity_adapters_get_an_identity_eval_set_by_default():
    from spf_lib.eval.evalset import resolve_eval_set

    lora = resolve_eval_set(None, {"method": "lora", "format": "lora"})
    assert lora.name == "portrait-default"
    cb = resolve_eval_set(None, {"method": "celeb-basis", "identities": [{"trigger": "ada", "tokens": []}]})
    bi = resolve_eval_set(None, {"method": "beyond-inserting", "trigger": "sks"})
    assert cb.name == bi.name == "identity-default"
    assert all("ada person" in i.prompt for i in cb.of_kind("target"))
    assert not any("ada" in i.prompt for i in cb.of_kind("base"))
    assert all("sks person" in i.prompt for i in bi.of_kind("target"))
