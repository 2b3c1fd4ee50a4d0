"""The ONNX Runtime backend on a tiny bundle: outputs match torch, batch sizes, providers, refusals."""

import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
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
    for device in ("cuda", "cuda:1", "tensorrt"):
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
