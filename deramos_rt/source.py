"""Where a model comes from: a bundle folder, a training run directory, or a built-in name (``"default"``).

:func:`resolve_source` turns what the user gave into one of two classes with the same properties, so that
the Scorer and the backends need not care which it is:

* :class:`deramos_rt.bundle.Bundle` (``kind == "bundle"``): exported graphs, run by onnxruntime, tensorrt, aoti;
* :class:`RunSource` (``kind == "run"``): a training run directory, run by the torch backend.

Both have ``root``, ``kind``, ``protocol`` (the audio protocol), ``head``, ``bins``, ``identity`` (16 hex
characters recorded in every score file) and ``tokenizer()``.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import numpy as np

from deramos_rt.errors import DeramosError

RUN_FILES = ("config.json", "model.safetensors")


def run_identity(run_dir: str | Path) -> str:
    """sha256 over a run's config and weights files (what the torch backend scores with)."""
    from deramos_rt.bundle import files_sha256

    return files_sha256(Path(run_dir) / name for name in RUN_FILES)


def is_run_dir(path: str | Path) -> bool:
    return all((Path(path) / name).is_file() for name in RUN_FILES)


class RunSource:
    """A training run directory as a model source (the torch backend's; loads ``training`` on first use).

    The model is rebuilt once, on the CPU, when a property that needs it is first read; the torch backend
    takes that same model (:meth:`model`) and moves it to its device.
    """

    kind = "run"

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        if not is_run_dir(self.root):
            raise DeramosError(f"{self.root} is not a training run directory (config.json + model.safetensors)")
        self._loaded = None

    def __repr__(self) -> str:
        return f"RunSource({str(self.root)!r})"

    def model(self):
        """``(model, run_config)`` of :func:`training.checkpoint.load_run` (built once)."""
        if self._loaded is None:
            try:
                from training.checkpoint import load_run
            except ImportError as exc:
                raise DeramosError(f"scoring the run directory {self.root} needs the training code and torch "
                                   f"(extra: train): {exc}") from exc
            self._loaded = load_run(self.root)
        return self._loaded

    @property
    def protocol(self):
        return self.model()[0].audio_protocol

    @property
    def head(self) -> str:
        return self.model()[1].model.head

    @property
    def bins(self) -> np.ndarray | None:
        config = self.model()[1].model
        return np.linspace(config.bin_min, config.bin_max, config.num_bins) if config.head == "distribution" else None

    @cached_property
    def identity(self) -> str:
        return run_identity(self.root)[:16]

    def tokenizer(self):
        from training.model import build_tokenizer

        return build_tokenizer(self.model()[0])


def resolve_source(model=None, backend: str = "auto"):
    """A :class:`~deramos_rt.bundle.Bundle` or a :class:`RunSource` for what the user named.

    Args:
        model: a bundle folder, a run directory, a built-in model's name (``"default"``), or None (the
            built-in default; ``$DERAMOS_DEFAULT_BUNDLE`` names another bundle for it).
        backend: the backend asked for: with ``torch``, a built-in name resolves to its run directory.

    Raises:
        DeramosError: the path is neither a bundle nor a run directory, or an unknown name.
    """
    from deramos_rt import models
    from deramos_rt.bundle import load_bundle

    if model is None or (isinstance(model, str) and model in models.BUILTIN):
        name = model or models.DEFAULT
        override = os.environ.get("DERAMOS_DEFAULT_BUNDLE") if name == models.DEFAULT else None
        if override:
            return _path_source(Path(override), "$DERAMOS_DEFAULT_BUNDLE")
        if backend == "torch":
            return RunSource(models.run_dir(name))
        return load_bundle(models.bundle_dir(name))
    return _path_source(Path(model), "model")


def _path_source(path: Path, what: str):
    from deramos_rt import models
    from deramos_rt.bundle import is_bundle, load_bundle

    if is_bundle(path):
        return load_bundle(path)
    if is_run_dir(path):
        return RunSource(path)
    names = ", ".join(models.BUILTIN)
    raise DeramosError(f"{what} {path} is neither a bundle (no deramos.json) nor a training run directory "
                       f"(config.json + model.safetensors), nor a built-in model name ({names})")
