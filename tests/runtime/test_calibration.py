"""``auto``'s measured order: CPU keys, reordering by stored rates, the noise margin, and manifests from strangers."""

from __future__ import annotations

import math

import pytest

from deramos_rt.backends.calibration import (candidate_name, cpu_features, cpu_key, key_flags, measured_order,
                                             measured_rates, order_with_margin)

CPUINFO = """processor\t: 0
model name\t: Test CPU 9000
flags\t\t: fpu sse avx2 avx512f avx512_vnni
processor\t: 1
model name\t: Test CPU 9000
flags\t\t: fpu sse avx2 avx512f avx512_vnni
"""
VNNI = "Test CPU 9000|avx2+avx512f+avx512_vnni"
AVX2 = "Old CPU|avx2"
INT8 = ("onnxruntime", "cpu", "int8", "CPU; int8 parity held")
FP32 = ("onnxruntime", "cpu", "fp32", "CPU; portable")
AOTI = ("aoti", "cpu", "fp32", "CPU; AOTInductor")
TRT = ("tensorrt", "cuda", "fp16", "a GPU")


def manifest(rates: dict | None = None, key: str = VNNI, needs_vnni: bool = False) -> dict:
    out = {"variants": {"fp32": {}, "int8": {"quantisation": {"needs_vnni": needs_vnni}}}}
    if rates is not None:
        out["calibration"] = {"cpus": {key: {"rates": rates, "measured": "2026-12-02T00:00:00+00:00"}}}
    return out


def test_cpu_key_names_the_model_and_the_isa_flags():
    features = cpu_features(CPUINFO)
    assert features["model"] == "Test CPU 9000" and features["avx512_vnni"] and not features["amx_int8"]
    assert cpu_key(features) == VNNI
    assert key_flags(VNNI) == {"avx2", "avx512f", "avx512_vnni"}
    assert cpu_key(cpu_features("model name : Bare\nflags : fpu\n")) == "Bare|none" and key_flags("Bare|none") == set()
    assert "|" in cpu_key()  # this machine's


def test_candidate_names_match_the_calibration_names():
    assert [candidate_name(c) for c in (INT8, FP32, AOTI)] == ["onnxruntime-int8", "onnxruntime-fp32", "aoti"]


def test_without_rates_for_this_cpu_the_fixed_order_stays():
    order, why = measured_order(manifest(), VNNI, [INT8, FP32])
    assert order == [INT8, FP32] and "fixed order" in why and "has: none" in why
    order, why = measured_order(manifest({"onnxruntime-fp32": 300.0}, key=AVX2), VNNI, [INT8, FP32])
    assert order == [INT8, FP32] and AVX2 in why


def test_measured_rates_reorder_cpu_candidates_and_keep_gpu_ones_first():
    order, why = measured_order(manifest({"onnxruntime-int8": 100.0, "onnxruntime-fp32": 300.0}), VNNI,
                                [TRT, INT8, FP32])
    assert order == [TRT, FP32, INT8]
    assert "onnxruntime-fp32 300 clips/s" in why and "onnxruntime-fp32 first" in why and "2026-12-02" in why
    # A candidate without a rate keeps its fixed place after the measured ones.
    order, _ = measured_order(manifest({"onnxruntime-fp32": 300.0, "aoti": 350.0}), VNNI, [INT8, FP32, AOTI])
    assert order == [AOTI, FP32, INT8]


def test_a_difference_inside_the_margin_keeps_the_fixed_order():
    order, _ = measured_order(manifest({"onnxruntime-int8": 100.0, "onnxruntime-fp32": 104.0}), VNNI, [INT8, FP32])
    assert order == [INT8, FP32]
    order, _ = measured_order(manifest({"onnxruntime-int8": 100.0, "onnxruntime-fp32": 106.0}), VNNI, [INT8, FP32])
    assert order == [FP32, INT8]
    assert order_with_margin(["a", "b", "c"], {"a": 1.0, "b": 3.0, "c": None}.get) == ["b", "a", "c"]


def test_int8_tuned_for_vnni_is_passed_over_on_a_cpu_without_it():
    tuned = manifest({"onnxruntime-int8": 900.0, "onnxruntime-fp32": 300.0}, key=AVX2, needs_vnni=True)
    order, why = measured_order(tuned, AVX2, [INT8, FP32])
    assert order == [FP32] and "tuned for VNNI" in why
    order, _ = measured_order(manifest({"onnxruntime-int8": 900.0}, needs_vnni=True), VNNI, [INT8, FP32])
    assert order == [INT8, FP32]


@pytest.mark.parametrize("calibration", [
    "not a dict", {"cpus": "nope"}, {"cpus": {VNNI: "nope"}}, {"cpus": {VNNI: {"rates": ["x"]}}},
    {"cpus": {VNNI: {"rates": {"onnxruntime-fp32": "fast", "onnxruntime-int8": -1, "aoti": math.nan}}}},
    {"cpus": {VNNI: {"rates": {"onnxruntime-fp32": True, "onnxruntime-int8": math.inf}}}},
])
def test_a_malformed_calibration_means_not_measured(calibration):
    data = {**manifest(), "calibration": calibration}
    assert measured_rates(data, VNNI)[0] == {}
    order, why = measured_order(data, VNNI, [INT8, FP32])
    assert order == [INT8, FP32] and "fixed order" in why
