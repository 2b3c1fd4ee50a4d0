"""TensorRT logic that needs no GPU (a fake ``tensorrt`` module stands in); GPU runs skip with a reason."""

import sys
import types

import pytest

from deramos_rt.backends import tensorrt as trt_backend
from deramos_rt.errors import DeramosError


def _manifest():
    return {"text": {"max_tokens": 64}, "profile": {"batch": [1, 16, 64], "tokens": [1, 32, 64]},
            "graphs": {"audio": {"inputs": [{"name": "waveform", "dtype": "float32", "shape": ["batch", 32000]}]},
                       "text": {"inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "tokens"]},
                                           {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "tokens"]}]},
                       "ta": {"inputs": [{"name": "audio_x", "dtype": "float32", "shape": ["batch", 249, 32]}]}},
            "tensorrt": [{"key": "trt10.3.0-sm80", "trt_version": "10.3.0", "compute_capability": [8, 0],
                          "precision": "fp16", "files": {}}]}


def test_engine_names_and_keys():
    assert trt_backend.engine_key("10.16.1", (9, 0)) == "trt10.16.1-sm90"
    assert trt_backend.engine_file("ta", "fp16") == "ta.fp16.plan"


def test_version_and_gpu_mismatch_is_detected():
    manifest = _manifest()
    entry, reason = trt_backend.select_engines(manifest, "fp16", "10.3.0", (8, 0))
    assert entry is manifest["tensorrt"][0] and reason == ""
    entry, reason = trt_backend.select_engines(manifest, "fp16", "10.16.1", (8, 0))
    assert entry is None and "built with TensorRT 10.3.0, this is TensorRT 10.16.1" in reason
    entry, reason = trt_backend.select_engines(manifest, "fp16", "10.3.0", (9, 0))
    assert entry is None and "compute capability 8.0, this GPU has 9.0" in reason
    assert trt_backend.select_engines(manifest, "fp32", "10.3.0", (8, 0))[1] == "the bundle has no fp32 TensorRT engines"


class _FakeTrt(types.SimpleNamespace):
    """Records what build_plan asks of the TensorRT 10 API."""

    def __init__(self, parse_ok=True, plan=b"PLAN"):
        calls = {"shapes": {}, "flags": [], "pool": None, "cache_in": None}
        self.calls = calls

        class Profile:
            def set_shape(self, name, low, opt, high):
                calls["shapes"][name] = (low, opt, high)

        class Cache:
            def serialize(self):
                return b"TIMINGS"

        class Config:
            def set_memory_pool_limit(self, pool, size):
                calls["pool"] = (pool, size)

            def set_flag(self, flag):
                calls["flags"].append(flag)

            def add_optimization_profile(self, profile):
                calls["profile"] = profile

            def create_timing_cache(self, data):
                calls["cache_in"] = data
                return Cache()

            def set_timing_cache(self, cache, ignore_mismatch):
                calls["ignore_mismatch"] = ignore_mismatch

            def get_timing_cache(self):
                return Cache()

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                calls["network_flags"] = flags
                return "network"

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return plan

        class Parser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                calls["parsed"] = path
                return parse_ok

            def get_error(self, i):
                return "In node 3 (Where): unsupported"

        def logger(level):
            return None

        logger.WARNING = 2
        super().__init__(__version__="10.16.1", Builder=Builder, OnnxParser=Parser, Logger=logger,
                         MemoryPoolType=types.SimpleNamespace(WORKSPACE="WS"),
                         BuilderFlag=types.SimpleNamespace(FP16="FP16"))


def test_build_plan_sets_profile_fp16_workspace_and_persists_timing_cache(tmp_path):
    from deramos_rt.backends.onnxruntime import profile_shapes

    fake = _FakeTrt()
    cache = tmp_path / "t" / "timing.cache"
    plan = trt_backend.build_plan(fake, tmp_path / "text.fp32.onnx", profile_shapes(_manifest(), "text"), True,
                                  cache, workspace=1 << 30)
    assert plan == b"PLAN" and cache.read_bytes() == b"TIMINGS"
    assert fake.calls["shapes"] == {"input_ids": ((1, 1), (16, 32), (64, 64)),
                                    "attention_mask": ((1, 1), (16, 32), (64, 64))}
    assert fake.calls["flags"] == ["FP16"] and fake.calls["pool"] == ("WS", 1 << 30)
    assert fake.calls["network_flags"] == 0 and fake.calls["cache_in"] == b""
    trt_backend.build_plan(fake, tmp_path / "x.onnx", {}, False, cache)
    assert fake.calls["cache_in"] == b"TIMINGS"  # the second build starts from the saved timings


def test_build_plan_reports_parser_and_builder_failures(tmp_path):
    bad = _FakeTrt(parse_ok=False)
    with pytest.raises(DeramosError, match=r"cannot parse .*unsupported"):
        trt_backend.build_plan(bad, tmp_path / "a.onnx", {}, True)
    none = _FakeTrt(plan=None)
    with pytest.raises(DeramosError, match="could not build an engine"):
        trt_backend.build_plan(none, tmp_path / "a.onnx", {}, True)


def test_tensorrt_missing_or_wrong_major_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(DeramosError, match="tensorrt is not usable here.*tensorrt-cu12>=10,<11"):
        trt_backend.import_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.4.0"))
    with pytest.raises(DeramosError, match="tensorrt 11.4.0 is installed"):
        trt_backend.import_tensorrt()


def test_export_auto_skips_and_require_fails_without_tensorrt(tmp_path, monkeypatch, caplog):
    pytest.importorskip("torch")
    from export import tensorrt as build

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert build.build_engines(tmp_path, _manifest(), "off") == []
    with caplog.at_level("WARNING"):
        assert build.build_engines(tmp_path, _manifest(), "auto") == []
    assert "TensorRT engines skipped: tensorrt is not usable here" in caplog.text
    with pytest.raises(DeramosError, match="TensorRT engines skipped"):
        build.build_engines(tmp_path, _manifest(), "require")


def test_engine_entry_records_versions_and_profiles():
    pytest.importorskip("torch")
    from export import tensorrt as build

    entry = build.engine_entry("10.16.1", (9, 0), "fp16", {"audio": "tensorrt/x/audio.fp16.plan"}, _manifest())
    assert entry["key"] == "trt10.16.1-sm90" and entry["compute_capability"] == [9, 0]
    assert entry["profiles"]["audio"]["waveform"] == [[1, 32000], [16, 32000], [64, 32000]]
