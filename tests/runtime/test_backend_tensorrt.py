"""The TensorRT backend on strict fakes of TensorRT 10 and cuda-python (tests/fake_gpu.py): one test per
fault found reading it against the real APIs, plus the manifest logic. No GPU is needed; the fakes' engines
run the bundle's ONNX graphs with ONNX Runtime, so scores are real."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import logging
import shutil
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from deramos_rt import scorefile  # noqa: E402
from deramos_rt.backends import gpu_name, missing_packages, open_backend  # noqa: E402
from deramos_rt.backends import tensorrt as trt_backend  # noqa: E402
from deramos_rt.backends.onnxruntime import OnnxRuntimeBackend, profile_shapes  # noqa: E402
from deramos_rt.backends.tensorrt import RebuiltEngines, TensorRTBackend  # noqa: E402
from deramos_rt.bundle import MANIFEST, load_bundle, write_manifest  # noqa: E402
from deramos_rt.cli import main  # noqa: E402
from deramos_rt.errors import DeramosError  # noqa: E402
from deramos_rt.scorer import Scorer  # noqa: E402
from tests import fake_gpu  # noqa: E402
from tests.runtime.conftest import write_manifest as write_clip_manifest  # noqa: E402


@pytest.fixture(autouse=True)
def trusted(monkeypatch):
    """These tests check TensorRT's mechanics on bundles they rewrite (so never recorded as trusted); the
    trust rule itself is tested in tests/runtime/test_bundle_trust.py and test_hostile_bundles.py."""
    monkeypatch.setattr("deramos_rt.trust.is_trusted", lambda bundle: True)


@pytest.fixture
def gpu(monkeypatch, tmp_path):
    """Fake TensorRT 10.16.1 + cuda-python with one sm90 GPU; rebuilt engines go to a private cache."""
    monkeypatch.setenv("DERAMOS_CACHE", str(tmp_path / "cache"))
    return fake_gpu.install(monkeypatch)


def _copy(bundle_dir, tmp_path, files=None, **changes):
    """A copy of a bundle with extra ``files`` ({name: bytes}) and top-level manifest fields replaced."""
    copy = tmp_path / "bundle-copy"
    shutil.copytree(bundle_dir, copy)
    for name, data in (files or {}).items():
        (copy / name).write_bytes(data)
    manifest = json.loads((copy / MANIFEST).read_text())
    for key in ("format", "format_version", "files"):
        manifest.pop(key)
    write_manifest(copy, {**manifest, **changes})
    return copy


def _manifest():
    return {"text": {"max_tokens": 64}, "profile": {"batch": [1, 16, 64], "tokens": [1, 32, 64]},
            "graphs": {"audio": {"inputs": [{"name": "waveform", "dtype": "float32", "shape": ["batch", 32000]}]},
                       "text": {"inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "tokens"]},
                                           {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "tokens"]}]},
                       "ta": {"inputs": [{"name": "audio_x", "dtype": "float32", "shape": ["batch", 249, 32]}]}},
            "tensorrt": [{"key": "trt10.3.0-sm80", "trt_version": "10.3.0", "compute_capability": [8, 0],
                          "precision": "fp16", "files": {}, "tf32": False}]}


def _reference(bundle_dir):
    return OnnxRuntimeBackend(load_bundle(bundle_dir), "cpu", "fp32", threads=1)


def _wave(bundle, rows, seed=0):
    rng = np.random.default_rng(seed)
    return (0.2 * rng.standard_normal((rows, bundle.protocol.num_samples))).astype(np.float32)


# ------------------------------------------------------------------------------------- manifest logic


def test_engine_names_and_keys():
    assert trt_backend.engine_key("10.16.1", (9, 0)) == "trt10.16.1-sm90"
    assert trt_backend.engine_file("ta", "fp16") == "ta.fp16.plan"
    assert trt_backend.rebuild_key("10.16.1", (9, 0), "NVIDIA H100 80GB HBM3") == "trt10.16.1-sm90-nvidia-h100-80gb-hbm3"


def test_version_gpu_and_tf32_mismatch_is_detected():
    manifest = _manifest()
    entry, reason = trt_backend.select_engines(manifest, "fp16", "10.3.0", (8, 0))
    assert entry is manifest["tensorrt"][0] and reason == ""
    entry, reason = trt_backend.select_engines(manifest, "fp16", "10.16.1", (8, 0))
    assert entry is None and "built with TensorRT 10.3.0, this is TensorRT 10.16.1" in reason
    entry, reason = trt_backend.select_engines(manifest, "fp16", "10.3.0", (9, 0))
    assert entry is None and "compute capability 8.0, this GPU has 9.0" in reason
    assert trt_backend.select_engines(manifest, "fp32", "10.3.0", (8, 0))[1] == "the bundle has no fp32 TensorRT engines"
    # Engines from before fp32 meant fp32 (TensorRT's TF32 default kept) are not used.
    del manifest["tensorrt"][0]["tf32"]
    entry, reason = trt_backend.select_engines(manifest, "fp16", "10.3.0", (8, 0))
    assert entry is None and "TF32" in reason


def test_tensorrt_missing_or_wrong_major_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(DeramosError, match="tensorrt is not usable here.*tensorrt-cu12>=10,<11"):
        trt_backend.import_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_gpu._module("tensorrt", __version__="11.4.0"))
    with pytest.raises(DeramosError, match="tensorrt 11.4.0 is installed"):
        trt_backend.import_tensorrt()


def test_backend_needs_cuda_python_and_info_says_so(monkeypatch, capsys):
    """Fault: only ``tensorrt`` was listed, so ``deramos-rt info`` called the backend usable without cuda-python."""
    real = importlib.util.find_spec

    def find_spec(name, *args):
        if name == "tensorrt":
            return importlib.machinery.ModuleSpec("tensorrt", None)
        if name == "cuda.bindings":
            raise ModuleNotFoundError("No module named 'cuda'", name="cuda")  # what a dotted name does
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert missing_packages("tensorrt") == ["cuda.bindings"]
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backend tensorrt     missing: cuda.bindings (install extra: none: install tensorrt-cu12" in out


# ------------------------------------------------------------------------------------------ building


def test_build_plan_clears_tf32_sets_fp16_profile_and_workspace(gpu, tiny_bundle, tmp_path):
    """Fault: TensorRT's TF32 default was kept, so "fp32" engines computed TF32."""
    trt, _ = gpu
    bundle = load_bundle(tiny_bundle)
    shapes = profile_shapes(bundle.manifest, "text")
    for fp16 in (True, False):
        trt_backend.build_plan(trt, bundle.graph_path("fp32", "text"), shapes, fp16, workspace=1 << 30)
    fp16_plan, fp32_plan = trt.built
    assert fp16_plan["flags"] == ["FP16"] and fp32_plan["flags"] == []
    assert fp16_plan["workspace"] == 1 << 30
    assert fp16_plan["profile"]["input_ids"] == [[1, 1], [16, 32], [64, 64]]


