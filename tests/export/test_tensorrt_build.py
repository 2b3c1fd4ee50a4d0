"""Export's TensorRT step on strict fakes of TensorRT 10 and cuda-python (tests/fake_gpu.py): engines in a
bundle, built on the GPU asked for, without TF32, checked and then used by the runtime as they are."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from deramos_rt.backends.tensorrt import TensorRTBackend  # noqa: E402
from deramos_rt.bundle import load_bundle, write_manifest  # noqa: E402
from deramos_rt.errors import DeramosError  # noqa: E402
from export import tensorrt as build  # noqa: E402
from export.build_engine import random_feed  # noqa: E402
from export.testing import tiny_bundle  # noqa: E402
from tests import fake_gpu  # noqa: E402


@pytest.fixture(autouse=True)
def trusted(monkeypatch):
    """These tests check TensorRT's mechanics on bundles they rewrite (so never recorded as trusted); the
    trust rule itself is tested in tests/runtime/test_bundle_trust.py and test_hostile_bundles.py."""
    monkeypatch.setattr("deramos_rt.trust.is_trusted", lambda bundle: True)

MANIFEST = {"text": {"max_tokens": 64}, "profile": {"batch": [1, 16, 64], "tokens": [1, 32, 64]}, "graphs": {}}


@pytest.fixture(scope="module")
def plain_bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("trt-plain"), precisions=("fp32",), slim=False, parity_files=2,
                       parity_random=4)


def test_export_auto_skips_and_require_fails_without_tensorrt(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert build.build_engines(tmp_path, MANIFEST, "off") == []
    with caplog.at_level("WARNING"):
        assert build.build_engines(tmp_path, MANIFEST, "auto") == []
    assert "TensorRT engines skipped: tensorrt is not usable here" in caplog.text
    with pytest.raises(DeramosError, match="TensorRT engines skipped"):
        build.build_engines(tmp_path, MANIFEST, "require")


def test_engine_entry_records_versions_profiles_and_that_tf32_was_off():
    graphs = {"audio": {"inputs": [{"name": "waveform", "dtype": "float32", "shape": ["batch", 32000]}]},
              "text": {"inputs": []}, "ta": {"inputs": []}}
    entry = build.engine_entry("10.16.1", (9, 0), "fp16", {"audio": "tensorrt/x/audio.fp16.plan"},
                               {**MANIFEST, "graphs": graphs})
    assert entry["key"] == "trt10.16.1-sm90" and entry["compute_capability"] == [9, 0]
    assert entry["tf32"] is False and entry["recipe"] == 2
    assert entry["profiles"]["audio"]["waveform"] == [[1, 32000], [16, 32000], [64, 32000]]


def test_bundle_engines_are_built_checked_and_then_used_as_they_are(monkeypatch, tmp_path):
    trt, _ = fake_gpu.install(monkeypatch)
    monkeypatch.setenv("DERAMOS_CACHE", str(tmp_path / "cache"))
    bundle_dir = tiny_bundle(tmp_path / "t", precisions=("fp32",), tensorrt="require", opt_batch=4, max_batch=8,
                             slim=False, parity_files=2, parity_random=4)
    bundle = load_bundle(bundle_dir)
    [entry] = bundle.manifest["tensorrt"]
    assert entry["precision"] == "fp32" and entry["tf32"] is False and entry["key"] == "trt10.16.1-sm90"
    assert set(entry["check_max_abs"]) == {"audio", "text", "ta"} and max(entry["check_max_abs"].values()) < 1e-5
    assert len(trt.built) == 3 and all(p["flags"] == [] for p in trt.built)  # fp32: no TF32, no FP16
    assert all(p["profile"]["waveform"][2] == [8, 32000] for p in trt.built if "waveform" in p["profile"])
    backend = TensorRTBackend(bundle, precision="fp32")
    assert "bundle engines" in backend.info.detail and backend.max_batch == 8 and len(trt.built) == 3
    backend.close()


def test_engines_are_built_on_the_gpu_asked_for(monkeypatch, plain_bundle, tmp_path):
    """Fault: export built on GPU 0 whatever was asked (the probe and the builder both used device 0)."""
    trt, cuda = fake_gpu.install(monkeypatch, capabilities={0: (8, 0), 1: (9, 0)})
    bundle = load_bundle(plain_bundle)
    entries = build.build_engines(plain_bundle, bundle.manifest, "require", ("fp16",), device_index=1)
    assert entries[0]["compute_capability"] == [9, 0] and {tuple(p["capability"]) for p in trt.built} == {(9, 0)}
    assert all(p["flags"] == ["FP16"] for p in trt.built)


def test_a_failed_engine_check_still_closes_the_tensorrt_backend(monkeypatch, plain_bundle):
    """Fault: ``trt_backend.close()`` was skipped when the tolerance check raised (stream and buffers leaked)."""
    import onnxruntime as ort

    trt, cuda = fake_gpu.install(monkeypatch)
    bundle = load_bundle(plain_bundle)
    entries = build.build_engines(plain_bundle, bundle.manifest, "require", ("fp32",))
    manifest = {k: v for k, v in bundle.manifest.items() if k not in ("format", "format_version", "files")}
    write_manifest(plain_bundle, {**manifest, "tensorrt": entries})  # as build_engine does: plans listed, hashed
    with_engines = load_bundle(plain_bundle)
    feeds = {}
    for graph in ("audio", "text", "ta"):
        session = ort.InferenceSession(str(bundle.graph_path("fp32", graph)), providers=["CPUExecutionProvider"])
        feeds[graph] = random_feed(session, batch=2, max_tokens=bundle.manifest["text"]["max_tokens"])
    assert max(build.check_engines(with_engines, "fp32", feeds).values()) < 1e-5
    trt.perturb = 0.01
    with pytest.raises(DeramosError, match="TensorRT fp32 audio engine differs from ONNX Runtime fp32 by 0.01"):
        build.check_engines(with_engines, "fp32", feeds)
    assert cuda.streams == set() and cuda.memory == {}


def test_random_feed_keeps_tokens_within_max_tokens():
    """Fault: 5 tokens were used even when the tokenizer (and so the TensorRT profile) stops below 5."""
    spec = type("Input", (), {"name": "input_ids", "type": "tensor(int64)", "shape": ["batch", "tokens"]})
    mask = type("Input", (), {"name": "attention_mask", "type": "tensor(int64)", "shape": ["batch", "tokens"]})
    session = type("Session", (), {"get_inputs": lambda self: [spec, mask]})()
    feed = random_feed(session, batch=2, max_tokens=3)
    assert feed["input_ids"].shape == (2, 3) and feed["attention_mask"].shape == (2, 3)
    assert random_feed(session)["input_ids"].shape == (3, 5)
    np.testing.assert_array_equal(random_feed(session, seed=1)["input_ids"], random_feed(session, seed=1)["input_ids"])
