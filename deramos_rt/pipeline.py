"""Clip requests and the decode side of scoring: parallel decode workers behind a bounded prefetch queue.

Decoding (libsndfile through cffi) and resampling (soxr, numpy) release the GIL, so threads decode in
parallel and overlap inference on the main thread. The queue is bounded, so memory stays flat however
many clips a job has, and results come back in input order.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from deramos_rt.audio import LONG_AUDIO, AudioProtocol, fit_length, load_clip, load_windows, protocol_signal, split_windows
from deramos_rt.errors import DeramosError
from deramos_rt.metrics import system_id


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
        array, sample_rate: an in-memory signal (mono (n,) or (frames, channels)).
    """

    id: str
    path: str | None
    system: str
    prompt: str
    array: np.ndarray | None = None
    sample_rate: int | None = None


def default_system(clip_id: str) -> str:
    """The ``S###`` part of an id, or ``""``."""
    try:
        return system_id(clip_id)
    except DeramosError:
        return ""


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
    return ClipRequest(str(clip_id), None if path is None else str(path), system, prompt,
                       None if array is None else np.asarray(array),
                       None if fields.get("sample_rate") is None else int(fields["sample_rate"]))


@dataclass
class Prepared:
    """A decoded clip: its windows (W, N) and each window's share of real audio, or the decode error."""

    request: ClipRequest
    windows: np.ndarray | None = None
    weights: np.ndarray | None = None
    error: str | None = None


def prepare_request(request: ClipRequest, protocol: AudioProtocol, long_audio: str) -> Prepared:
    """Decode and prepare one clip with the model's audio protocol; a failure becomes ``error``."""
    try:
        if request.array is not None:
            signal = protocol_signal(request.array, request.sample_rate, protocol)
            if long_audio == "windows":
                windows, weights = split_windows(signal, protocol.num_samples)
            else:
                windows, weights = fit_length(signal, protocol.num_samples)[None], np.ones(1)
        elif long_audio == "windows":
            windows, weights = load_windows(request.path, protocol)
        else:
            windows, weights = load_clip(request.path, protocol)[None], np.ones(1)
    except DeramosError as exc:
        return Prepared(request, error=str(exc))
    except MemoryError:
        return Prepared(request, error=f"out of memory decoding {request.path}")
    except Exception as exc:  # a decoder or resampler failing in a way we did not foresee costs one clip, not the job
        return Prepared(request, error=f"cannot prepare {request.path or request.id}: {type(exc).__name__}: {exc}")
    return Prepared(request, windows, weights)


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def prepared_stream(requests: Iterable[ClipRequest], protocol: AudioProtocol, long_audio: str = "truncate",
                    workers: int | None = None, prefetch: int = 64) -> Iterator[Prepared]:
    """Prepare clips in ``workers`` threads, at most ``prefetch`` ahead of the consumer, in input order.

    Args:
        requests: clips to prepare (consumed lazily).
        protocol: the model's audio protocol.
        long_audio: ``truncate`` or ``windows``.
        workers: decode threads; 0 decodes on the calling thread; None picks up to 4.
        prefetch: clips decoded ahead of the consumer (bounds memory).
    """
    if long_audio not in LONG_AUDIO:
        raise DeramosError(f"unknown long-audio mode {long_audio!r}; choose one of: {', '.join(LONG_AUDIO)}")
    workers = default_workers() if workers is None else int(workers)
    if workers <= 0:
        for request in requests:
            yield prepare_request(request, protocol, long_audio)
        return
    queue: collections.deque = collections.deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deramos-decode") as pool:
        try:
            for request in requests:
                queue.append(pool.submit(prepare_request, request, protocol, long_audio))
                while len(queue) >= max(prefetch, workers):
                    yield queue.popleft().result()
            while queue:
                yield queue.popleft().result()
        finally:
            # Stopped early (Ctrl-C, an error downstream): do not decode what nobody will read.
            for future in queue:
                future.cancel()
