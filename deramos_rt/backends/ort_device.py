"""ONNX Runtime on a GPU provider: batches prepared on the device, IOBinding between the graphs.

With ONNX Runtime's CUDA or TensorRT provider (``backends/onnxruntime.py`` opens the sessions):

* :class:`OrtDeviceStage`: decode workers hand over native-rate audio. Each clip is copied to the device
  once (an ``OrtValue``) and a resampling graph (``deramos_rt.device_resample.resample_graph``, one
  session per (source rate, sample type), cached) writes the clip's windows straight into the batch's
  device buffer, at the clip's rows, by binding its output to that address. Torch tensors already on the
  GPU are bound by address, without a copy.
* :class:`OrtDeviceIO`: the audio graph reads that buffer and leaves ``audio_x`` on the device (an
  ``OrtValue``); the TA graph reads it from there. Only the MI and TA distributions come back to the host.

The resampling graphs run on the CUDA provider also under the TensorRT provider (the same device memory):
TensorRT would build an engine for every new clip length. TF32 is off for them (``use_tf32=0``), so the
convolution is the fp32 one the tests check. Everything here is ONNX Runtime's documented Python API for
any device type (``OrtValue``, ``io_binding``, ``run_with_iobinding``), so the ordinary tests run it all on
the CPU provider with ``device_type="cpu"``; on a GPU the same calls say ``"cuda"``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from deramos_rt.backends.base import handover
from deramos_rt.errors import DeramosError

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
# Device batch buffers per batch size: one filled by the stage while the audio graph reads the other.
BUFFER_SLOTS = 2
_FLOAT_BYTES = 4


@dataclass
class OrtBatch:
    """A batch on the device: an (B, N) float32 ``OrtValue`` the audio graph reads."""

    value: Any
    rows: int

    def __len__(self) -> int:
        return self.rows


def is_device_value(value) -> bool:
    """An :class:`OrtBatch` or an ``OrtValue`` (what this module hands the backend)."""
    return isinstance(value, OrtBatch) or type(value).__name__ == "OrtValue"


def resample_providers(providers: list) -> list:
    """The audio graph's providers for the resampling graphs: TensorRT dropped, CUDA with TF32 off."""
    out = []
    for p in providers:
        name, options = (p if isinstance(p, tuple) else (p, None))
        if name == TRT_EP:
            continue
        out.append((name, {**(options or {}), "use_tf32": 0}) if name == CUDA_EP else p)
    return out


class OrtDeviceIO:
    """The audio and TA graphs through IOBinding, ``audio_x`` kept on the device.

    Args:
        ort: the onnxruntime module.
        sessions: the backend's ``{graph: InferenceSession}``.
        outputs: ``{graph: [output names]}``.
        providers: the audio graph's providers (for the resampling graphs).
        device_type: ``"cuda"`` (or ``"cpu"`` in the tests).
        device_id: the GPU.
    """

    def __init__(self, ort, sessions: dict, outputs: dict, providers: list, device_type: str = "cuda",
                 device_id: int = 0):
        self._ort, self._sessions, self._outputs = ort, sessions, outputs
        self.providers = resample_providers(providers)
        self.device_type, self.device_id = device_type, int(device_id)

    def stage(self, protocol) -> "OrtDeviceStage":
        """The input stage of this device for ``protocol``."""
        return OrtDeviceStage(self, protocol)

    def run_audio(self, batch: OrtBatch) -> tuple[np.ndarray, Any]:
        """The audio graph on a staged batch: MI to the host, ``audio_x`` left on the device."""
        session = self._sessions["audio"]
        io = session.io_binding()
        io.bind_ortvalue_input("waveform", batch.value)
        mi_name, x_name = self._outputs["audio"]
        io.bind_output(mi_name, "cpu")
        io.bind_output(x_name, self.device_type, self.device_id)
        session.run_with_iobinding(io)
        mi, audio_x = io.get_outputs()
        return mi.numpy(), audio_x

    def run_ta(self, audio_x, text_x: np.ndarray, text_mask: np.ndarray) -> np.ndarray:
        """The TA graph reading ``audio_x`` where the audio graph left it."""
        session = self._sessions["ta"]
        io = session.io_binding()
        io.bind_ortvalue_input("audio_x", audio_x)
        io.bind_cpu_input("text_x", np.ascontiguousarray(text_x, dtype=np.float32))
        io.bind_cpu_input("text_mask", np.ascontiguousarray(text_mask, dtype=np.int64))
        io.bind_output(self._outputs["ta"][0], "cpu")
        session.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()[0]

    def upload(self, array: np.ndarray):
        """A host array copied into an ``OrtValue`` on the device."""
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device_type, self.device_id)

    def allocate(self, shape: tuple[int, ...]):
        """An uninitialised float32 ``OrtValue`` on the device."""
        return self._ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self.device_type,
                                                              self.device_id)

    def session(self, model: bytes):
        """A session for a resampling graph on the device's provider (a CPU fallback is an error)."""
        ort = self._ort
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(model, sess_options=options, providers=self.providers)
        wanted = CUDA_EP if self.device_type == "cuda" else CPU_EP
        if session.get_providers()[0] != wanted:
            raise DeramosError(f"the resampling graph needs ONNX Runtime's {wanted}, but only "
                               f"{', '.join(session.get_providers())} started")
        return session


