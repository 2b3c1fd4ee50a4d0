"""Clip requests and the decode side of scoring: parallel decode workers behind a bounded prefetch queue,
and how one job splits the cores between decoding and inference.

Decoding (libsndfile through cffi) and resampling (soxr, numpy) release the GIL, so threads decode in
parallel and overlap inference. numpy's OpenBLAS, however, runs every matrix product on all cores with its
own threads, and products from several decode threads queue behind each other: the torchaudio-protocol
resampler (matrix products) then ran at one core's worth however many threads decoded. While decode workers
run, numpy's BLAS is therefore limited to one thread (``threadpoolctl``, ``user_api="blas"``: torch's OpenMP
pool and ONNX Runtime's threads are not touched). OpenBLAS's thread count is one setting per process, so
the limit is taken when the workers start and restored when they stop. :func:`plan_threads` gives the
backend the cores the decode workers leave.

Where the inference device resamples (a backend's input stage, see ``deramos_rt.backends.base``), the
workers only decode: ``native=True`` hands over the clip at its own rate (int16 for 16-bit files), and the
device turns it into model input. The queue is bounded, so memory stays flat however many clips a job has,
and results come back in input order. In ``windows`` mode a file is decoded as a stream of pieces of a few
windows (``deramos_rt.audio.stream_windows``) and the queue is bounded in samples (:class:`InFlight`), so
memory also stays flat however long the files are.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from deramos_rt.audio import (LONG_AUDIO, MAX_CHANNELS, AudioProtocol, WindowPiece, as_float, check_signal,
                              decode_frames, fit_length, load_clip, load_windows, protocol_signal, read_native,
                              resampled_length, resamples_anywhere, split_windows, stream_windows, window_weights)
from deramos_rt.errors import DeramosError
from deramos_rt.metrics import system_id

log = logging.getLogger(__name__)

# Decode threads on a GPU host: all cores but one (the scoring loop), at most this many.
MAX_GPU_DECODE_WORKERS = 32
# Samples a native-rate hand-over may hold ahead per model-rate sample of the prefetch (44.1 / 48 kHz
# stereo for a 16-24 kHz model is 4-6 per sample), so that clips in truncate mode are rarely held back.
NATIVE_ROOM = 4


# The error of a clip scored without a prompt: its MI is given, its TA is not (a job can ask for MI only).
EMPTY_PROMPT = "empty prompt: TA not scored (MI given)"

@dataclass(frozen=True)
class ClipRequest:
    """One clip to score: a file (``path``) or an in-memory signal (``array`` at ``sample_rate``).

    Attributes:
        id: the clip's id in every output (default: the path's stem).
        path: the audio file, or None for arrays.
        system: the system the clip belongs to (default: the id's ``S###`` part, else empty).
        prompt: the text prompt.
        array, sample_rate: an in-memory signal (mono (n,) or (frames, channels)): a numpy array, or a
            torch tensor, which stays on its device where the backend resamples there.
    """

    id: str
    path: str | None
    system: str
    prompt: str
    array: Any = None
    sample_rate: int | None = None


def default_system(clip_id: str) -> str:
    """The ``S###`` part of an id, or ``""``."""
    try:
        return system_id(clip_id)
    except DeramosError:
        return ""


def is_tensor(value) -> bool:
    """A torch tensor, recognised without importing torch."""
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "device")


