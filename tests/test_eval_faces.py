"""ID similarity on the real public-domain portraits that ship in packages, and the pluggable ONNX encoder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from spf_lib.errors import SpfError
from tests._eval_helpers import astronaut, grace_hopper


@pytest.fixture(scope="module")
def analyzer():
    from spf_lib.eval.faces import FaceAnalyzer

    return FaceAnalyzer("dlib")


def test_identical_image_scores_the_maximum(analyzer):
    r = analyzer.compare_images(astronaut(), astronaut())
    assert r["score"] == 1.0 and r["l2"] == 0.0


def test_same_person_scores_higher_than_different_people(analyzer):
    a, g = astronaut(), grace_hopper()
    same = [
        analyzer.compare_images(a, ImageOps.mirror(a))["score"],
        analyzer.compare_images(a, a.crop((60, 0, 400, 340)).resize((256, 256)))["score"],
        analyzer.compare_images(g, ImageOps.mirror(g))["score"],
        analyzer.compare_images(g, g.crop((50, 30, 450, 500)))["score"],
    ]
    different = [analyzer.compare_images(a, g)["score"], analyzer.compare_images(ImageOps.mirror(a), g)["score"]]
    assert None not in same + different
    assert min(same) > max(different)
    # the documented scale: 0.5 is dlib's same-person threshold (L2 = 0.6)
    assert min(same) > 0.5 > max(different)


def test_raw_values_are_reported_beside_the_calibrated_score(analyzer):
    r = analyzer.compare_images(astronaut(), grace_hopper())
    assert r["raw_cos"] > 0.7  # dlib descriptors are not zero-centred: raw cosine is high even for strangers
    assert r["score"] == pytest.approx(max(0.0, 1 - r["l2"] / 1.2))


def test_no_face_is_reported_not_raised(analyzer):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    r = analyzer.compare_images(noise, astronaut())
    assert r["score"] is None and "no face" in r["reason"] and r["face_b"] is True


def _tiny_onnx_encoder(path, size=112):
    """A real ONNX graph (8x8 average pool → flatten) standing in for ArcFace: exercises the onnxruntime path."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, None])
    nodes = [helper.make_node("AveragePool", ["input"], ["p"], kernel_shape=[16, 16], strides=[16, 16]),
             helper.make_node("Flatten", ["p"], ["embedding"], axis=1)]
    model = helper.make_model(helper.make_graph(nodes, "tiny_face", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_encoder_is_pluggable(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from spf_lib.eval.faces import FaceAnalyzer

    fa = FaceAnalyzer(str(_tiny_onnx_encoder(tmp_path / "face.onnx")))
    assert fa.encoder.chip_size == 112 and fa.encoder.name == "onnx:face.onnx"
    same = fa.compare_images(astronaut(), astronaut())
    other = fa.compare_images(astronaut(), grace_hopper())
    assert same["score"] == pytest.approx(1.0)
    assert other["score"] < same["score"]
    assert fa.analyze(astronaut()).embedding.shape == (3 * 7 * 7,)


def test_bad_encoder_specs_name_the_problem(tmp_path):
    from spf_lib.eval.faces import make_encoder

    with pytest.raises(SpfError, match="expected 'dlib'"):
        make_encoder("arcface")
    with pytest.raises(SpfError, match="does not exist"):
        make_encoder(str(tmp_path / "missing.onnx"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(SpfError, match="cannot load"):
        make_encoder(str(bad))


def test_reference_faces_score_the_trained_identity(tmp_path):
    """id_ref_sim: tuned target images vs photos of the identity; the right person scores higher."""
    from spf_lib.eval import metrics as M
    from spf_lib.eval.evalset import EvalItem

    refs = tmp_path / "refs"
    refs.mkdir()
    ImageOps.mirror(astronaut()).save(refs / "a.png")
    astronaut().crop((60, 0, 400, 340)).save(refs / "b.jpg")
    (refs / "notes.txt").write_text("ignored")
    target = [EvalItem("target", 0, "a photo of sks person", 0)]
    scores = {}
    for name, img in (("same", astronaut()), ("other", grace_hopper())):
        state = M.MetricState()
        imgs = {target[0].key: img}
        M.structural(state, [], target, imgs, imgs)
        M.identity(state, [], target, imgs, imgs, "dlib", refs)
        assert state.metrics["id_ref_faces"] == 2.0
        scores[name] = state.metrics["id_ref_sim"]
    assert scores["same"] > 0.5 > scores["other"]
