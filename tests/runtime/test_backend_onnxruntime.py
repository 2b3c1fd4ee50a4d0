"""The ONNX Runtime backend on a tiny bundle: outputs match torch, batch sizes, providers, refusals."""

import logging
import shutil
import sys

import numpy as np
import pytest

REAL_SESSION = pytest.importorskip("onnxruntime").InferenceSession
pytest.importorskip("onnx")

from deramos_rt.backends.onnxruntime import (  # noqa: E402
    OnnxRuntimeBackend,
    parse_device,
    profile_shapes,
    trt_profile_options,
)
from deramos_rt.bundle import load_bundle  # noqa: E402
from deramos_rt.errors import DeramosError  # noqa: E402


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    from export.testing import tiny_bundle

    return tiny_bundle(tmp_path_factory.mktemp("ort"), precisions=("fp32",))


@pytest.fixture(scope="module")
def torch_parts(bundle_dir):
    from training.checkpoint import load_run
    from training.split import split_model

    model, _ = load_run(bundle_dir.parent / "run")
    return split_model(model)


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_three_graphs_match_torch_at_several_batch_sizes(bundle_dir, torch_parts, batch):
    import torch

    bundle = load_bundle(bundle_dir)
    backend = OnnxRuntimeBackend(bundle, "cpu", "fp32", threads=1)
    assert backend.info.name == "onnxruntime" and "CPUExecutionProvider" in backend.info.detail
    audio, text, ta = torch_parts
    rng = np.random.default_rng(batch)
    wave = (0.2 * rng.standard_normal((batch, bundle.protocol.num_samples))).astype(np.float32)
    tokens = bundle.tokenizer()(["calm piano", "a fast loud rock song with drums and guitar", "jazz"][:batch] * 3)
    ids, mask = tokens.input_ids[:batch], tokens.attention_mask[:batch]
    mi, audio_x = backend.run_audio(wave)
    text_x = backend.run_text(ids, mask)
    ta_out = backend.run_ta(audio_x, text_x, mask)
    with torch.no_grad():
        t_mi, t_audio_x = audio(torch.from_numpy(wave))
        t_text_x = text(torch.from_numpy(ids), torch.from_numpy(mask))
        t_ta = ta(t_audio_x, t_text_x, torch.from_numpy(mask))
    assert mi.shape == (batch, 20) and ta_out.shape == (batch, 20)
    np.testing.assert_allclose(mi, t_mi.numpy(), atol=1e-5)
    np.testing.assert_allclose(audio_x, t_audio_x.numpy(), atol=1e-4)
    real = mask.astype(bool)  # padded positions are never pooled; compare the real tokens
    np.testing.assert_allclose(text_x[real], t_text_x.numpy()[real], atol=1e-4)
    np.testing.assert_allclose(ta_out, t_ta.numpy(), atol=1e-5)
    backend.close()


def test_refusals_are_one_clear_error(bundle_dir):
    bundle = load_bundle(bundle_dir)
    with pytest.raises(DeramosError, match="fp16 graphs are for GPUs"):
        OnnxRuntimeBackend(bundle, "cpu", "fp16")
    with pytest.raises(DeramosError, match="no 'int8' graphs"):
        OnnxRuntimeBackend(bundle, "cpu", "int8")
    with pytest.raises(DeramosError, match="unknown precision"):
        OnnxRuntimeBackend(bundle, "cpu", "fp8")
    with pytest.raises(DeramosError, match="unknown device"):
        OnnxRuntimeBackend(bundle, "gpu", "fp32")


def test_gpu_request_without_the_provider_is_refused_not_served_on_cpu(bundle_dir):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    bundle = load_bundle(bundle_dir)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(DeramosError, match="gpu' extra"):
            OnnxRuntimeBackend(bundle, device, "fp32")


