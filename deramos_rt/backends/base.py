"""The one backend interface. Every backend runs the same three graphs of a bundle (or of a run directory,
for the torch backend); the Scorer never branches on the backend type.

Graph contract (``training/split.py`` defines the parts, ``deramos_rt/bundle.py`` the files):

* ``run_audio(waveform (B, N) float32) -> (mi, audio_x)``: ``mi`` is (B, K) probabilities for distribution
  heads or (B,) scores for scalar heads; ``audio_x`` (B, T, d) float32.
* ``run_text(input_ids (B, L) int64, attention_mask (B, L) int64) -> text_x (B, L, d) float32``.
* ``run_ta(audio_x (B, T, d), text_x (B, L, d), text_mask (B, L) int64) -> ta`` like ``mi``.

All arrays cross the interface as numpy on the host. A backend that keeps tensors on a device may cache
them internally, but its outputs are numpy. ``max_batch`` is the most rows one call may take (a compiled
engine's optimisation profile), None when any batch runs; a backend with a limit splits larger calls
itself, and the Scorer keeps its batches within it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

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

    def run_audio(self, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def run_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...

    def run_ta(self, audio_x: np.ndarray, text_x: np.ndarray, text_mask: np.ndarray) -> np.ndarray: ...

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
