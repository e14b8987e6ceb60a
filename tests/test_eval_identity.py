"""Identity evaluation: reference faces from a prepared dataset (per trigger), small images upscaled for dlib,
CLIP-T text with the class noun, and the identity methods' default gate."""

from __future__ import annotations

import pytest
from PIL import Image


def _faces():
    from tests._eval_helpers import astronaut, grace_hopper

    return astronaut(), grace_hopper()


def _small(img, size=64):
    """Square crop around the face, then the small world's 64 px."""
    w, h = img.size
    s = min(w, h)
    return img.crop(((w - s) // 2, 0, (w - s) // 2 + s, s)).resize((size, size), Image.Resampling.BICUBIC)


def _prepared(root, astro, grace):
    import pandas as pd

    (root / "crops").mkdir(parents=True)
    rows = []
    for i, (img, ident) in enumerate([(astro, "sks"), (astro.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "sks"),
                                      (grace, "xyz")]):
        _small(img).save(root / "crops" / f"{i}.png")
        rows.append({"crop_path": f"crops/{i}.png", "identity": ident})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


def test_reference_from_prepared_dataset_small_images_upscaled(tmp_path):
    from spf_lib.eval import metrics as M
    from spf_lib.eval.evalset import EvalItem

    astro, grace = _faces()
    ref = _prepared(tmp_path / "prepared", astro, grace)
    target = [EvalItem("target", 0, "a photo of sks person", 0)]
    k = target[0].key
    tuned, orig = {k: _small(astro)}, {k: _small(grace)}

    native = M.MetricState()
    M.structural(native, [], target, orig, tuned)
    M.identity(native, [], target, orig, tuned, "dlib", ref, trigger="sks", min_size=0)
    assert native.metrics["id_ref_sim"] is None and "no face" in native.unavailable["id_ref_sim"]

    state = M.MetricState()
    M.structural(state, [], target, orig, tuned)
    M.identity(state, [], target, orig, tuned, "dlib", ref, trigger="sks", min_size=256)
    assert state.metrics["id_ref_faces"] == 2.0                      # only the sks rows are the reference
    assert state.metrics["id_ref_face_rate"] == 1.0
    assert state.metrics["id_ref_sim"] > 0.5 > state.metrics["id_ref_sim_original"]
    assert state.metrics["id_ref_gain"] == pytest.approx(state.metrics["id_ref_sim"]
                                                         - state.metrics["id_ref_sim_original"])
    other = M.MetricState()
    M.structural(other, [], target, orig, tuned)
    M.identity(other, [], target, orig, tuned, "dlib", ref, trigger="xyz", min_size=256)
    assert other.metrics["id_ref_faces"] == 1.0 and other.metrics["id_ref_gain"] < 0


def test_class_noun_prompt_and_adapter_trigger():
    from spf_lib.eval.identity import adapter_trigger, class_noun_prompt

    assert class_noun_prompt("a photo of sks person, smiling", "sks") == "a photo of a person, smiling"
    assert class_noun_prompt("a portrait of a sks person", "sks") == "a portrait of a person"
    assert class_noun_prompt("sks at the beach", "sks") == "a person at the beach"
    assert class_noun_prompt("a photo of a person", "sks") == "a photo of a person"
    assert adapter_trigger({"method": "lora"}) is None
    assert adapter_trigger({"method": "beyond-inserting", "trigger": "abc"}) == "abc"
    assert adapter_trigger({"method": "celeb-basis", "identities": [{"trigger": "xyz"}]}) == "xyz"


def test_identity_gate_needs_the_person_and_no_regression():
    from spf_lib.eval.identity import identity_gate_rules
    from spf_lib.registry.gate import GateRules, evaluate_gate
    from spf_lib.registry.metrics import Metrics

    rules = GateRules.parse(identity_gate_rules())

    def m(**v):
        return Metrics(values={"pollution": 0.1, **v}, unavailable={})

    assert evaluate_gate(rules, m(id_ref_sim=0.6, id_ref_gain=0.1), None).passed
    assert not evaluate_gate(rules, m(id_ref_sim=0.6, id_ref_gain=-0.01), None).passed      # not learned
    assert not evaluate_gate(rules, m(id_ref_sim=0.45, id_ref_gain=0.1), None).passed       # below the floor
    champ = m(id_ref_sim=0.7, id_ref_gain=0.2)
    assert not evaluate_gate(rules, m(id_ref_sim=0.6, id_ref_gain=0.1), champ).passed       # worse than champion
    assert not evaluate_gate(rules, m(id_ref_gain=0.1), None).passed                        # missing → fail


def test_fallback_box_reads_an_undetected_face_and_says_so():
    from PIL import ImageFilter

    from spf_lib.eval.faces import FaceAnalyzer

    fa = FaceAnalyzer("dlib")
    astro, grace = _faces()
    soft = _small(astro, 48).filter(ImageFilter.GaussianBlur(2)).resize((256, 256), Image.Resampling.BICUBIC)
    assert fa.analyze(soft).embedding is None
    r = fa.analyze(soft, fallback_box=0.6)
    assert r.embedding is not None and r.fallback
    sharp = fa.analyze(astro, fallback_box=0.6)
    assert sharp.embedding is not None and not sharp.fallback      # a detected face never uses the box
