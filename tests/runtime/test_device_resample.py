"""The device resampler (torch conv1d, the ONNX graph) against the numpy resampler on the reference cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deramos_rt.audio import AudioProtocol, INT16_SCALE, fit_length, protocol_signal, split_windows, to_mono
from deramos_rt.device_resample import TorchResampler, conv_kernel, graph_feed, resample_graph, torch_windows
from deramos_rt.errors import DeramosError
from deramos_rt.resample import torchaudio_resample
from tests.data.make_resample_reference import cases, make_signal

TOLERANCE = 2e-6
IDS = [f"{c['orig']}to{c['new']}-{c['channels']}ch" for c in cases()]


def _ort_session(model: bytes):
    import onnxruntime as ort

    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def _run_graph(signal: np.ndarray, orig: int, new: int, length: int, num_samples: int, first=0, count=1):
    feed = graph_feed(length, num_samples, first, count)
    session = _ort_session(resample_graph(orig, new, signal.dtype == np.int16))
    return session.run(None, {"signal": signal, "start": feed.start, "stop": feed.stop, "pads": feed.pads,
                              "shape": feed.shape})[0]


@pytest.mark.parametrize("index", range(len(cases())), ids=IDS)
def test_torch_conv1d_on_the_cpu_equals_the_numpy_resampler(index):
    case = cases()[index]
    signal = make_signal(case["orig"], case["channels"], case["frames"], case["seed"])
    numpy_out = torchaudio_resample(signal, case["orig"], case["new"])
    torch_out = TorchResampler(torch, "cpu")(torch.from_numpy(signal), case["orig"], case["new"]).numpy()
    assert torch_out.dtype == np.float32 and torch_out.shape == numpy_out.shape
    assert np.abs(torch_out - numpy_out).max() <= TOLERANCE


@pytest.mark.parametrize("index", range(len(cases())), ids=IDS)
def test_onnx_graph_on_the_cpu_provider_equals_the_numpy_resampler(index):
    case = cases()[index]
    signal = make_signal(case["orig"], case["channels"], case["frames"], case["seed"])
    numpy_out = to_mono(torchaudio_resample(signal, case["orig"], case["new"]).T)  # channel mean, as the protocol
    out = _run_graph(signal, case["orig"], case["new"], numpy_out.size, numpy_out.size)
    assert out.shape == (1, numpy_out.size)
    assert np.abs(out[0] - numpy_out).max() <= TOLERANCE


def test_the_convolution_stays_float32_under_autocast():
    signal = make_signal(44100, 2, 5000, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = TorchResampler(torch, "cpu")(torch.from_numpy(signal), 44100, 24000)
    assert out.dtype == torch.float32
    assert np.abs(out.numpy() - torchaudio_resample(signal, 44100, 24000)).max() <= TOLERANCE


def test_the_kernel_is_torchaudios_layout():
    kernel = conv_kernel(44100, 24000)  # reduced 147 -> 80
    assert (kernel.orig, kernel.new) == (147, 80)
    assert kernel.weight.shape == (80, 1, 2 * kernel.width + 147) and kernel.weight.dtype == np.float32
    with pytest.raises(DeramosError, match="positive integers"):
        conv_kernel(0, 24000)


@pytest.mark.parametrize("mode", ["truncate", "windows"])
@pytest.mark.parametrize("rate", [44100, 24000])
def test_int16_stereo_clips_become_the_host_paths_model_input(mode, rate):
    protocol = AudioProtocol(24000, 0.5, "torchaudio")
    rng = np.random.default_rng(3)
    pcm = (rng.uniform(-0.8, 0.8, (2, int(1.3 * rate), 2)) * INT16_SCALE).astype(np.int16)
    host = []
    for clip in pcm:
        signal = protocol_signal(clip.astype(np.float32) / np.float32(INT16_SCALE), rate, protocol)
        host.append(split_windows(signal, protocol.num_samples)[0] if mode == "windows"
                    else fit_length(signal, protocol.num_samples)[None])
    windows = len(host[0])
    out = torch_windows(TorchResampler(torch, "cpu"), torch.from_numpy(pcm), rate, 24000, protocol.num_samples, windows)
    assert out.shape == (2 * windows, protocol.num_samples)
    assert np.abs(out.numpy() - np.concatenate(host)).max() <= TOLERANCE
    length = -(-24000 * pcm.shape[1] // rate)
    graph = _run_graph(np.ascontiguousarray(pcm[0].T), rate, 24000, length, protocol.num_samples, 0, windows)
    assert np.abs(graph - host[0]).max() <= TOLERANCE


def test_the_graph_gives_any_run_of_windows_of_a_clip():
    protocol = AudioProtocol(16000, 0.25, "torchaudio")
    signal = make_signal(22050, 1, 22050, 11)  # 1 s -> 4 windows of 0.25 s
    host, weights = split_windows(protocol_signal(signal.T, 22050, protocol), protocol.num_samples)
    middle = _run_graph(signal, 22050, 16000, 16000, protocol.num_samples, first=1, count=2)
    last = _run_graph(signal, 22050, 16000, 16000, protocol.num_samples, first=3, count=1)
    assert np.abs(middle - host[1:3]).max() <= TOLERANCE and np.abs(last - host[3:]).max() <= TOLERANCE
    assert len(weights) == 4


def test_equal_rates_build_a_graph_without_a_convolution():
    import onnx

    model = onnx.load_from_string(resample_graph(16000, 16000, False))
    assert "Conv" not in {n.op_type for n in model.graph.node}
    assert "Conv" in {n.op_type for n in onnx.load_from_string(resample_graph(44100, 16000, False)).graph.node}
    stereo = np.stack([np.arange(10, dtype=np.float32), np.ones(10, np.float32)])
    out = _run_graph(stereo, 16000, 16000, 10, 4, 0, 3)
    expected = np.zeros(12, np.float32)
    expected[:10] = (stereo[0] + stereo[1]) / 2
    np.testing.assert_array_equal(out, expected.reshape(3, 4))
