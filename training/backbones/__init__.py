"""Registry of frozen encoders: name -> module that builds it.

Each backbone module defines ``build(**options) -> AudioBackbone | TextBackbone`` and
``load_weights(backbone, path) -> None`` (local files only). Modules are imported only when their
backbone is asked for, so a missing optional package affects only that backbone.

Three functions, three jobs: :func:`create_backbone` builds, :func:`load_backbone_weights` loads,
:func:`freeze` freezes.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from deramos_rt.errors import DeramosError
from training.backbones.base import AudioBackbone, AudioContract, TextBackbone, TextContract, freeze

AUDIO_BACKBONES: dict[str, str] = {
    "clap-htsat": "training.backbones.clap_htsat",
    "muq": "training.backbones.muq",
    "spectral": "training.backbones.spectral",
    "tiny": "training.backbones.tiny",
}
TEXT_BACKBONES: dict[str, str] = {
    "roberta": "training.backbones.text_hf",
    "bert": "training.backbones.text_hf",
    "minilm": "training.backbones.text_hf",
    "tiny": "training.backbones.tiny",
}
_REGISTRIES = {"audio": AUDIO_BACKBONES, "text": TEXT_BACKBONES}

__all__ = [
    "AudioBackbone",
    "AudioContract",
    "TextBackbone",
    "TextContract",
    "create_backbone",
    "freeze",
    "list_backbones",
    "load_backbone_weights",
]


def list_backbones(kind: str) -> list[str]:
    """Names of the registered ``"audio"`` or ``"text"`` backbones."""
    return sorted(_registry(kind))


def _registry(kind: str) -> dict[str, str]:
    if kind not in _REGISTRIES:
        raise DeramosError(f"unknown backbone kind {kind!r}; choose one of: audio, text")
    return _REGISTRIES[kind]


def _module(kind: str, name: str):
    registry = _registry(kind)
    if name not in registry:
        raise DeramosError(f"unknown {kind} backbone {name!r}; choose one of: {', '.join(sorted(registry))}")
    return importlib.import_module(registry[name])


def create_backbone(kind: str, name: str, **options: Any) -> AudioBackbone | TextBackbone:
    """Build a backbone with random weights (load real ones with :func:`load_backbone_weights`).

    Args:
        kind: ``"audio"`` or ``"text"``.
        name: a registered name (see :func:`list_backbones`).
        **options: backbone-specific settings, e.g. ``size="tiny"``; recorded in the model config.
    """
    module = _module(kind, name)
    builder = getattr(module, f"build_{kind}", None) or module.build
    return builder(name=name, **options)


def load_backbone_weights(kind: str, name: str, backbone: AudioBackbone | TextBackbone, path: str | Path) -> None:
    """Load real weights from a local file or folder into ``backbone`` (strict: no missing keys)."""
    module = _module(kind, name)
    loader = getattr(module, f"load_{kind}_weights", None) or module.load_weights
    loader(backbone, str(path))