def host_array(value) -> np.ndarray:
    """A numpy array of ``value`` (a torch tensor is copied to the host when it is on a device)."""
    if is_tensor(value):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def make_request(item, index: int) -> ClipRequest:
    """A :class:`ClipRequest` from ``(path, prompt)``, ``(array, sample_rate, prompt)`` or a dict with
    ``path`` (or ``array`` + ``sample_rate``), ``prompt`` and optional ``id`` / ``system``.

    Raises:
        DeramosError: the item has none of these shapes (naming its index).
    """
    if isinstance(item, ClipRequest):
        return item
    if isinstance(item, dict):
        fields = dict(item)
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        fields = {"path": item[0], "prompt": item[1]}
    elif isinstance(item, (tuple, list)) and len(item) == 3:
        fields = {"array": item[0], "sample_rate": item[1], "prompt": item[2]}
    elif isinstance(item, (str, os.PathLike)):
        raise DeramosError(f"item #{index} is a bare path ({str(item)[:80]!r}): give (path, prompt) items, or "
                           "score one clip with Scorer.score_clip(path, prompt)")
    else:
        raise DeramosError(f"item #{index} must be (path, prompt), (array, sample_rate, prompt) or a dict with "
                           f"path and prompt, got {type(item).__name__}")
    prompt = fields.get("prompt")
    prompt = "" if prompt is None else prompt
    if not isinstance(prompt, str):
        raise DeramosError(f"item #{index}: the prompt must be a string, got {type(prompt).__name__}")
    path = fields.get("path")
    array = fields.get("array")
    if path is None and array is None:
        raise DeramosError(f"item #{index} has neither a path nor an array")
    if array is not None and fields.get("sample_rate") is None:
        raise DeramosError(f"item #{index} gives an array without its sample_rate")
    clip_id = fields.get("id")
    if clip_id in (None, ""):
        clip_id = Path(str(path)).stem if path is not None else f"item{index:06d}"
    system = fields.get("system")
    system = default_system(str(clip_id)) if system in (None, "") else str(system)
    if array is not None and not is_tensor(array):
        array = np.asarray(array)
    return ClipRequest(str(clip_id), None if path is None else str(path), system, prompt, array,
                       None if fields.get("sample_rate") is None else int(fields["sample_rate"]))


def batch_items(batch, sample_rate: int, prompts) -> list[dict]:
    """Score items from one (B, N) batch of mono signals at one rate (numpy or a torch tensor).

    Args:
        batch: (B, N) samples; rows stay views of it (a device tensor stays on its device).
        sample_rate: the rate of every row.
        prompts: one prompt per row, or one string for all.

    Raises:
        DeramosError: the batch is not 2-D, the rate is missing, or the prompts do not match the rows.
    """
    shape = tuple(batch.shape) if hasattr(batch, "shape") else ()
    if len(shape) != 2:
        raise DeramosError(f"a batch of signals must be (batch, samples), got shape {shape or type(batch).__name__}")
    if sample_rate is None:
        raise DeramosError("a (batch, samples) signal batch needs its sample_rate")
    prompts = [prompts] * shape[0] if isinstance(prompts, str) or prompts is None else list(prompts)
    if len(prompts) != shape[0]:
        raise DeramosError(f"the batch has {shape[0]} signals but {len(prompts)} prompts")
    return [{"array": batch[i], "sample_rate": sample_rate, "prompt": prompts[i]} for i in range(shape[0])]


@dataclass(frozen=True)
class NativeAudio:
    """A clip at its own rate, for an input stage that resamples on the inference device.

    Attributes:
        signal: (frames, channels) int16 or float32 numpy, or a torch tensor (frames,) / (frames, channels).
        rate: its sample rate.
        length: samples at the model's rate once resampled (before padding or cutting to windows).
        offset: resampled samples before the first window (a streamed piece of a long file starts early
            enough for the resampler's kernel: see :func:`deramos_rt.audio.stream_windows`).
    """

    signal: Any
    rate: int
    length: int
    offset: int = 0


@dataclass
class Prepared:
    """A decoded clip: its windows (W, N) and each window's share of real audio, or the decode error.

    ``native`` replaces ``windows`` when the backend's input stage resamples on its device. A long file in
    ``windows`` mode comes as several pieces, in order (:func:`prepare_pieces`): ``first`` is the clip's
    index of the piece's first window (0: a clip's first piece), ``last`` says no piece of the clip follows;
    an ``error`` piece is always the clip's last and makes the whole clip fail.
    """

    request: ClipRequest
    windows: np.ndarray | None = None
    weights: np.ndarray | None = None
    error: str | None = None
    native: NativeAudio | None = None
    first: int = 0
    last: bool = True

    @property
    def count(self) -> int:
        """Windows to score (0 for a clip that failed)."""
        return 0 if self.error is not None or self.weights is None else len(self.weights)


def prepare_request(request: ClipRequest, protocol: AudioProtocol, long_audio: str,
                    native: bool = False) -> Prepared:
    """Decode and prepare one whole clip with the model's audio protocol; a failure becomes ``error``.

    Args:
        request: the clip.
        protocol: the model's audio protocol.
        long_audio: ``truncate`` or ``windows``.
        native: hand over the clip at its own rate where the protocol allows resampling elsewhere
            (:func:`deramos_rt.audio.resamples_anywhere`); soxr resampling stays here.
    """
    try:
        if native:
            return _prepare_native(request, protocol, long_audio)
        if request.array is not None:
            return _host_windows(request, host_array(request.array), request.sample_rate, protocol, long_audio)
        if long_audio == "windows":
            windows, weights = load_windows(request.path, protocol)
        else:
            windows, weights = load_clip(request.path, protocol)[None], np.ones(1)
    except Exception as exc:
        return Prepared(request, error=_error_text(request, exc))
    return Prepared(request, windows, weights)