def test_provider_silently_dropped_by_ort_is_detected(bundle_dir, monkeypatch):
    """ORT warns and runs on the CPU when a provider fails to start: the backend must raise instead."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    bundle = load_bundle(bundle_dir)
    with pytest.raises(DeramosError, match="activated only CPUExecutionProvider"):
        OnnxRuntimeBackend(bundle, "cuda", "fp32")


def test_corrupt_graph_file_is_one_error_naming_it(bundle_dir, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    path = copy / "text.fp32.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    bundle = load_bundle(copy, verify=False)  # skip the hash check to reach ONNX Runtime
    with pytest.raises(DeramosError, match=r"cannot load graph file .*text\.fp32\.onnx"):
        OnnxRuntimeBackend(bundle, "cpu", "fp32")


def test_missing_onnxruntime_names_the_extras(bundle_dir, monkeypatch):
    bundle = load_bundle(bundle_dir)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(DeramosError, match="'cpu' extra.*'gpu' extra"):
        OnnxRuntimeBackend(bundle, "cpu", "fp32")


def test_profile_shapes_cover_every_dynamic_input(bundle_dir):
    manifest = load_bundle(bundle_dir).manifest
    text = profile_shapes(manifest, "text")
    assert text["input_ids"] == ((1, 1), (16, 32), (64, 64))
    ta = profile_shapes(manifest, "ta")
    assert set(ta) == {"audio_x", "text_x", "text_mask"}
    assert ta["audio_x"][2][0] == 64 and ta["text_x"][2][1] == 64
    options = trt_profile_options(manifest, "text")
    assert options["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1"
    assert options["trt_profile_max_shapes"] == "input_ids:64x64,attention_mask:64x64"
    assert parse_device("cuda:2") == ("cuda", 2) and parse_device("tensorrt") == ("tensorrt", 0)


def test_int8_graphs_give_each_item_the_scores_it_gets_alone(bundle_dir, tmp_path):
    """Dynamic int8 takes one activation scale per tensor: batched naively, a clip's or prompt's output would
    depend on its batch mates (and on padding). The backend runs quantised graphs one item at a time."""
    import json

    from deramos_rt.bundle import MANIFEST, write_manifest
    from export.quantize import to_int8

    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    files = dict(manifest["variants"]["fp32"]["files"])
    for graph in ("audio", "text"):
        to_int8(copy / files[graph], copy / f"{graph}.int8.onnx", min_bytes=0)
        files[graph] = f"{graph}.int8.onnx"
    manifest["variants"]["int8"] = {**manifest["variants"]["fp32"], "files": files, "device": "cpu"}
    for key in ("format", "format_version", "files"):
        manifest.pop(key)
    write_manifest(copy, manifest)
    backend = OnnxRuntimeBackend(load_bundle(copy), "cpu", "int8")
    assert backend._per_item == {"audio", "text"}
    rng = np.random.default_rng(0)
    samples = backend.bundle.manifest["audio"]["num_samples"]
    wave = (rng.standard_normal((3, samples)) * np.array([[0.01], [0.5], [2.0]])).astype(np.float32)
    mi, audio_x = backend.run_audio(wave)
    mi_alone, audio_alone = backend.run_audio(wave[:1])
    np.testing.assert_array_equal(mi[:1], mi_alone)
    np.testing.assert_array_equal(audio_x[:1], audio_alone)
    ids = rng.integers(5, 50, size=(2, 9))
    mask = np.ones_like(ids)
    mask[0, 4:] = 0
    both = backend.run_text(ids, mask)
    alone = backend.run_text(ids[:1, :4], mask[:1, :4])
    np.testing.assert_array_equal(both[0, :4], alone[0])


# ------------------------------------------------------------------------------- GPU providers, faked
#
# The CPU package cannot start the CUDA or TensorRT provider, and it accepts any provider option name
# (misspelled ones are dropped without a word). The fake session below stands in for onnxruntime-gpu:
# it refuses option names its providers do not parse, as their ProviderOptionsParser does, reports the
# providers as active, records what the backend asked for, and runs the graph on the real CPU provider.

# Option names the providers parse, from ONNX Runtime's sources: provider_option_names in
# onnxruntime/core/providers/cuda/cuda_execution_provider_info.cc and
# onnxruntime/core/providers/tensorrt/tensorrt_execution_provider_info.cc (main branch, 2025; the
# documented pages onnxruntime.ai/docs/execution-providers/{CUDA,TensorRT}-ExecutionProvider.html list
# the same names).
CUDA_OPTIONS = {
    "device_id", "has_user_compute_stream", "user_compute_stream", "gpu_mem_limit", "arena_extend_strategy",
    "cudnn_conv_algo_search", "do_copy_in_default_stream", "gpu_external_alloc", "gpu_external_free",
    "gpu_external_empty_cache", "cudnn_conv_use_max_workspace", "enable_cuda_graph", "cudnn_conv1d_pad_to_nc1d",
    "tunable_op_enable", "tunable_op_tuning_enable", "tunable_op_max_tuning_duration_ms",
    "enable_skip_layer_norm_strict_mode", "prefer_nhwc", "use_ep_level_unified_stream", "use_tf32",
}
TRT_OPTIONS = {
    "device_id", "has_user_compute_stream", "trt_max_partition_iterations", "trt_min_subgraph_size",
    "trt_max_workspace_size", "trt_fp16_enable", "trt_int8_enable", "trt_int8_calibration_table_name",
    "trt_int8_use_native_calibration_table", "trt_dla_enable", "trt_dla_core", "trt_dump_subgraphs",
    "trt_engine_cache_enable", "trt_engine_cache_path", "trt_engine_cache_prefix", "trt_engine_decryption_enable",
    "trt_engine_decryption_lib_path", "trt_force_sequential_engine_build", "trt_context_memory_sharing_enable",
    "trt_layer_norm_fp32_fallback", "trt_timing_cache_enable", "trt_timing_cache_path", "trt_force_timing_cache",
    "trt_detailed_build_log", "trt_build_heuristics_enable", "trt_sparsity_enable", "trt_builder_optimization_level",
    "trt_auxiliary_streams", "trt_tactic_sources", "trt_extra_plugin_lib_paths", "trt_profile_min_shapes",
    "trt_profile_max_shapes", "trt_profile_opt_shapes", "trt_cuda_graph_enable",
}
DOCUMENTED = {"CUDAExecutionProvider": CUDA_OPTIONS, "TensorrtExecutionProvider": TRT_OPTIONS}
# Options parsed as integers by the providers (a Python bool would arrive as "True" and fail there).
INTEGER_OPTIONS = {"device_id", "trt_max_workspace_size", "gpu_mem_limit"}


class FakeGpuSession:
    """onnxruntime-gpu's InferenceSession as far as the backend uses it (see the comment above).

    Class attributes set by a test: ``created`` (every session), ``gpu_ops`` (op types placed on the GPU
    provider; None: all), ``fail_create`` / ``fail_run`` (an exception to raise).
    """

    created: list = []
    gpu_ops = None
    fail_create = None
    fail_run = None

    def __init__(self, path, sess_options=None, providers=None, provider_options=None, **kwargs):
        for name, options in (p if isinstance(p, tuple) else (p, {}) for p in providers):
            unknown = set(options) - DOCUMENTED.get(name, set())
            if unknown:
                raise RuntimeError(f"[ONNXRuntimeError] : 1 : FAIL : Unknown provider option: \"{sorted(unknown)[0]}\".")
            for key in INTEGER_OPTIONS & set(options):
                int(str(options[key]))  # the provider parses these as integers
        if FakeGpuSession.fail_create is not None:
            raise FakeGpuSession.fail_create
        self.path, self.providers, self.kwargs, self.options = path, providers, kwargs, sess_options
        self._cpu = REAL_SESSION(path, sess_options, providers=["CPUExecutionProvider"])
        FakeGpuSession.created.append(self)

    def get_providers(self):
        return [p[0] if isinstance(p, tuple) else p for p in self.providers]

    def get_provider_graph_assignment_info(self):
        gpu = self.get_providers()[0]
        out = []
        for subgraph in self._cpu.get_provider_graph_assignment_info():  # fails unless the entry was set
            for node in subgraph.get_nodes():
                on_gpu = FakeGpuSession.gpu_ops is None or node.op_type in FakeGpuSession.gpu_ops
                out.append(type("Subgraph", (), {"ep_name": gpu if on_gpu else "CPUExecutionProvider",
                                                 "get_nodes": lambda self, n=node: [n]})())
        return out

    def run(self, names, feed):
        if FakeGpuSession.fail_run is not None:
            raise FakeGpuSession.fail_run
        return self._cpu.run(names, feed)


@pytest.fixture
def fake_gpu_ort(monkeypatch, tmp_path):
    import onnxruntime as ort

    import deramos_rt.backends as backends
    import deramos_rt.backends.onnxruntime as ort_backend

    monkeypatch.setattr(FakeGpuSession, "created", [])
    for name in ("gpu_ops", "fail_create", "fail_run"):
        monkeypatch.setattr(FakeGpuSession, name, None)
    monkeypatch.setattr(ort, "InferenceSession", FakeGpuSession)
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(backends, "gpu_name", lambda index=0: "NVIDIA H200")
    monkeypatch.setattr(ort_backend, "tensorrt_library_version", lambda: "lib101601")
    return FakeGpuSession


@pytest.fixture(scope="module")
def fp16_bundle_dir(bundle_dir, tmp_path_factory):
    """The bundle with an "fp16" variant naming the fp32 files (for the provider logic; numbers are fp32)."""
    import json

    from deramos_rt.bundle import MANIFEST, write_manifest

    copy = tmp_path_factory.mktemp("fp16") / "bundle"
    shutil.copytree(bundle_dir, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["variants"]["fp16"] = {**manifest["variants"]["fp32"], "device": "cuda"}
    for key in ("format", "format_version", "files"):
        manifest.pop(key)
    write_manifest(copy, manifest)
    return copy


def _options(session, provider):
    return next(options for name, options in (p for p in session.providers if isinstance(p, tuple)) if name == provider)


def test_every_provider_option_is_one_onnxruntime_documents(fp16_bundle_dir, fake_gpu_ort):
    bundle = load_bundle(fp16_bundle_dir)
    for device, precision in (("cuda", "fp32"), ("cuda:1", "fp16"), ("tensorrt", "fp16")):
        OnnxRuntimeBackend(bundle, device, precision)
    assert len(fake_gpu_ort.created) == 9
    for session in fake_gpu_ort.created:
        for name, options in (p for p in session.providers if isinstance(p, tuple)):
            assert set(options) <= DOCUMENTED[name], (name, set(options) - DOCUMENTED[name])


def test_fp32_on_cuda_is_true_fp32_and_tensorrt_runs_fp16(fp16_bundle_dir, fake_gpu_ort):
    """Fault: the CUDA provider's TF32 default (use_tf32 on) made "fp32" TF32."""
    bundle = load_bundle(fp16_bundle_dir)
    OnnxRuntimeBackend(bundle, "cuda", "fp32")
    assert _options(fake_gpu_ort.created[-1], "CUDAExecutionProvider")["use_tf32"] == 0
    with pytest.raises(DeramosError, match="TensorRT provider has no option to turn TensorRT's TF32 default off"):
        OnnxRuntimeBackend(bundle, "tensorrt", "fp32")
    backend = OnnxRuntimeBackend(bundle, "tensorrt")  # its default precision is fp16
    assert backend.info.precision == "fp16" and backend.max_batch == 64
    assert _options(fake_gpu_ort.created[-1], "TensorrtExecutionProvider")["trt_fp16_enable"] is True


