"""The torch backend: a training RUN DIRECTORY run eagerly through ``training.split``, and the device path
the torch and AOTInductor backends share on CUDA.

The torch backend is the reference for parity (the exported graphs are checked against the same modules)
and the fallback where no bundle exists. It is the only backend that imports ``training``; everything is
imported when the backend is opened. On CUDA, ``fp16`` and ``bf16`` run under autocast, which keeps
softmax and LayerNorm in fp32.

On CUDA the data path keeps the GPU fed (:class:`TorchDevicePath`):

* :class:`TorchStage`: decode workers hand over native-rate audio (int16 for 16-bit files); a batch's clips
  are copied into pinned host buffers, sent to the GPU on their own stream and resampled there
  (``deramos_rt.device_resample``) while the previous batch computes. Tensors already on the device
  join a batch without a trip to the host.
* the audio graph runs on its own stream, in the Scorer's audio thread (``overlaps_batches``), and its
  ``audio_x`` stays on the GPU for the TA graph; only the MI distributions come back to the host;
* :class:`GraphedAudio` (torch backend only): the audio graph captured as a CUDA graph at a fixed batch,
  the last batch padded with zeros (a clip's scores never depend on its batch mates). Set
  ``DERAMOS_CUDA_GRAPHS=0`` to run eagerly; a graph that fails to capture is logged once and the backend
  runs eagerly. ``DERAMOS_TORCH_COMPILE=1`` also compiles it (``torch.compile``) before capture.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from deramos_rt.backends.base import BackendInfo, handover
from deramos_rt.errors import DeramosError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")
# Pinned staging buffers in flight: one filling while the previous one's copy may still run.
STAGING_SLOTS = 2
# Batch sizes captured as CUDA graphs per backend (a job uses one; more only for mixed batch sizes).
MAX_CUDA_GRAPHS = 3
_ALIGN = 64


class TorchThreads:
    """torch's intra-op threads for the duration of each job, the previous setting restored after it.

    Args:
        torch: the torch module.
        threads: the count used when a job asks for none (None: leave torch's setting alone).
    """

    def __init__(self, torch, threads: int | None):
        self._torch, self.default = torch, threads

    @contextlib.contextmanager
    def job(self, threads: int | None = None):
        threads = threads or self.default
        previous = self._torch.get_num_threads()
        if threads:
            self._torch.set_num_threads(int(threads))
        try:
            yield
        finally:
            self._torch.set_num_threads(previous)

    def restore(self) -> None:
        """Nothing outlives a job (kept so that closing a backend reads the same everywhere)."""


def to_device(torch, value, device):
    """A numpy array or a tensor as a contiguous tensor on ``device`` (no copy when it is already there)."""
    if isinstance(value, torch.Tensor):
        return value.to(device).contiguous()
    return torch.from_numpy(np.ascontiguousarray(value)).to(device)


# ------------------------------------------------------------------------------------------------ streams

class Streams:
    """The CUDA streams of the device path; on other devices everything runs in order and these are no-ops."""

    def __init__(self, torch, device):
        self._torch = torch
        self.cuda = device.type == "cuda"
        self.copy = torch.cuda.Stream(device) if self.cuda else None
        self.audio = torch.cuda.Stream(device) if self.cuda else None

    def on(self, stream):
        """Run the block on ``stream`` (a no-op for None)."""
        return self._torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()

    def record(self):
        """An event marking the work queued so far on the current stream (None off CUDA)."""
        if not self.cuda:
            return None
        event = self._torch.cuda.Event()
        event.record()
        return event

    def follow_caller(self) -> None:
        """Make the copy stream wait for the work the caller queued on its current stream so far."""
        if self.cuda:
            self.copy.wait_stream(self._torch.cuda.current_stream())

    def keep_for_copy(self, tensor) -> None:
        """``tensor`` (the caller's) is read on the copy stream: keep its memory until that is done."""
        if self.cuda and tensor.is_cuda:
            tensor.record_stream(self.copy)

    def wait(self, event, tensor=None) -> None:
        """Make the current stream wait for ``event``; ``tensor`` (made on another stream) is kept alive for it."""
        if self.cuda and event is not None:
            current = self._torch.cuda.current_stream()
            current.wait_event(event)
            if tensor is not None:
                tensor.record_stream(current)


@dataclass
class Staged:
    """A batch on the device: (B, N) float32 and the event after which it is complete (None off CUDA)."""

    tensor: Any
    event: Any = None

    def __len__(self) -> int:
        return int(self.tensor.shape[0])


class PinnedStaging:
    """Host buffers in page-locked memory (so copies to the GPU are asynchronous), reused round-robin.

    A buffer is refilled only after the copy out of it has finished (its event).
    """

    def __init__(self, torch, slots: int = STAGING_SLOTS):
        self._torch = torch
        self._slots: list[list] = [[None, None] for _ in range(slots)]  # [buffer, event]
        self._next = 0

    def take(self, nbytes: int):
        """A pinned uint8 buffer of at least ``nbytes`` that no copy reads any more."""
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        if slot[1] is not None:
            slot[1].synchronize()
        if slot[0] is None or slot[0].numel() < nbytes:
            slot[0] = self._torch.empty(max(nbytes, 1), dtype=self._torch.uint8, pin_memory=True)
        self._last = slot
        return slot[0]

    def copied(self, event) -> None:
        """The copy out of the buffer last taken was queued before ``event``."""
        self._last[1] = event


# ------------------------------------------------------------------------------------------------- stage

class TorchStage:
    """Prepares batches on a torch device (see the module docstring).

    Args:
        torch: the torch module.
        device: the backend's device.
        protocol: the model's audio protocol.
        streams: the device path's :class:`Streams`.
    """

    native = True

    def __init__(self, torch, device, protocol, streams: Streams):
        from deramos_rt.device_resample import TorchResampler

        self._torch, self.device, self.protocol, self._streams = torch, device, protocol, streams
        self._resampler = TorchResampler(torch, device)
        self._pinned = PinnedStaging(torch) if streams.cuda else None
        self.description = f"{device}: " + handover(protocol, f"torch conv1d on {device}") + (
            "; pinned staging, copies on their own stream" if streams.cuda else "")

    def stage(self, rows: list[tuple[Any, int]]) -> Staged:
        """The batch's rows as one (B, N) device tensor, prepared on the copy stream."""
        clips = list({id(p): p for p, _ in rows}.values())
        self._streams.follow_caller()  # tensors the caller made on its own stream are complete first
        with self._streams.on(self._streams.copy):
            windows = self._clip_windows(clips)
            batch = self._torch.stack([windows[id(p)][w] for p, w in rows])
            return Staged(batch, self._streams.record())

    def _clip_windows(self, clips: list) -> dict[int, Any]:
        """(W, N) device windows of every clip, computed per group of same-shape clips."""
        groups: dict[tuple, list] = {}
        for p in clips:
            groups.setdefault(_group_key(p), []).append(p)
        keys = list(groups)
        host = {k: [self._host_array(p) for p in groups[k]] for k in keys if not k[0].startswith("tensor")}
        uploaded = self._upload(host)
        out = {}
        for key in keys:
            members = groups[key]
            tensor = uploaded[key] if key in uploaded else self._stack_tensors(members)
            windows = self._windows(key, members, tensor)
            per = windows.shape[0] // len(members)
            for i, p in enumerate(members):
                out[id(p)] = windows[i * per:(i + 1) * per]
        return out

    def _windows(self, key: tuple, members: list, tensor):
        if key[0] == "host":  # already model input (resampled by a decode worker): (G, W, N)
            return tensor.reshape(-1, self.protocol.num_samples).float()
        from deramos_rt.device_resample import torch_windows

        p = members[0]
        return torch_windows(self._resampler, tensor, p.native.rate, self.protocol.sample_rate,
                             self.protocol.num_samples, p.count, p.native.offset)

    def _stack_tensors(self, members: list):
        """Clips given as tensors, stacked as (G, frames, channels) on the backend's device."""
        signals = [p.native.signal.reshape(p.native.signal.shape[0], -1) for p in members]
        for signal in signals:
            self._streams.keep_for_copy(signal)
        return self._torch.stack(signals).to(self.device)

    @staticmethod
    def _host_array(p) -> np.ndarray:
        return p.windows if p.native is None else p.native.signal

    def _upload(self, host: dict[tuple, list[np.ndarray]]) -> dict[tuple, Any]:
        """Host arrays, stacked per group, on the device: through one pinned buffer and one copy on CUDA."""
        torch = self._torch
        if not host:
            return {}
        if self._pinned is None:
            return {k: torch.from_numpy(np.stack(arrays)).to(self.device) for k, arrays in host.items()}
        layout, total = [], 0
        for key, arrays in host.items():
            nbytes = sum(a.nbytes for a in arrays)
            layout.append((key, total, nbytes))
            total += -(-nbytes // _ALIGN) * _ALIGN
        buffer = self._pinned.take(total)
        raw = buffer.numpy()
        for key, start, _ in layout:
            offset = start
            for a in host[key]:
                raw[offset:offset + a.nbytes] = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
                offset += a.nbytes
        device = buffer[:total].to(self.device, non_blocking=True)
        self._pinned.copied(self._streams.record())
        out = {}
        for key, start, nbytes in layout:
            first = host[key][0]
            dtype = torch.int16 if first.dtype == np.int16 else torch.float32
            out[key] = device[start:start + nbytes].view(dtype).reshape(len(host[key]), *first.shape)
        return out


def _group_key(p) -> tuple:
    """Clips prepared in one go on the device: same kind, rate, shape and sample type."""
    if p.native is None:
        return ("host", p.windows.shape)
    signal = p.native.signal
    kind = "array" if isinstance(signal, np.ndarray) else f"tensor on {signal.device}"
    return (kind, p.native.rate, tuple(signal.shape), str(signal.dtype), p.count, p.native.offset)


# ------------------------------------------------------------------------------------------------ graphs

class GraphedAudio:
    """The audio graph as CUDA graphs at fixed batch sizes, replayed on the current stream.

    A batch smaller than a captured size is padded with zeros and its rows cut out again (scores do not
    depend on batch mates). Outputs are the graph's own buffers: the caller copies what it keeps before
    the next call. A capture that fails is logged once and the graph runs eagerly from then on.

    Args:
        torch: the torch module.
        run: the eager audio graph (autocast included): (B, N) tensor -> output tensors.
        capture: ``capture(run, static_in) -> (replay, static_out)`` (default :func:`cuda_capture`).
    """

    def __init__(self, torch, run: Callable, capture: Callable | None = None):
        self._torch, self._run = torch, run
        self._capture_fn = capture or (lambda fn, static_in: cuda_capture(torch, fn, static_in))
        self._graphs: dict[int, tuple] = {}
        self.failed: str | None = None

    @property
    def sizes(self) -> list[int]:
        return sorted(self._graphs)

    def __call__(self, wave):
        rows = int(wave.shape[0])
        size = min((s for s in self._graphs if s >= rows), default=None)
        if size is None:
            if self.failed or len(self._graphs) >= MAX_CUDA_GRAPHS or not self._capture(wave):
                return self._run(wave)
            size = rows
        replay, static_in, static_out = self._graphs[size]
        static_in[:rows].copy_(wave)
        if rows < size:
            static_in[rows:].zero_()
        replay()
        return tuple(o[:rows] for o in static_out)

    def _capture(self, wave) -> bool:
        static_in = wave.clone()
        try:
            replay, static_out = self._capture_fn(self._run, static_in)
        except RuntimeError as exc:
            self.failed = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("CUDA graph capture failed, the audio graph runs eagerly: %s", self.failed)
            return False
        self._graphs[int(wave.shape[0])] = (replay, static_in, tuple(static_out))
        log.info("audio graph captured as a CUDA graph at batch %d", wave.shape[0])
        return True


def cuda_capture(torch, run: Callable, static_in):
    """Capture ``run(static_in)`` as a CUDA graph: (its replay, its output buffers).

    Two warm-up calls on a side stream first (lazy initialisation, cached tables and workspaces must happen
    outside the graph); ``thread_local`` capture lets the Scorer's other thread keep working meanwhile.
    """
    side = torch.cuda.Stream(static_in.device)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            run(static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        static_out = run(static_in)
    return graph.replay, static_out


def _switch(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() not in ("0", "false", "no", "off", "")


def cuda_graphs_enabled() -> bool:
    """``DERAMOS_CUDA_GRAPHS`` (default on): 0 / false / no / off runs the audio graph eagerly."""
    return _switch("DERAMOS_CUDA_GRAPHS", "1")


def compile_enabled() -> bool:
    """``DERAMOS_TORCH_COMPILE`` (default off): 1 compiles the torch backend's audio graph on CUDA with
    ``torch.compile`` (its first batch then takes tens of seconds to minutes for MuQ-large)."""
    return _switch("DERAMOS_TORCH_COMPILE", "0")


class TorchDevicePath:
    """The data path the torch and AOTInductor backends share (module docstring).

    Args:
        torch: the torch module.
        device: the backend's ``torch.device``.
        audio: the audio graph on device tensors: (B, N) -> (mi, audio_x) tensors.
        graphs: capture ``audio`` as CUDA graphs (on CUDA, unless ``DERAMOS_CUDA_GRAPHS=0``).
    """

    def __init__(self, torch, device, audio: Callable, graphs: bool):
        self._torch, self.device = torch, device
        self.streams = Streams(torch, device)
        self._audio = GraphedAudio(torch, audio) if graphs and self.streams.cuda and cuda_graphs_enabled() else audio

    @property
    def on_gpu(self) -> bool:
        """True on CUDA: the backend then offers the stage and overlapped batches."""
        return self.streams.cuda

    def stage(self, protocol) -> TorchStage:
        """The input stage on this device (also on torch's CPU device, where tests check it)."""
        return TorchStage(self._torch, self.device, protocol, self.streams)

    def run_audio(self, staged: Staged) -> tuple[np.ndarray, Any]:
        """The audio graph on a staged batch, on its own stream: MI to the host, ``audio_x`` kept here."""
        with self.streams.on(self.streams.audio):
            self.streams.wait(staged.event, staged.tensor)
            mi, audio_x = self._audio(staged.tensor)
            if isinstance(self._audio, GraphedAudio):
                audio_x = audio_x.clone()  # the graph's buffer is overwritten by the next replay
            mi = mi.float().cpu().numpy()  # waits for this stream only
        return mi, audio_x

    def adopt(self, tensor) -> None:
        """``tensor`` came from the audio stream and is used on the current one: keep its memory until then."""
        if self.streams.cuda and isinstance(tensor, self._torch.Tensor) and tensor.is_cuda:
            tensor.record_stream(self._torch.cuda.current_stream())


def to_host(tensor) -> np.ndarray:
    """A tensor as float32 numpy on the host."""
    return tensor.float().cpu().numpy()


# ------------------------------------------------------------------------------------------------ backend

class TorchBackend:
    """Eager torch on a run directory.

    Args:
        source: a :class:`deramos_rt.source.RunSource` (a training run directory).
        device: ``cpu``, ``cuda`` or ``cuda:N``; None picks CUDA when torch sees a GPU.
        precision: ``fp32`` (default), or ``fp16`` / ``bf16`` on CUDA.
        threads: torch's CPU threads during each job (None: the job's plan, else torch's setting).
    """

    def __init__(self, source, device: str | None = None, precision: str | None = None,
                 threads: int | None = None):
        import torch
        from training.split import split_model

        self._torch = torch
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        precision = precision or "fp32"
        if precision not in PRECISIONS:
            raise DeramosError(f"torch backend precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
        if precision != "fp32" and not device.startswith("cuda"):
            raise DeramosError(f"torch backend precision {precision} needs a CUDA device, got {device!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise DeramosError(f"device {device!r} requested but this torch ({torch.__version__}) sees no CUDA GPU")
        model, _ = source.model()
        model.to(device)
        self.audio_part, self.text_part, self.ta_part = split_model(model)
        self._device = torch.device(device)
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self._threads = TorchThreads(torch, threads)
        self.max_batch = None  # eager torch takes any batch
        # The device path's audio graph; the numpy path (parity, benchmarks) always runs it eagerly.
        compiled = self._device.type == "cuda" and compile_enabled()
        self._audio_module = torch.compile(self.audio_part, dynamic=False) if compiled else self.audio_part
        self.device_path = TorchDevicePath(torch, self._device, self._audio_tensors, graphs=True)
        self.overlaps_batches = self.device_path.on_gpu
        self.info = BackendInfo("torch", precision, str(self._device),
                                f"torch {torch.__version__}, {'compiled' if compiled else 'eager'}, run {source.root}")

    def input_stage(self, protocol):
        """On CUDA, batches are prepared on the GPU (:class:`TorchStage`); on the CPU by the decode workers,
        which resample in parallel there."""
        return self.device_path.stage(protocol) if self.device_path.on_gpu else None

    def job_threads(self, threads: int | None):
        """torch's CPU threads during a job (see :class:`TorchThreads`)."""
        return self._threads.job(threads)

    @contextlib.contextmanager
    def _context(self):
        torch = self._torch
        with torch.inference_mode(), torch.autocast(self._device.type, dtype=self._dtype,
                                                    enabled=self._dtype is not None):
            yield

    def _audio_tensors(self, wave):
        with self._context():
            return self._audio_module(wave)

    def _run(self, module, *values):
        torch = self._torch
        tensors = [to_device(torch, v, self._device) for v in values]
        with self._context():
            out = module(*tensors)
        return out if isinstance(out, tuple) else (out,)

    def run_audio(self, waveform) -> tuple[np.ndarray, Any]:
        if isinstance(waveform, Staged):
            return self.device_path.run_audio(waveform)
        mi, audio_x = self._run(self.audio_part, np.asarray(waveform, dtype=np.float32))
        return to_host(mi), to_host(audio_x)

    def run_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return to_host(self._run(self.text_part, input_ids.astype(np.int64), attention_mask.astype(np.int64))[0])

    def run_ta(self, audio_x, text_x: np.ndarray, text_mask: np.ndarray) -> np.ndarray:
        if isinstance(audio_x, self._torch.Tensor):
            self.device_path.adopt(audio_x)
        else:
            audio_x = np.asarray(audio_x, dtype=np.float32)
        return to_host(self._run(self.ta_part, audio_x, np.asarray(text_x, dtype=np.float32), text_mask.astype(np.int64))[0])

    def close(self) -> None:
        self.audio_part = self.text_part = self.ta_part = self._audio_module = None
        self._threads.restore()