class OrtDeviceStage:
    """Prepares batches on ONNX Runtime's device (module docstring).

    Args:
        io: the backend's :class:`OrtDeviceIO`.
        protocol: the model's audio protocol.
    """

    native = True

    def __init__(self, io: OrtDeviceIO, protocol):
        self._io, self.protocol = io, protocol
        self._sessions: dict[tuple[int, bool], Any] = {}
        self._buffers: dict[int, list] = {}
        self._turn: dict[int, int] = {}
        self.description = (f"onnxruntime {io.device_type}:{io.device_id}: " + handover(protocol, "an ONNX graph")
                            + "; windows written into device batch buffers (IOBinding)")

    def stage(self, rows: list[tuple[Any, int]]) -> OrtBatch:
        """Each clip's windows written into the rows of one device buffer."""
        buffer = self._buffer(len(rows))
        base, row_bytes = buffer.data_ptr(), self.protocol.num_samples * _FLOAT_BYTES
        for prepared, first, start, count in _segments(rows):
            self._write(prepared, first, count, base + start * row_bytes)
        return OrtBatch(buffer, len(rows))

    def _buffer(self, rows: int):
        """The next device buffer for ``rows`` rows (round-robin, so the one being read is not refilled)."""
        slots = self._buffers.setdefault(rows, [None] * BUFFER_SLOTS)
        turn = self._turn.get(rows, 0)
        self._turn[rows] = (turn + 1) % BUFFER_SLOTS
        if slots[turn] is None:
            slots[turn] = self._io.allocate((rows, self.protocol.num_samples))
        return slots[turn]

    def _write(self, prepared, first: int, count: int, address: int) -> None:
        """Windows ``first .. first + count - 1`` of one clip into ``count`` rows at ``address``."""
        from deramos_rt.device_resample import graph_feed, resample_graph

        protocol = self.protocol
        offset = 0
        if prepared.native is None:  # resampled by a decode worker (soxr): copy its windows
            signal, rate, length = prepared.windows.reshape(1, -1), protocol.sample_rate, prepared.windows.size
        else:
            signal, rate, length = prepared.native.signal, prepared.native.rate, prepared.native.length
            offset = prepared.native.offset
            signal = signal.T if isinstance(signal, np.ndarray) else signal.reshape(signal.shape[0], -1).t()
        int16 = getattr(signal, "dtype", None) == np.int16
        key = (rate, int16)
        if key not in self._sessions:
            self._sessions[key] = self._io.session(resample_graph(rate, protocol.sample_rate, int16))
        session = self._sessions[key]
        feed = graph_feed(length, protocol.num_samples, first, count, offset)
        io = session.io_binding()
        bound = self._bind_signal(io, signal)  # alive until the run below has read it
        for name in ("start", "stop", "pads", "shape"):
            io.bind_cpu_input(name, getattr(feed, name))
        io.bind_output("windows", self._io.device_type, self._io.device_id, np.float32,
                       [count, protocol.num_samples], address)
        session.run_with_iobinding(io)
        del bound

    def _bind_signal(self, io, signal):
        """Bind the (channels, frames) input: a host array copied once, a device tensor by its address.

        Returns what the binding points into (keep it until the run)."""
        if not isinstance(signal, np.ndarray):
            on_device = signal.device.type == self._io.device_type and self._io.device_type != "cpu"
            if on_device:
                import torch

                tensor = signal.contiguous()
                # ONNX Runtime reads it on its own stream: what the caller's stream queued must be done.
                torch.cuda.current_stream(tensor.device).synchronize()
                io.bind_input("signal", self._io.device_type, self._io.device_id, np.float32, list(tensor.shape),
                              tensor.data_ptr())
                return tensor
            signal = signal.detach().cpu().numpy()
        value = self._io.upload(signal)
        io.bind_ortvalue_input("signal", value)
        return value


def _segments(rows: list[tuple[Any, int]]) -> list[tuple[Any, int, int, int]]:
    """(clip, first window, first row, window count) for each run of consecutive windows of one clip."""
    out: list[list] = []
    for r, (prepared, window) in enumerate(rows):
        last = out[-1] if out else None
        if last is not None and last[0] is prepared and last[1] + last[3] == window:
            last[3] += 1
        else:
            out.append([prepared, window, r, 1])
    return [tuple(s) for s in out]
