"""Safe weight files: safetensors or ``torch.load(weights_only=True)``, strict key checking.

A run directory holds ``config.json`` (a :class:`RunConfig`) and ``model.safetensors`` with the heads
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

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from ``.safetensors`` or a torch pickle, never executing pickled code.

    Raises:
        DeramosError: missing file, or a pickle that needs code to load.
    """
    path = Path(path)
    if not path.is_file():
        raise DeramosError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DeramosError(
            f"refusing to load {path}: it is not a plain tensor checkpoint and would need pickled code "
            f"to load (torch.load weights_only=True failed: {str(exc).splitlines()[0]}). "
            "Re-save it as a state dict or safetensors."
        ) from exc
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj, source: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """Accept a flat state dict or one wrapped under ``state_dict`` / ``model_state_dict`` / ``model``."""
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DeramosError(f"{source} does not contain a flat state dict of tensors")
    return dict(obj)


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint",
                ignore_missing: tuple[str, ...] = ()) -> None:
    """``load_state_dict`` that names every missing, unexpected or mis-shaped key in one error."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(ignore_missing)]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in state if k in own and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:20])}{' ...' if len(unexpected) > 20 else ''}")
    if shapes:
        problems.append(f"wrong shapes: {'; '.join(shapes[:20])}")
    if problems:
        raise DeramosError(f"{source} does not fit {type(module).__name__}: " + " | ".join(problems))
    module.load_state_dict(dict(state), strict=not ignore_missing)


def load_safetensors_strict(module: nn.Module, path: str | Path) -> None:
    load_strict(module, load_state_file(path), str(path))


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