def test_sessions_never_fall_back_to_the_cpu_inside_run(fp16_bundle_dir, fake_gpu_ort):
    """Fault: ONNX Runtime's default run() catches an EP failure, prints "Falling back" and retries on the CPU."""
    from onnxruntime.capi.onnxruntime_pybind11_state import EPFail

    backend = OnnxRuntimeBackend(load_bundle(fp16_bundle_dir), "cuda", "fp32")
    assert {s.kwargs.get("enable_fallback") for s in fake_gpu_ort.created} == {0}
    fake_gpu_ort.fail_run = EPFail("CUDA error cudaErrorLaunchFailure: unspecified launch failure")
    with pytest.raises(DeramosError, match="failed running the audio graph on CUDAExecutionProvider.*launch failure"):
        backend.run_audio(np.zeros((1, backend.bundle.protocol.num_samples), np.float32))


def test_real_onnxruntime_raises_instead_of_retrying_on_another_provider(bundle_dir, capsys):
    """The same on the real InferenceSession: with enable_fallback=0 its EPFail handler re-raises."""
    from onnxruntime.capi.onnxruntime_pybind11_state import EPFail

    backend = OnnxRuntimeBackend(load_bundle(bundle_dir), "cpu", "fp32")
    session = backend._sessions["audio"]

    class Failing:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def run(self, *args):
            raise EPFail("provider failed")

    session._sess = Failing(session._sess)
    with pytest.raises(DeramosError, match="provider failed"):
        backend.run_audio(np.zeros((1, backend.bundle.protocol.num_samples), np.float32))
    assert "Falling back" not in capsys.readouterr().out


