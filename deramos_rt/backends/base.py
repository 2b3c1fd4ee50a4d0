"""The one backend interface. Every backend runs the same three graphs of a bundle (or of a run directory,
for the torch backend); the Scorer never branches on the backend type.

Graph contract (``training/split.py`` defines the parts, ``deramos_rt/bundle.py`` the files):

* ``run_audio(waveform (B, N) float32) -> (mi, audio_x)``: ``mi`` is (B, K) probabilities for distribution
  heads or (B,) scores for scalar heads; ``audio_x`` (B, T, d) float32.
* ``run_text(input_ids (B, L) int64, attention_mask (B, L) int64) -> text_x (B, L, d) float32``.
* ``run_ta(audio_x (B, T, d), text_x (B, L, d), text_mask (B, L) int64) -> ta`` like ``mi``.

All arrays cross the interface as numpy on the host. A backend that keeps tensors on a device may cache
them internally, but its outputs are numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

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

    def run_audio(self, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def run_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...

    def run_ta(self, audio_x: np.ndarray, text_x: np.ndarray, text_mask: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...
