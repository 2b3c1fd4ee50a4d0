"""Run directories: write and rebuild a trained model.

Reading weight files safely lives in :mod:`training.weights` (re-exported here). A run directory holds ``config.json`` (a :class:`RunConfig`) and ``model.safetensors`` with the heads
(``heads.*``) plus the weights of any encoder whose config names no weights source (random-initialised
test encoders), so that every run can be rebuilt from its directory alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from deramos_rt.errors import DeramosError
from training.weights import (  # noqa: F401  (re-exported: older imports name this module)
    load_safetensors_strict,
    load_state_file,
    load_strict,
    torch_load_safe,
    unwrap_state_dict,
)

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_run_model(model: nn.Module, run_dir: str | Path) -> Path:
    """Write ``model.safetensors``: heads always, encoders only when they have no weights source."""
    from safetensors.torch import save_file

    state = {f"heads.{k}": v for k, v in model.heads.state_dict().items()}
    for attr, cfg in (("audio_encoder", model.config.audio), ("text_encoder", model.config.text)):
        encoder = getattr(model, attr)
        if encoder is not None and not cfg.weights:
            state.update({f"{attr}.{k}": v for k, v in encoder.state_dict().items()})
    path = Path(run_dir) / MODEL_FILE
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path),
              metadata={"format_version": str(FORMAT_VERSION)})
    return path


def load_run(run_dir: str | Path, encoders: bool = True, device: str = "cpu"):
    """Rebuild the model of a run directory (eval mode) and return ``(model, run_config)``."""
    from training.config import RunConfig
    from training.model import build_model

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise DeramosError(f"{run_dir} is not a run directory: {CONFIG_FILE} is missing")
    run_config = RunConfig.from_json(run_dir / CONFIG_FILE)
    for cfg in (run_config.model.audio, run_config.model.text):
        # Weights written into the run directory (e.g. by training.import_research) are stored relative to it.
        if cfg.weights and not Path(cfg.weights).is_absolute() and (run_dir / cfg.weights).exists():
            cfg.weights = str(run_dir / cfg.weights)
    state = load_state_file(run_dir / MODEL_FILE)
    model = build_model(run_config.model, load_weights=True, encoders=encoders)
    load_strict(model.heads, _strip(state, "heads."), f"{run_dir / MODEL_FILE} (heads)")
    for attr, cfg in (("audio_encoder", run_config.model.audio), ("text_encoder", run_config.model.text)):
        encoder = getattr(model, attr)
        if encoder is not None and not cfg.weights:
            load_strict(encoder, _strip(state, f"{attr}."), f"{run_dir / MODEL_FILE} ({attr})")
    return model.to(device).eval(), run_config


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def write_json(path: str | Path, data) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
