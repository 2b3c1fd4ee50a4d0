"""The torchaudio-protocol resampler on the inference device, and the rest of the audio protocol with it.

torchaudio computes its default ``Resample`` as a strided 1-D convolution with a fixed kernel; the kernel
here is ``deramos_rt.resample``'s own float32 kernel (one definition), laid out as torchaudio lays it out:
``(new, 1, 2 * width + orig)`` for the reduced rates ``orig -> new``, the signal zero-padded by
``(width, width + orig)``, stride ``orig``, the output cut at ``ceil(new * n / orig)``. Two ways to run it:

* :class:`TorchResampler` / :func:`torch_windows`: torch ``conv1d`` on the device of the torch and
  AOTInductor backends (checked on torch's CPU device in the ordinary tests);
* :func:`resample_graph`: a small ONNX graph (one ``Conv``, then the channel mean and the cut to
  windows), built with ``onnx.helper`` per (source rate -> model rate) pair, for ONNX Runtime's CUDA and
  TensorRT providers (``deramos_rt.backends.ort_device`` runs it on the audio graph's provider).

Both do what the host path does, in its order: each channel resampled, the channels summed in order and
divided by their count, then zero-padded / cut to the clip length (``truncate``) or to consecutive windows.
The convolution always runs in float32 (outside autocast) with TF32 off: cuDNN would otherwise multiply
with 10-bit mantissas (errors near 1e-3 instead of 1e-7). soxr protocols never come here (soxr is CPU
code). torch and onnx are imported by the functions that need them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from deramos_rt.audio import INT16_SCALE, resampled_length
from deramos_rt.resample import _check_rates, _kernel, _plan

# ONNX opset of the resampling graphs (Conv, ReduceMean with an axes attribute, Pad / Slice with inputs).
OPSET = 17


@dataclass(frozen=True)
class ConvKernel:
    """torchaudio's resampling kernel for reduced rates ``orig -> new``.

    Attributes:
        orig, new: the rates divided by their gcd (stride and output phases).
        width: zero-padding on the left (``width + orig`` on the right).
        weight: (new, 1, 2 * width + orig) float32, ``conv1d``'s layout.
    """

    orig: int
    new: int
    width: int
    weight: np.ndarray


@lru_cache(maxsize=32)
def conv_kernel(orig_freq: int, new_freq: int) -> ConvKernel:
    """The kernel of ``orig_freq -> new_freq`` Hz (cached: building one is most of a short clip's cost).

    Raises:
        DeramosError: a rate is not a positive integer.
    """
    orig_freq, new_freq = _check_rates(orig_freq, new_freq)
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    width = _plan(orig, new).width
    taps = 2 * width + orig
    kernel = _kernel(orig, new, width, 0, new, 0, taps)  # (taps, new)
    return ConvKernel(orig, new, width, np.ascontiguousarray(kernel.T[:, None, :]))


def no_tf32(torch):
    """cuDNN convolutions in full fp32 while the block runs (its TF32 switch is on by default)."""
    cudnn = torch.backends.cudnn
    return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                       allow_tf32=False)


class TorchResampler:
    """torchaudio's default ``Resample`` as a torch ``conv1d`` on one device (kernels cached per rate pair).

    Args:
        torch: the torch module.
        device: where the signals and kernels live.
    """

    def __init__(self, torch, device):
        self._torch, self.device = torch, torch.device(device)
        self._weights: dict[tuple[int, int], object] = {}

    def __call__(self, signals, orig_freq: int, new_freq: int):
        """(R, n) float32 signals at ``orig_freq`` -> (R, ceil(new_freq * n / orig_freq)) at ``new_freq``."""
        if orig_freq == new_freq:
            return signals
        torch = self._torch
        kernel = conv_kernel(orig_freq, new_freq)
        weight = self._weight(orig_freq, new_freq, kernel)
        rows, frames = signals.shape
        padded = torch.nn.functional.pad(signals.float()[:, None], (kernel.width, kernel.width + kernel.orig))
        with torch.autocast(self.device.type, enabled=False), no_tf32(torch):
            out = torch.nn.functional.conv1d(padded, weight, stride=kernel.orig)  # (R, new, frames')
        out = out.transpose(1, 2).reshape(rows, -1)
        return out[:, : resampled_length(frames, orig_freq, new_freq)]

    def _weight(self, orig_freq: int, new_freq: int, kernel: ConvKernel):
        key = (orig_freq, new_freq)
        if key not in self._weights:
            self._weights[key] = self._torch.from_numpy(kernel.weight).to(self.device)
        return self._weights[key]


def torch_windows(resampler: TorchResampler, signals, rate: int, target_rate: int, num_samples: int, windows: int,
                  offset: int = 0):
    """Model input from a group of same-shape clips: resample, channel mean, cut / pad to windows.

    Args:
        resampler: the device's :class:`TorchResampler`.
        signals: (G, frames, channels) tensor, int16 (scaled by 1 / 32768, as libsndfile decodes) or float.
        rate: the clips' sample rate.
        target_rate: the model's rate.
        num_samples: samples per window (the protocol's clip length).
        windows: windows per clip (1 in ``truncate`` mode).
        offset: resampled samples before the first window (a streamed piece of a long file, which starts
            early enough for the kernel: ``deramos_rt.audio.stream_windows``).

    Returns:
        (G * windows, num_samples) float32 on the resampler's device: clip by clip, window by window.
    """
    torch = resampler._torch
    groups, frames, channels = signals.shape
    x = signals.to(resampler.device, torch.float32)
    if signals.dtype == torch.int16:
        x = x / INT16_SCALE
    resampled = resampler(x.permute(0, 2, 1).reshape(groups * channels, frames), rate, target_rate)
    resampled = resampled.reshape(groups, channels, -1)
    mono = resampled[:, 0].clone()
    for c in range(1, channels):  # the host's to_mono: a sum in channel order, then one division
        mono += resampled[:, c]
    if channels > 1:
        mono /= channels
    keep = max(0, min(mono.shape[1] - offset, windows * num_samples))
    out = torch.zeros(groups, windows * num_samples, dtype=torch.float32, device=resampler.device)
    out[:, :keep] = mono[:, offset:offset + keep]
    return out.reshape(groups * windows, num_samples)


# -------------------------------------------------------------------------------------------------- ONNX

@dataclass(frozen=True)
class GraphFeed:
    """The small int64 inputs of a resampling graph for one clip, all known on the host from its length:
    which resampled samples to keep (``start``, ``stop``), the zeros after them (``pads``) and the
    windows' shape."""

    start: np.ndarray
    stop: np.ndarray
    pads: np.ndarray
    shape: np.ndarray


def graph_feed(length: int, num_samples: int, first: int = 0, count: int = 1, offset: int = 0) -> GraphFeed:
    """Inputs giving windows ``first .. first + count - 1`` of a clip resampled to ``length`` samples, the
    windows starting ``offset`` samples in (see :func:`torch_windows`)."""
    start = offset + first * num_samples
    stop = max(start, min(length, offset + (first + count) * num_samples))
    return GraphFeed(np.array([start], np.int64), np.array([stop], np.int64),
                     np.array([0, count * num_samples - (stop - start)], np.int64),
                     np.array([count, num_samples], np.int64))


@lru_cache(maxsize=32)
def resample_graph(orig_freq: int, new_freq: int, int16: bool) -> bytes:
    """A serialised ONNX model preparing one clip for the audio graph, run on any ONNX Runtime provider.

    Inputs: ``signal`` (channels, frames) int16 or float32 at ``orig_freq``; ``start``, ``stop`` (1,),
    ``pads`` (2,) and ``shape`` (2,) int64 from :func:`graph_feed`. Output: ``windows`` (W, num_samples)
    float32 at ``new_freq``. Equal rates give the same graph without the Conv.
    """
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    signal = "signal"
    if int16:
        inits.append(numpy_helper.from_array(np.array(1 / INT16_SCALE, np.float32), "int16_scale"))
        nodes += [helper.make_node("Cast", ["signal"], ["signal_f"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["signal_f", "int16_scale"], ["signal_scaled"])]
        signal = "signal_scaled"
    channels = signal
    if orig_freq != new_freq:
        kernel = conv_kernel(orig_freq, new_freq)
        inits += [numpy_helper.from_array(kernel.weight, "kernel"),
                  numpy_helper.from_array(np.array([1], np.int64), "axis_one"),
                  numpy_helper.from_array(np.array([0, -1], np.int64), "flat")]
        nodes += [helper.make_node("Unsqueeze", [signal, "axis_one"], ["signal_3d"]),
                  helper.make_node("Conv", ["signal_3d", "kernel"], ["phases"], strides=[kernel.orig],
                                   pads=[kernel.width, kernel.width + kernel.orig]),
                  helper.make_node("Transpose", ["phases"], ["frames"], perm=[0, 2, 1]),
                  helper.make_node("Reshape", ["frames", "flat"], ["resampled"])]
        channels = "resampled"
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "zero"))
    nodes += [helper.make_node("ReduceMean", [channels], ["mono"], axes=[0], keepdims=0),
              helper.make_node("Slice", ["mono", "start", "stop", "zero"], ["kept"]),
              helper.make_node("Pad", ["kept", "pads"], ["padded"], mode="constant"),
              helper.make_node("Reshape", ["padded", "shape"], ["windows"])]
    dtype = TensorProto.INT16 if int16 else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, f"deramos_resample_{orig_freq}_to_{new_freq}",
        [helper.make_tensor_value_info("signal", dtype, ["channels", "frames"]),
         helper.make_tensor_value_info("start", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("stop", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("pads", TensorProto.INT64, [2]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("windows", TensorProto.FLOAT, ["windows", "samples"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="deramos_rt")
    model.ir_version = 8  # what ONNX Runtime 1.17 and later read
    return model.SerializeToString()
