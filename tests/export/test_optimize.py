"""Graph rewrites: a long 1-channel FIR Conv becomes a banded matrix product with the same outputs; the
onnxslim size rule; the before/after profiler runs (no timings asserted)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from export import optimize  # noqa: E402


def fir_graph(path, taps: int = 31, stride: int = 3, pads=(15, 15), length: int = 1000, bias: bool = False,
              channels: int = 1):
    """waveform (B, length) -> Unsqueeze -> Conv(channels out) -> output, the front ends' FIR pattern."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((channels, 1, taps)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "taps"), numpy_helper.from_array(np.array([1], np.int64), "axis")]
    inputs = ["u", "taps"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "bias"))
        inputs.append("bias")
    nodes = [helper.make_node("Unsqueeze", ["waveform", "axis"], ["u"], name="unsq"),
             helper.make_node("Conv", inputs, ["y"], name="/encoder/Conv", strides=[stride], pads=list(pads))]
    graph = helper.make_graph(nodes, "fir", [helper.make_tensor_value_info("waveform", TensorProto.FLOAT,
                                                                           ["batch", length])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def run(path_or_model, wave):
    import onnxruntime as ort

    source = path_or_model.SerializeToString() if hasattr(path_or_model, "SerializeToString") else str(path_or_model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"waveform": wave})[0]


@pytest.mark.parametrize("taps,stride,pads,bias", [(31, 3, (15, 15), False), (63, 4, (31, 31), True),
                                                   (20, 1, (0, 5), False), (17, 5, (2, 9), True)])
def test_fir_as_matmul_computes_the_same_filter(tmp_path, taps, stride, pads, bias):
    path = fir_graph(tmp_path / "fir.onnx", taps, stride, pads, bias=bias)
    model = onnx.load(str(path))
    assert optimize.fir_as_matmul(model) == ["fir_as_matmul:/encoder/Conv"]
    ops = [n.op_type for n in model.graph.node]
    assert "Conv" not in ops and "MatMul" in ops and "taps" not in {t.name for t in model.graph.initializer}
    for batch in (1, 3):
        wave = np.random.default_rng(batch).standard_normal((batch, 1000)).astype(np.float32)
        expected, got = run(path, wave), run(model, wave)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()


def test_other_convs_are_left_alone(tmp_path):
    for name, kwargs in (("short", {"taps": 7, "pads": (3, 3)}), ("multi", {"channels": 4})):
        model = onnx.load(str(fir_graph(tmp_path / f"{name}.onnx", **kwargs)))
        assert optimize.fir_as_matmul(model) == [] and "Conv" in [n.op_type for n in model.graph.node]


def test_optimize_graph_keeps_the_rewrite_only_when_the_check_accepts_it(tmp_path, caplog):
    path = fir_graph(tmp_path / "fir.onnx", 31, 3)
    original = path.read_bytes()
    assert optimize.optimize_graph(path, lambda candidate: "output y differs") == []
    assert path.read_bytes() == original and not (tmp_path / "fir.opt.onnx").exists()
    assert "changed fir.onnx's outputs" in caplog.text
    seen = []
    assert optimize.optimize_graph(path, lambda candidate: seen.append(candidate.name)) == ["fir_as_matmul:/encoder/Conv"]
    assert seen == ["fir.opt.onnx"] and "Conv" not in [n.op_type for n in onnx.load(str(path)).graph.node]
    assert optimize.optimize_graph(path, lambda candidate: None) == []  # nothing left to rewrite


def test_slim_is_skipped_above_the_size_limit_unless_asked(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="export.optimize")
    path = fir_graph(tmp_path / "fir.onnx")
    assert optimize.slim_allowed(path, large=False)
    monkeypatch.setattr(optimize, "SLIM_MAX_BYTES", 100)
    assert not optimize.slim_allowed(path, large=False) and "pass --slim" in caplog.text
    assert optimize.slim_allowed(path, large=True)


def test_compare_profiles_both_graphs(tmp_path):
    path = fir_graph(tmp_path / "fir.onnx", 63, 4, (31, 31))
    model = onnx.load(str(path))
    optimize.fir_as_matmul(model)
    onnx.save(model, str(tmp_path / "after.onnx"))
    wave = np.zeros((2, 1000), np.float32)
    result = optimize.compare({"before": path, "after": tmp_path / "after.onnx"}, {"waveform": wave}, rounds=2)
    assert result["before"]["profile"]["by_op"].get("Conv", 0) > 0
    assert "Conv" not in result["after"]["profile"]["by_op"] and "MatMul" in result["after"]["profile"]["by_op"]
    assert len(result["after"]["ms_range"]) == 2