def test_build_plan_checks_every_builder_return(gpu, tiny_bundle, tmp_path, caplog):
    """Fault: ``add_optimization_profile`` (-1) and ``set_timing_cache`` (False) returns were ignored."""
    trt, cuda = gpu
    bundle = load_bundle(tiny_bundle)
    graph = bundle.graph_path("fp32", "audio")
    good = profile_shapes(bundle.manifest, "audio")
    with pytest.raises(DeramosError, match="refused the profile .* of input 'waveform'"):
        trt_backend.build_plan(trt, graph, {"waveform": ((1, 32000), (16, 32000), (8, 32000))}, True)
    trt.refuse_profiles = True
    with pytest.raises(DeramosError, match="refused the optimisation profile"):
        trt_backend.build_plan(trt, graph, good, True)
    trt.refuse_profiles = False
    # A timing cache made on another GPU is refused by TensorRT: start afresh and overwrite it.
    cache = tmp_path / "timing.cache"
    cache.write_bytes(fake_gpu._TimingCache((8, 0)).serialize())
    with caplog.at_level(logging.WARNING):
        trt_backend.build_plan(trt, graph, good, True, cache)
    assert "made on another GPU" in caplog.text
    assert cache.read_bytes() == fake_gpu._TimingCache((9, 0)).serialize()