def test_node_placement_is_logged_and_a_session_with_nothing_on_the_gpu_refused(fp16_bundle_dir, fake_gpu_ort, caplog):
    """Fault: nodes the GPU providers do not take ran on the CPU without a word."""
    bundle = load_bundle(fp16_bundle_dir)
    fake_gpu_ort.gpu_ops = {"MatMul", "Gemm", "Conv", "Add", "Mul"}  # the rest goes to the CPU provider
    with caplog.at_level(logging.INFO, logger="deramos_rt.backends.onnxruntime"):
        backend = OnnxRuntimeBackend(bundle, "cuda", "fp32")
    line = next(r.message for r in caplog.records if r.message.startswith("onnxruntime text graph:"))
    assert "on CUDAExecutionProvider" in line and "on CPUExecutionProvider" in line and "(CPU: " in line
    assert "nodes on the GPU" in backend.info.detail
    fake_gpu_ort.gpu_ops = set()
    with pytest.raises(DeramosError, match="placed none of the audio graph's nodes on the GPU"):
        OnnxRuntimeBackend(bundle, "cuda", "fp32")


def test_session_errors_give_the_providers_own_message(fp16_bundle_dir, fake_gpu_ort):
    """Fault: every session-creation error was reported as a corrupt ONNX file."""
    fake_gpu_ort.fail_create = RuntimeError("[ONNXRuntimeError] : 1 : FAIL : CUDA failure 35: CUDA driver version "
                                            "is insufficient for CUDA runtime version ; GPU=0\n more detail")
    with pytest.raises(DeramosError) as caught:
        OnnxRuntimeBackend(load_bundle(fp16_bundle_dir), "cuda", "fp32")
    message = str(caught.value)
    assert "could not create a session" in message and "CUDA driver version is insufficient" in message
    assert "corrupt" not in message and "more detail" in message and "\n" not in message