def prepare_pieces(request: ClipRequest, protocol: AudioProtocol, long_audio: str, native: bool = False,
                   piece_windows: int | None = None) -> Iterator[Prepared]:
    """A clip prepared as :func:`prepare_request` does, a file in ``windows`` mode a piece at a time.

    The pieces (see :class:`Prepared`) hold a few windows each (:func:`deramos_rt.audio.stream_windows`),
    so a long file is never held whole; a failure midway ends the clip with an error piece.

    Args:
        piece_windows: windows per piece (None: :func:`deramos_rt.audio.default_piece_windows`).
    """
    if long_audio != "windows" or request.array is not None:
        yield prepare_request(request, protocol, long_audio, native)
        return
    first = 0
    try:
        for piece in stream_windows(request.path, protocol, native, piece_windows):
            yield _prepared_piece(request, piece)
            first = piece.first + piece.count
    except Exception as exc:  # what the whole-file path would have made the clip's error
        yield Prepared(request, error=_error_text(request, exc), first=first)


def _prepared_piece(request: ClipRequest, piece: WindowPiece) -> Prepared:
    native = None
    if piece.signal is not None:
        native = NativeAudio(piece.signal, piece.rate, piece.length, piece.offset)
    return Prepared(request, piece.windows, piece.weights, native=native, first=piece.first, last=piece.last)