def test_build_plan_reports_parser_and_builder_failures(gpu, tiny_bundle, tmp_path):
    trt, _ = gpu
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx graph")
    with pytest.raises(DeramosError, match=r"TensorRT cannot parse .*bad\.onnx"):
        trt_backend.build_plan(trt, bad, {}, True)
    bundle = load_bundle(tiny_bundle)
    partial = {"input_ids": profile_shapes(bundle.manifest, "text")["input_ids"]}  # attention_mask uncovered
    with pytest.raises(DeramosError, match="could not build an engine"):
        trt_backend.build_plan(trt, bundle.graph_path("fp32", "text"), partial, True)


def test_engines_build_and_run_on_the_gpu_asked_for_from_any_thread(monkeypatch, tmp_path, tiny_bundle):
    """Fault: engines were built on GPU 0 whatever the device, and the current device is per thread."""
    monkeypatch.setenv("DERAMOS_CACHE", str(tmp_path / "cache"))
    trt, cuda = fake_gpu.install(monkeypatch, capabilities={0: (8, 0), 1: (9, 0)})
    backend = TensorRTBackend(load_bundle(tiny_bundle), "cuda:1")
    assert backend.info.device == "cuda:1" and {tuple(p["capability"]) for p in trt.built} == {(9, 0)}
    wave = _wave(load_bundle(tiny_bundle), 2)
    here = backend.run_audio(wave)
    cuda.cudaSetDevice(0)  # another library moved this thread to GPU 0
    out = {}
    worker = threading.Thread(target=lambda: out.update(result=backend.run_audio(wave)))
    worker.start()
    worker.join()
    again = backend.run_audio(wave)
    for a, b, c in zip(here, out["result"], again):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    backend.close()


# ------------------------------------------------------------------------------------------- running


def test_cli_tensorrt_without_device_or_precision_runs_cuda_fp16(gpu, tiny_bundle, clips, tmp_path):
    """Fault: only ``auto`` filled in defaults; ``--backend tensorrt`` alone failed on a GPU."""
    trt, _ = gpu
    manifest = write_clip_manifest(tmp_path / "m.csv", clips)
    out = tmp_path / "trt.csv"
    assert main(["score", str(manifest), "--out", str(out), "--bundle", str(tiny_bundle), "--backend", "tensorrt",
                 "--workers", "1"]) == 0
    rows = list(scorefile.read_rows(out))
    assert {r["backend"] for r in rows} == {"tensorrt"} and {r["precision"] for r in rows} == {"fp16"}
    assert len(trt.built) == 3 and all(p["flags"] == ["FP16"] for p in trt.built)
    reference = Scorer(tiny_bundle, backend="onnxruntime", device="cpu", precision="fp32", decode_workers=1).score(clips)
    assert max(abs(float(r["mi"]) - c.mi) + abs(float(r["ta"]) - c.ta) for r, c in zip(rows, reference)) < 1e-4
    with Scorer(tiny_bundle, backend="tensorrt", decode_workers=0) as scorer:
        assert scorer.backend.info.device == "cuda:0" and len(trt.built) == 3  # checked engines reused


def test_shapes_outside_the_profile_are_split_or_refused(gpu, tiny_bundle, tmp_path, caplog):
    """Fault: ``set_input_shape``'s False was ignored, and the GPU batch (32) could exceed the profile."""
    trt, _ = gpu
    small = _copy(tiny_bundle, tmp_path, profile={"batch": [1, 2, 4], "tokens": [1, 8, 64]})
    bundle = load_bundle(small)
    backend = TensorRTBackend(bundle, precision="fp32")
    assert backend.max_batch == 4
    wave = _wave(bundle, 10)
    runs = trt.executions["audio.fp32.onnx"]
    with caplog.at_level(logging.INFO):
        mi, audio_x = backend.run_audio(wave)
    assert trt.executions["audio.fp32.onnx"] - runs == 3  # 4 + 4 + 2 rows
    assert "at most 4 rows per call" in caplog.text
    ref_mi, ref_x = _reference(small).run_audio(wave)
    np.testing.assert_allclose(mi, ref_mi, atol=1e-5)
    np.testing.assert_allclose(audio_x, ref_x, atol=1e-5)
    ids = np.ones((2, 65), np.int64)  # past the tokens axis (max_tokens 64): no split can help
    shapes = r"text engine takes input_ids shapes from \(1, 1\) to \(4, 64\), not \(2, 65\)"
    with pytest.raises(DeramosError, match=shapes):
        backend.run_text(ids, ids)
    backend.close()
    with caplog.at_level(logging.INFO), Scorer(small, backend="tensorrt", precision="fp32", decode_workers=0) as scorer:
        assert scorer.batch_size == 4
    assert "batch size 32 capped at 4" in caplog.text


