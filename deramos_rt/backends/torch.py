"""The torch backend: a training RUN DIRECTORY run eagerly through ``training.split``.

It is the reference for parity (the exported graphs are checked against the same modules) and the
fallback where no bundle exists. It is the only backend that imports ``training``; everything is
imported when the backend is opened. On CUDA, ``fp16`` and ``bf16`` run under autocast, which keeps
softmax and LayerNorm in fp32.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from deramos_rt.backends.base import BackendInfo
from deramos_rt.errors import DeramosError

PRECISIONS = ("fp32", "fp16", "bf16")


def run_identity(run_dir: Path) -> str:
    """sha256 over the run's config and weights files (what the torch backend scores with)."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        path = run_dir / name
        if path.is_file():
            with path.open("rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
    return digest.hexdigest()


class TorchBackend:
    """Eager torch on a run directory.

    Args:
        run_dir: a training run directory (``config.json`` + ``model.safetensors``).
        device: ``cpu``, ``cuda`` or ``cuda:N``; None picks CUDA when torch sees a GPU.
        precision: ``fp32`` (default), or ``fp16`` / ``bf16`` on CUDA.

    Besides the backend interface it exposes what a bundle's manifest would: ``protocol``, ``tokenizer``,
    ``head``, ``bins`` and ``identity``.
    """

    def __init__(self, run_dir: str | Path, device: str | None = None, precision: str | None = None):
        import torch
        from training.checkpoint import load_run
        from training.model import build_tokenizer
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
        run_dir = Path(run_dir)
        model, run_config = load_run(run_dir, device=device)
        self.audio_part, self.text_part, self.ta_part = split_model(model)
        config = run_config.model
        self.protocol = model.audio_protocol
        self.tokenizer = build_tokenizer(model)
        self.head = config.head
        self.bins = np.linspace(config.bin_min, config.bin_max, config.num_bins) if config.head == "distribution" else None
        self.identity = run_identity(run_dir)
        self._device = torch.device(device)
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.info = BackendInfo("torch", precision, str(self._device), f"torch {torch.__version__}, eager, run {run_dir}")

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
