"""The one backend interface. Every backend runs the same three graphs of a bundle (or of a run directory,
for the torch backend); the Scorer never branches on the backend type.

Graph contract (``training/split.py`` defines the parts, ``deramos_rt/bundle.py`` the files):

* ``run_audio(waveform) -> (mi, audio_x)``: ``waveform`` is (B, N) float32 numpy, or what the backend's own
  input stage made of a batch (below). ``mi`` is (B, K) probabilities for distribution heads or (B,)
  scores for scalar heads, numpy on the host. ``audio_x`` (B, T, d) is numpy when the waveform was numpy;
  for a staged batch it may stay on the backend's device (a tensor, an OrtValue): the Scorer only hands it
  back to ``run_ta``, all rows at once.
* ``run_text(input_ids (B, L) int64, attention_mask (B, L) int64) -> text_x (B, L, d) float32`` numpy.
* ``run_ta(audio_x as run_audio returned it, text_x (B, L, d), text_mask (B, L) int64) -> ta`` like ``mi``.

All arrays cross the interface as numpy on the host. A backend that keeps tensors on a device may cache
them internally, but its outputs are numpy. ``max_batch`` is the most rows one call may take (a compiled
engine's optimisation profile), None when any batch runs; a backend with a limit splits larger calls
itself, and the Scorer keeps its batches within it.

Optional capabilities, asked for through the functions at the end of this module (a backend that has
none of them gets the host defaults):

* ``input_stage(protocol) -> InputStage | None``: how a batch's audio reaches the backend. The default,
  :class:`HostStage`, stacks windows the decode workers resampled; a device stage takes native-rate audio
  (and tensors already on its device) and resamples where the model runs.
* ``job_threads(threads) -> context manager``: the backend's CPU threads while one job runs, the previous
  setting restored after it (settings such as torch's thread count are process-wide).
* ``overlaps_batches`` (bool attribute): the backend runs on a device, so the Scorer runs the audio graph of
  the next batch in a thread while it finishes the current one (TA graph, bookkeeping). On the CPU that
  would only make inference fight itself for the same cores.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np


@dataclass(frozen=True)
class BackendInfo:
    """What actually runs, for logs and for the provenance columns of every score file.

    Attributes:
        name: backend name (``onnxruntime``, ``tensorrt``, ``torch``, ``aoti``).
        precision: ``fp32``, ``int8``, ``fp16`` or ``bf16``.
        device: e.g. ``cpu``, ``cuda:0``.
        detail: providers, versions, reasons (free text, one line).
    """

    name: str
    precision: str
    device: str
    detail: str = ""


class Backend(Protocol):
    """The interface every backend implements."""

    info: BackendInfo
    max_batch: int | None

    def run_audio(self, waveform: np.ndarray) -> tuple[np.ndarray, Any]: ...

    def run_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...

    def run_ta(self, audio_x: Any, text_x: np.ndarray, text_mask: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def in_chunks(run: Callable[[dict[str, np.ndarray]], list[np.ndarray]], feed: dict[str, np.ndarray],
              max_batch: int | None) -> list[np.ndarray]:
    """``run(feed)`` on slices of at most ``max_batch`` rows (axis 0 of every input), outputs joined.

    Every graph's inputs and outputs are batch-first and rows are independent, so slicing gives the
    same rows as one call would.
    """
    rows = len(next(iter(feed.values())))
    if not max_batch or rows <= max_batch:
        return list(run(feed))
    parts = [run({name: array[i:i + max_batch] for name, array in feed.items()}) for i in range(0, rows, max_batch)]
    return [np.concatenate(outputs) for outputs in zip(*parts)]


class InputStage(Protocol):
    """Turns a batch's rows into what the backend's ``run_audio`` takes.

    Attributes:
        native: decode workers hand over clips at their own rate (``Prepared.native``) where the audio
            protocol allows it; the stage resamples them.
        description: one line for the log (where the batch is prepared).
    """

    native: bool
    description: str

    def stage(self, rows: list[tuple[Any, int]]) -> Any:
        """``rows``: (:class:`deramos_rt.pipeline.Prepared`, window index) per batch row, in order."""


class HostStage:
    """The default stage: decode workers resample on the CPU; a batch is their windows stacked."""

    native = False
    description = "host: decode workers resample on the CPU, batches cross to the backend as numpy"

    def stage(self, rows: list[tuple[Any, int]]) -> np.ndarray:
        return np.stack([prepared.windows[window] for prepared, window in rows])


def handover(protocol, resampler: str) -> str:
    """What the decode workers hand a device stage, and who resamples (for the Scorer's log line)."""
    if protocol.resampler == "torchaudio":
        return f"decode workers hand over native-rate audio, resampled by {resampler}"
    return ("decode workers resample with soxr (CPU code); clips already at the model's rate are handed over "
            "as decoded")


def input_stage(backend, protocol) -> InputStage:
    """The backend's input stage for ``protocol``, or :class:`HostStage` when it has none."""
    make = getattr(backend, "input_stage", None)
    stage = make(protocol) if make is not None else None
    return stage if stage is not None else HostStage()


def job_threads(backend, threads: int | None):
    """A context manager giving the backend ``threads`` CPU threads during a job (a no-op without it)."""
    make = getattr(backend, "job_threads", None)
    return make(threads) if make is not None else contextlib.nullcontext()


def overlaps_batches(backend) -> bool:
    """Whether the Scorer should overlap consecutive batches on this backend."""
    return bool(getattr(backend, "overlaps_batches", False))