def test_tensorrt_provider_engine_cache_is_keyed_by_versions_and_gpu(fp16_bundle_dir, fake_gpu_ort, monkeypatch, caplog):
    """Fault: the provider's engine cache was keyed by the bundle only, so stale engines were reused."""
    import onnxruntime as ort

    import deramos_rt.backends.onnxruntime as ort_backend

    OnnxRuntimeBackend(load_bundle(fp16_bundle_dir), "tensorrt", cache_dir="/tmp/h27-unused")
    options = _options(fake_gpu_ort.created[0], "TensorrtExecutionProvider")
    assert options["trt_engine_cache_path"].endswith(f"/ort{ort.__version__}-trtlib101601-nvidia-h200/audio")
    assert options["trt_timing_cache_path"] == options["trt_engine_cache_path"]
    monkeypatch.setattr(ort_backend, "tensorrt_library_version", lambda: None)
    with caplog.at_level(logging.WARNING):
        OnnxRuntimeBackend(load_bundle(fp16_bundle_dir), "tensorrt")
    assert "engine cache off" in caplog.text
    assert "trt_engine_cache_enable" not in _options(fake_gpu_ort.created[-1], "TensorrtExecutionProvider")


def test_manifest_feed_stays_inside_the_profile_and_vocabulary(bundle_dir):
    from deramos_rt.backends.onnxruntime import manifest_feed

    manifest = load_bundle(bundle_dir).manifest
    small = {**manifest, "profile": {"batch": [1, 1, 2], "tokens": [1, 2, 3]},
             "text": {**manifest["text"], "vocab_size": 7}}
    feed = manifest_feed(small, "text", batch=5, tokens=9)
    assert feed["input_ids"].shape == (2, 3) and feed["input_ids"].max() < 7 and feed["attention_mask"].min() == 1