def test_every_io_tensor_is_bound_and_input_dtypes_are_checked(gpu, tiny_bundle):
    """Fault: only the manifest's outputs got addresses, and engine dtypes were never compared."""
    trt, _ = gpu
    trt.extra_outputs = {"audio": "audio_debug"}  # an engine output the manifest does not list
    bundle = load_bundle(tiny_bundle)
    backend = TensorRTBackend(bundle, precision="fp32")
    wave = _wave(bundle, 3)
    for got, want in zip(backend.run_audio(wave), _reference(tiny_bundle).run_audio(wave)):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert "audio_debug" in backend._contexts["audio"].addresses
    backend.close()
    trt.extra_outputs = {}
    trt.input_dtypes = {"input_ids": fake_gpu.DataType.INT32}
    with pytest.raises(DeramosError, match="text engine takes input_ids as int32, the bundle graph as int64"):
        TensorRTBackend(bundle, precision="fp16")


def test_engines_whose_tensors_are_not_the_bundle_graphs_are_refused(gpu, tiny_bundle, tmp_path):
    trt, cuda = gpu
    graphs = json.loads((tiny_bundle / MANIFEST).read_text())["graphs"]
    graphs["ta"]["outputs"].append({"name": "ta_scores", "dtype": "float32", "shape": ["batch"]})
    with pytest.raises(DeramosError, match=r"the ta engine's tensors .*out: ta_probs\) are not the bundle graph's "
                                           r"\(in: audio_x, text_x, text_mask; out: ta_probs, ta_scores\)"):
        TensorRTBackend(load_bundle(_copy(tiny_bundle, tmp_path, graphs=graphs)))
    assert cuda.streams == set() and cuda.memory == {}


def test_device_buffers_are_reused_and_everything_is_freed(gpu, tiny_bundle):
    """Fault: a cudaMalloc / cudaFree and a synchronisation per buffer per call."""
    trt, cuda = gpu
    bundle = load_bundle(tiny_bundle)
    backend = TensorRTBackend(bundle, precision="fp32")
    wave = _wave(bundle, 3)
    backend.run_audio(wave)
    mallocs, syncs = cuda.calls["cudaMalloc"], cuda.calls["cudaStreamSynchronize"]
    for _ in range(3):
        backend.run_audio(wave)
        backend.run_audio(wave[:2])  # smaller batches fit the same buffers
    assert cuda.calls["cudaMalloc"] == mallocs and cuda.calls["cudaStreamSynchronize"] == syncs + 6
    backend.close()
    assert cuda.memory == {} and cuda.streams == set()


def test_a_plan_that_does_not_load_leaves_no_stream_behind(gpu, tiny_bundle, tmp_path):
    """Fault: the stream leaked when plan loading failed."""
    trt, cuda = gpu
    entry = {"key": "trt10.16.1-sm90", "trt_version": "10.16.1", "compute_capability": [9, 0], "precision": "fp16",
             "tf32": False, "files": {g: "junk.plan" for g in ("audio", "text", "ta")}}
    bad = load_bundle(_copy(tiny_bundle, tmp_path, files={"junk.plan": b"not a plan"}, tensorrt=[entry]))
    with pytest.raises(DeramosError, match="could not load the audio engine .bundle engines"):
        TensorRTBackend(bad)
    assert cuda.streams == set() and cuda.memory == {}


# ----------------------------------------------------------------------------------- rebuild policy


