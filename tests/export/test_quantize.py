"""int8 recipes: the alternatives, quantising exactly the nodes asked for, and the export-time choice."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from benchmarks.gemm import matmul_graph  # noqa: E402
from deramos_rt.bundle import load_bundle  # noqa: E402
from export import quantize  # noqa: E402
from export.quantize import DEFAULT_INT8, Int8Options, int8_alternatives  # noqa: E402


def test_alternatives_try_full_range_only_with_vnni_and_conv_only_when_there_are_convs():
    assert int8_alternatives(vnni=False, has_conv=False) == [DEFAULT_INT8, Int8Options(per_channel=False)]
    labels = [o.label for o in int8_alternatives(vnni=True, has_conv=True)]
    assert labels == ["pc-rr", "pt-rr", "pc-full", "pt-full", "pc-full-conv"]
    assert int8_alternatives(vnni=False, has_conv=True)[-1] == Int8Options(conv=True, reduce_range=True)
    assert "needs VNNI" in Int8Options(reduce_range=False).describe() and "per tensor" in Int8Options(
        per_channel=False).describe()
    assert quantize.RECIPES["int8"] == DEFAULT_INT8.describe()
    assert Int8Options(conv=True).op_types == ("MatMul", "Gemm", "Conv")


def test_quantize_nodes_makes_int8_kernels_whatever_the_size(tmp_path):
    """The bundle's size threshold would leave this 64 KB graph fp32; quantize_nodes quantises it."""
    fp32 = matmul_graph(128, 128, tmp_path / "g.fp32.onnx")
    assert quantize.int8_kernel_nodes(fp32) == 0
    assert quantize.to_int8(fp32, tmp_path / "skipped.onnx") == fp32  # under MIN_QUANT_BYTES: not quantised
    for options in (DEFAULT_INT8, Int8Options(per_channel=False, reduce_range=False)):
        out = quantize.quantize_nodes(fp32, tmp_path / f"g.{options.label}.onnx", ["gemm"], options)
        assert quantize.int8_kernel_nodes(out) >= 1
    with pytest.raises(RuntimeError, match="no int8 kernel node"):
        quantize.quantize_nodes(fp32, tmp_path / "none.onnx", ["no-such-node"])


def test_large_nodes_keep_the_weight_products_at_or_above_the_median(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    sizes = [(8, 8), (8, 32), (32, 64)]
    nodes, inits, x = [], [], "x"
    for i, (k, n) in enumerate(sizes):
        inits.append(numpy_helper.from_array(np.ones((k, n), np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"], name=f"/encoder/mm{i}"))
        x = f"y{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["b", 64])], inits)
    path = tmp_path / "chain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert quantize.select_nodes(path, False) == ["/encoder/mm0", "/encoder/mm1", "/encoder/mm2"]
    assert quantize.select_nodes(path, True) == ["/encoder/mm1", "/encoder/mm2"]
    assert quantize.select_nodes(path, False, Int8Options(nodes="large")) == ["/encoder/mm1", "/encoder/mm2"]


def test_the_first_passing_recipe_in_speed_order_is_kept():
    a, b, c = DEFAULT_INT8, Int8Options(per_channel=False), Int8Options(reduce_range=False)
    made = {a: "files-a", b: "files-b", c: "files-c"}
    verdicts = {"files-a": "TA SRCC 0.9 < 0.99", "files-b": None, "files-c": None}
    record = {"tried": []}
    seconds = {a: [1.0, 1.1], b: [2.0, 2.0], c: [3.0, 3.0]}
    assert quantize._first_passing([a, b, c], made, verdicts.get, seconds, record) == b
    assert [(t["label"], t["parity"].split(":")[0]) for t in record["tried"]] == [
        ("pc-rr", "failed"), ("pt-rr", "passed"), ("pc-full", "not checked")]
    assert record["tried"][0]["seconds_median"] == 1.05
    assert quantize._first_passing([a], made, verdicts.get, seconds, {"tried": []}) is None


def test_tune_int8_records_its_choice_and_leaves_only_the_kept_graphs(tmp_path):
    from export.build_engine import build_bundle
    from export.testing import write_random_run

    run = write_random_run(tmp_path / "run", seed=3)
    out = build_bundle(run, tmp_path / "bundle", ("fp32", "int8"), int8_min_bytes=0, parity_files=2, parity_random=6)
    parity = json.loads((out / "parity.json").read_text())["variants"]["int8"]
    if not parity["kept"]:  # an untrained run's scores barely vary: int8 may miss its SRCC floor
        pytest.skip(f"int8 dropped by the gate on this random run: {parity['status']}")
    entry = load_bundle(out).variants["int8"]
    record = entry["quantisation"]
    assert record["graphs"] and record["cpu"]["model"] and record["label"] in {t["label"] for t in record["tried"]}
    kept = Int8Options(**record["choice"])
    assert entry["recipe"] == kept.describe() and record["needs_vnni"] == (not kept.reduce_range)
    assert any(t["parity"] == "passed" for t in record["tried"]) or kept == DEFAULT_INT8
    names = {p.name for p in out.iterdir()}
    assert not [n for n in names if n.count(".int8.") and not n.endswith(".int8.onnx")]  # no alternative left
    for graph in record["graphs"]:
        assert quantize.int8_kernel_nodes(out / entry["files"][graph]) >= 1
