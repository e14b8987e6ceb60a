"""LPIPS and FID run only from configured ONNX backbones; otherwise they are unavailable with a reason.

No LPIPS/Inception weights ship in any package here, so tiny ONNX graphs (real onnxruntime sessions) stand in for
them to exercise the code path: an 'LPIPS' that is the mean absolute difference and a 'feature extractor' that is
an average pool.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from spf_lib.eval import metrics as M
from spf_lib.eval.evalset import EvalItem
from spf_lib.eval.extra import frechet_distance, lpips_fid
from tests._eval_helpers import astronaut, grace_hopper

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper

BASE = [EvalItem("base", i, f"p{i}", 0) for i in range(3)]


def _save(nodes, inputs, outputs, path):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def _lpips_onnx(path):
    a = helper.make_tensor_value_info("in0", TensorProto.FLOAT, [1, 3, 64, 64])
    b = helper.make_tensor_value_info("in1", TensorProto.FLOAT, [1, 3, 64, 64])
    d = helper.make_tensor_value_info("dist", TensorProto.FLOAT, [1])
    nodes = [helper.make_node("Sub", ["in0", "in1"], ["s"]), helper.make_node("Abs", ["s"], ["a"]),
             helper.make_node("ReduceMean", ["a"], ["dist"], axes=[1, 2, 3], keepdims=0)]
    return _save(nodes, [a, b], [d], path)


def _features_onnx(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("f", TensorProto.FLOAT, [1, None])
    nodes = [helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[32, 32], strides=[32, 32]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1)]
    return _save(nodes, [x], [y], path)


def _images():
    rng = np.random.default_rng(0)
    photos = [astronaut(), grace_hopper().resize((512, 512)), astronaut().rotate(90)]
    orig = {it.key: im for it, im in zip(BASE, photos)}
    noisy = {k: Image.fromarray(np.clip(np.asarray(v, float) + rng.normal(0, 40, (512, 512, 3)), 0, 255)
                                .astype(np.uint8)) for k, v in orig.items()}
    return orig, noisy


def test_unconfigured_backbones_are_unavailable():
    state = M.MetricState()
    orig, _ = _images()
    lpips_fid(state, BASE, orig, orig, SimpleNamespace(lpips_model=None, fid_model=None))
    assert state.metrics["lpips"] is None and state.metrics["fid"] is None
    assert "no LPIPS model" in state.unavailable["lpips"] and "no FID" in state.unavailable["fid"]


def test_onnx_lpips_and_fid(tmp_path):
    orig, noisy = _images()
    cfg = SimpleNamespace(lpips_model=_lpips_onnx(tmp_path / "lpips.onnx"),
                          fid_model=_features_onnx(tmp_path / "feat.onnx"))
    same, diff = M.MetricState(), M.MetricState()
    lpips_fid(same, BASE, orig, orig, cfg)
    lpips_fid(diff, BASE, orig, noisy, cfg)
    assert same.metrics["lpips"] == pytest.approx(0.0, abs=1e-7) and same.drifts["lpips"] == pytest.approx(0.0)
    assert diff.metrics["lpips"] > 0.01  # noise partly averages out in the resize to the 64-px input
    assert same.metrics["fid"] == pytest.approx(0.0, abs=1e-6)
    assert diff.metrics["fid"] > same.metrics["fid"]
    assert "lpips" in diff.timings and "fid" in diff.timings


def test_a_broken_model_file_is_unavailable_with_the_reason(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    state = M.MetricState()
    orig, _ = _images()
    lpips_fid(state, BASE, orig, orig, SimpleNamespace(lpips_model=str(bad), fid_model=str(tmp_path / "none.onnx")))
    assert state.metrics["lpips"] is None and "bad.onnx" in state.unavailable["lpips"]
    assert "does not exist" in state.unavailable["fid"]


def test_frechet_distance_of_shifted_gaussians():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, (4000, 2))
    assert frechet_distance(a, a + np.array([3.0, 0.0])) == pytest.approx(9.0, rel=0.02)