def test_rebuilt_engines_are_checked_cached_and_rebuilt_when_stale(gpu, tiny_bundle, caplog):
    """Fault: engines rebuilt at run time never passed the check export applies."""
    trt, _ = gpu
    bundle = load_bundle(tiny_bundle)
    with caplog.at_level(logging.WARNING):
        backend = TensorRTBackend(bundle)
    assert "building TensorRT fp16 engines for this machine (the bundle has no fp16 TensorRT engines)" in caplog.text
    assert "checked against ONNX Runtime" in backend.info.detail
    folder = trt_backend.default_cache_dir(bundle) / "trt10.16.1-sm90-nvidia-fake-gpu-sm90"
    record = json.loads((folder / "check.fp16.json").read_text())
    assert record["status"] == "passed" and set(record["max_abs"]) == {"audio", "text", "ta"}
    backend.close()
    TensorRTBackend(bundle).close()
    assert len(trt.built) == 3  # the checked engines were reused
    (folder / "ta.fp16.plan").write_bytes((folder / "text.fp16.plan").read_bytes())  # not the checked plan
    TensorRTBackend(bundle).close()
    assert len(trt.built) == 6
    with pytest.raises(DeramosError, match="rebuild is off"):
        TensorRTBackend(bundle, precision="fp32", rebuild=False)


def test_a_rebuild_that_fails_the_check_is_deleted_and_refused(gpu, tiny_bundle):
    trt, cuda = gpu
    trt.perturb = 0.5
    bundle = load_bundle(tiny_bundle)
    with pytest.raises(DeramosError, match=r"fp16 audio engine differs from ONNX Runtime fp32 by 0\.5.*deleted"):
        TensorRTBackend(bundle)
    folder = trt_backend.default_cache_dir(bundle) / "trt10.16.1-sm90-nvidia-fake-gpu-sm90"
    assert not list(folder.glob("*.plan")) and not (folder / "check.fp16.json").exists()
    assert cuda.streams == set() and cuda.memory == {}


def test_rebuilt_engine_record_must_match_recipe(gpu, tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    recipe = trt_backend.build_recipe(bundle.manifest, "fp32")
    cache = RebuiltEngines(tmp_path / "c", "fp32", recipe)
    plans = {g: f"plan {g}".encode() for g in ("audio", "text", "ta")}
    cache.save(plans)
    assert cache.load() is None  # saved but not yet checked
    cache.record(plans, {"audio": 0.0, "text": 0.0, "ta": 0.0})
    assert cache.load() == plans
    assert RebuiltEngines(tmp_path / "c", "fp32", {**recipe, "tf32": True}).load() is None


# --------------------------------------------------------------------------------------- auto, names


def test_auto_warns_when_every_gpu_candidate_failed(monkeypatch, tiny_bundle, tmp_path, caplog):
    """Fault: ending on the CPU after the GPU candidates failed was logged at INFO."""
    import deramos_rt.backends as backends

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(backends, "gpu_present", lambda: True)
    entry = {"key": "trt10.16.1-sm90", "trt_version": "10.16.1", "compute_capability": [9, 0], "precision": "fp16",
             "tf32": False, "files": {g: f"{g}.fp32.onnx" for g in ("audio", "text", "ta")}}
    bundle = load_bundle(_copy(tiny_bundle, tmp_path, tensorrt=[entry]))
    with caplog.at_level(logging.INFO, logger="deramos_rt.backends"):
        backend = open_backend("auto", bundle)
    assert backend.info.device == "cpu"
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warned and "auto: passed over tensorrt fp16 on cuda: backend 'tensorrt' needs tensorrt" in warned[0].message
    caplog.clear()
    monkeypatch.setattr(backends, "gpu_present", lambda: False)  # a CPU machine: nothing to warn about
    with caplog.at_level(logging.INFO, logger="deramos_rt.backends"):
        open_backend("auto", bundle)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_gpu_name_from_cuda_python_or_the_driver(monkeypatch, tmp_path):
    fake_gpu.install(monkeypatch, names={0: "NVIDIA H200"})
    assert gpu_name(0) == "NVIDIA H200"  # cuda-python's name, NUL padding dropped
    assert gpu_name(5, tmp_path / "none") is None  # no such device, and no driver files to read
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    proc = tmp_path / "gpus"
    for bus, model in (("0000:01:00.0", "NVIDIA H100 80GB HBM3"), ("0000:02:00.0", "NVIDIA A100-SXM4-40GB")):
        (proc / bus).mkdir(parents=True)
        (proc / bus / "information").write_text(f"Model: \t\t {model}\nIRQ: 12\n")
    assert gpu_name(0, proc) == "NVIDIA A100-SXM4-40GB+NVIDIA H100 80GB HBM3"
    assert gpu_name(0, tmp_path / "none") is None
