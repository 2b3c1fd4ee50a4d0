"""The torch backend: a training RUN DIRECTORY run eagerly through ``training.split``.

It is the reference for parity (the exported graphs are checked against the same modules) and the
fallback where no bundle exists. It is the only backend that imports ``training``; everything is
imported when the backend is opened. On CUDA, ``fp16`` and ``bf16`` run under autocast, which keeps
softmax and LayerNorm in fp32.
"""

from __future__ import annotations

import numpy as np

from deramos_rt.backends.base import BackendInfo
from deramos_rt.errors import DeramosError

PRECISIONS = ("fp32", "fp16", "bf16")


class TorchThreads:
    """Sets torch's intra-op thread count while a backend is open and restores it on close."""

    def __init__(self, torch, threads: int | None):
        self._torch, self._previous = torch, None
        if threads:
            self._previous = torch.get_num_threads()
            torch.set_num_threads(int(threads))

    def restore(self) -> None:
        if self._previous is not None:
            self._torch.set_num_threads(self._previous)
            self._previous = None


class TorchBackend:
    """Eager torch on a run directory.

    Args:
        source: a :class:`deramos_rt.source.RunSource` (a training run directory).
        device: ``cpu``, ``cuda`` or ``cuda:N``; None picks CUDA when torch sees a GPU.
        precision: ``fp32`` (default), or ``fp16`` / ``bf16`` on CUDA.
        threads: torch's CPU threads while the backend is open (None: torch's default).
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
        self.info = BackendInfo("torch", precision, str(self._device),
                                f"torch {torch.__version__}, eager, run {source.root}")

    def _run(self, module, *arrays: np.ndarray):
        torch = self._torch
        tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(self._device) for a in arrays]
        with torch.inference_mode(), torch.autocast(self._device.type, dtype=self._dtype,
                                                    enabled=self._dtype is not None):
            out = module(*tensors)
        outs = out if isinstance(out, tuple) else (out,)
        return tuple(o.float().cpu().numpy() for o in outs)

    def run_audio(self, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mi, audio_x = self._run(self.audio_part, waveform.astype(np.float32, copy=False))
        return mi, audio_x

    def run_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._run(self.text_part, input_ids.astype(np.int64), attention_mask.astype(np.int64))[0]

    def run_ta(self, audio_x: np.ndarray, text_x: np.ndarray, text_mask: np.ndarray) -> np.ndarray:
        return self._run(self.ta_part, audio_x.astype(np.float32, copy=False), text_x.astype(np.float32, copy=False),
                         text_mask.astype(np.int64))[0]

    def close(self) -> None:
        self.audio_part = self.text_part = self.ta_part = None
        self._threads.restore()