def _error_text(request: ClipRequest, exc: Exception) -> str:
    """A clip's error line for a failure while preparing it (the job goes on)."""
    if isinstance(exc, DeramosError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return f"out of memory decoding {request.path}"
    # A decoder or resampler failing in a way we did not foresee costs one clip, not the job.
    return f"cannot prepare {request.path or request.id}: {type(exc).__name__}: {exc}"


def _host_windows(request: ClipRequest, signal: np.ndarray, rate: int, protocol: AudioProtocol,
                  long_audio: str) -> Prepared:
    """Resample here (numpy or soxr) and cut to the clip length or to windows."""
    try:
        signal = protocol_signal(signal, rate, protocol)
    except DeramosError as exc:
        raise DeramosError(f"{request.path}: {exc}" if request.path else str(exc)) from exc
    if long_audio == "windows":
        windows, weights = split_windows(signal, protocol.num_samples)
    else:
        windows, weights = fit_length(signal, protocol.num_samples)[None], np.ones(1)
    return Prepared(request, windows, weights)


def _prepare_native(request: ClipRequest, protocol: AudioProtocol, long_audio: str) -> Prepared:
    truncate = long_audio == "truncate"
    if request.array is None:
        signal, rate = read_native(request.path, protocol.clip_seconds if truncate else None)
    elif is_tensor(request.array):
        signal, rate = _checked_tensor(request.array), request.sample_rate
    else:
        signal, rate = np.asarray(request.array, dtype=np.float32), request.sample_rate
        check_signal(signal)
    if not resamples_anywhere(rate, protocol):  # soxr at another rate: on the CPU, here
        host = host_array(signal)
        return _host_windows(request, as_float(host) if host.dtype == np.int16 else host, rate, protocol, long_audio)
    if truncate:
        # The part a file is decoded to (clip + margin): the first clip's samples see the same neighbours.
        signal = signal[: decode_frames(protocol.clip_seconds, rate)]
    if not is_tensor(signal):
        signal = np.ascontiguousarray(signal.reshape(signal.shape[0], -1))
    length = resampled_length(signal.shape[0], rate, protocol.sample_rate)
    weights = np.ones(1) if truncate else window_weights(length, protocol.num_samples)
    return Prepared(request, weights=weights, native=NativeAudio(signal, int(rate), length))


def _checked_tensor(tensor):
    """A torch signal checked like an array (one device sync for the finiteness check)."""
    shape = tuple(tensor.shape)
    if len(shape) not in (1, 2):
        raise DeramosError(f"audio tensor must be 1-D or (frames, channels), got shape {shape}")
    if shape[0] == 0:
        raise DeramosError("audio has no samples")
    if len(shape) == 2 and shape[1] > MAX_CHANNELS:
        raise DeramosError(f"audio has {shape[1]} channels (at most {MAX_CHANNELS} are read)")
    import torch

    tensor = tensor.detach().to(torch.float32)  # as arrays are read: values kept, never rescaled
    if not bool(torch.isfinite(tensor).all()):
        raise DeramosError("audio contains NaN or infinite samples")
    return tensor


# ------------------------------------------------------------------------------------------------ threads

@dataclass(frozen=True)
class ThreadPlan:
    """How one job splits the cores: decode worker threads and the backend's own threads."""

    decode_workers: int
    backend_threads: int
    cores: int


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def plan_threads(decode_workers: int | None, backend_threads: int | None, on_gpu: bool,
                 cores: int | None = None) -> ThreadPlan:
    """Decode workers and backend threads that do not oversubscribe the cores.

    On a GPU the model waits for decoding, so every core but one decodes; on the CPU inference is most of
    the work and a quarter of the cores decode (at least one). The backend gets the cores left
    (``cores - decode workers``, at least 1). Explicit values are kept.
    """
    cores = cores or available_cores()
    if decode_workers is None:
        decode_workers = min(MAX_GPU_DECODE_WORKERS, cores - 1) if on_gpu else cores // 4
        decode_workers = max(1, decode_workers)
    if not backend_threads:
        backend_threads = max(1, cores - decode_workers)
    return ThreadPlan(int(decode_workers), int(backend_threads), cores)


def default_workers() -> int:
    """Decode workers when nothing is said: the CPU plan's (see :func:`plan_threads`)."""
    return plan_threads(None, None, on_gpu=False).decode_workers


@contextlib.contextmanager
def single_threaded_blas():
    """numpy's BLAS on one thread while the block runs (process-wide), then back to what it was.

    Only BLAS libraries are selected, so only they are set back: threadpoolctl's plain
    ``threadpool_limits`` would also reset OpenMP (torch's pool) to the value it had when the block began.
    Without threadpoolctl (a broken install) the block runs unlimited, with one warning.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        _warn_once("threadpoolctl is missing: decode workers share numpy's BLAS threads (slower, same scores); "
                   "pip install threadpoolctl")
        yield
        return
    with ThreadpoolController().select(user_api="blas").limit(limits=1):
        yield


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


# ------------------------------------------------------------------------------------------------ stream

def prepared_stream(requests: Iterable[ClipRequest], protocol: AudioProtocol, long_audio: str = "truncate",
                    workers: int | None = None, prefetch: int = 64, native: bool = False,
                    max_samples: int | None = None, piece_windows: int | None = None) -> Iterator[Prepared]:
    """Prepare clips in ``workers`` threads, ahead of the consumer within bounds, in input order.

    A file in ``windows`` mode comes as pieces of a few windows (:func:`prepare_pieces`), so what is in
    flight is bounded by samples, however long the files: at most ``prefetch`` clips are being prepared,
    and the pieces decoded and not yet taken hold at most ``max_samples`` samples (the clip the consumer
    reads may always add one piece, so that it never waits on clips behind it), plus one piece per worker.

    Args:
        requests: clips to prepare (consumed lazily).
        protocol: the model's audio protocol.
        long_audio: ``truncate`` or ``windows``.
        workers: decode threads; 0 decodes on the calling thread; None: :func:`default_workers`.
        prefetch: clips prepared ahead of the consumer.
        native: hand over native-rate audio where the protocol allows (see :func:`prepare_request`).
        max_samples: samples (all channels) held ahead; None: ``prefetch`` windows' worth at the model's
            rate, :data:`NATIVE_ROOM` times that for native-rate audio.
        piece_windows: windows per piece of a long file (None: ``deramos_rt.audio.default_piece_windows``).
    """
    if long_audio not in LONG_AUDIO:
        raise DeramosError(f"unknown long-audio mode {long_audio!r}; choose one of: {', '.join(LONG_AUDIO)}")
    workers = default_workers() if workers is None else int(workers)
    if workers <= 0:
        for request in requests:
            yield from prepare_pieces(request, protocol, long_audio, native, piece_windows)
        return
    if max_samples is None:
        max_samples = prefetch * protocol.num_samples * (NATIVE_ROOM if native else 1)
    flight = InFlight(max_samples)
    active: collections.deque = collections.deque()  # (clip, request, future) in input order
    with single_threaded_blas(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deramos-decode") as pool:
        try:
            for request in requests:
                clip = flight.open()
                active.append((clip, request, pool.submit(_produce, flight, clip, request, protocol, long_audio,
                                                          native, piece_windows)))
                while len(active) >= max(prefetch, workers):
                    yield from _drain(flight, *active.popleft())
            while active:
                yield from _drain(flight, *active.popleft())
        finally:
            # Stopped early (Ctrl-C, an error downstream): wake the workers and decode nothing more.
            flight.close()
            for _, _, future in active:
                future.cancel()


def _produce(flight: "InFlight", clip: int, request: ClipRequest, protocol: AudioProtocol, long_audio: str,
             native: bool, piece_windows: int | None) -> None:
    """A worker's job: one clip's pieces into ``flight`` (it waits while the stream holds too much)."""
    pieces = prepare_pieces(request, protocol, long_audio, native, piece_windows)
    try:
        for piece in pieces:
            if not flight.put(clip, piece):
                break  # the consumer stopped
    finally:
        pieces.close()  # closes the file now
        flight.finished(clip)


def _drain(flight: "InFlight", clip: int, request: ClipRequest, future) -> Iterator[Prepared]:
    """The pieces of one clip as its worker gives them, up to its last."""
    while True:
        piece = flight.take(clip)
        if piece is None:  # the worker died before the clip's last piece (a bug: clip errors are pieces)
            future.result()  # its own exception, where it had one
            raise RuntimeError(f"the decode worker of {request.path or request.id} stopped before its end")
        yield piece
        if piece.last:
            return


def _held_samples(piece: Prepared) -> int:
    """Samples (all channels) a piece holds: its windows, or its native-rate signal."""
    if piece.windows is not None:
        return int(piece.windows.size)
    if piece.native is not None:
        return int(np.prod(piece.native.signal.shape))
    return 0


class InFlight:
    """Pieces prepared ahead of the consumer, per clip in input order, bounded in samples.

    Workers :meth:`put` the pieces of their clip; the consumer :meth:`take` s the pieces of the clip it reads
    (the *head*), clip after clip. A put waits while the pieces held would exceed ``limit`` samples, except
    the head's when none of its pieces is waiting (the consumer waits for exactly that one), so the stream
    always moves and holds at most ``limit`` samples plus one piece.

    Attributes:
        held: samples in pieces put and not yet taken.
        peak: the most ``held`` has been.
    """

    def __init__(self, limit: int):
        self.limit = max(1, int(limit))
        self.held = 0
        self.peak = 0
        self._cond = threading.Condition()
        self._pieces: dict[int, collections.deque] = {}
        self._finished: set[int] = set()
        self._head = 0
        self._next = 0
        self._closed = False

    def open(self) -> int:
        """A number for the next clip (clips are taken in this order)."""
        self._next += 1
        return self._next - 1

    def put(self, clip: int, piece: Prepared) -> bool:
        """Add one of ``clip``'s pieces, waiting for room; False when the stream was closed."""
        size = _held_samples(piece)
        with self._cond:
            queue = self._pieces.setdefault(clip, collections.deque())
            while not self._closed and self.held + size > self.limit and not (clip == self._head and not queue):
                self._cond.wait()
            if self._closed:
                return False
            queue.append(piece)
            self.held += size
            self.peak = max(self.peak, self.held)
            self._cond.notify_all()
        return True

    def finished(self, clip: int) -> None:
        """``clip``'s worker has stopped (after its last piece, or without it)."""
        with self._cond:
            if clip >= self._head:  # a clip already taken to its last piece needs no mark
                self._finished.add(clip)
            self._cond.notify_all()

    def take(self, clip: int) -> Prepared | None:
        """``clip``'s next piece (waiting for it); None when its worker stopped without giving it."""
        with self._cond:
            self._head = clip
            queue = self._pieces.setdefault(clip, collections.deque())
            while not queue and clip not in self._finished:
                self._cond.wait()
            piece = queue.popleft() if queue else None
            if piece is not None:
                self.held -= _held_samples(piece)
            if piece is None or piece.last:
                self._pieces.pop(clip, None)
                self._finished.discard(clip)
                self._head = clip + 1
            self._cond.notify_all()
            return piece

    def close(self) -> None:
        """Wake every waiting worker: their puts return False from now on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
