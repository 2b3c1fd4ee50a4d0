"""Safe weight files: safetensors or ``torch.load(weights_only=True)``, strict key checking.

Used by the backbones (encoder weights) and by run directories (``training.checkpoint``). Nothing here
executes pickled code: a torch file that needs it is refused, and a truncated or foreign file is one
clear error naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from deramos_rt.errors import DeramosError

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
PICKLE_MAGIC = b"\x80"       # the legacy torch.save format starts with a pickle protocol opcode


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from ``.safetensors`` or a torch pickle, never executing pickled code.

    Raises:
        DeramosError: missing, truncated or foreign file, or a pickle that needs code to load.
    """
    path = Path(path)
    if not path.is_file():
        raise DeramosError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return unwrap_state_dict(torch_load_safe(path), path)


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file.

    Raises:
        DeramosError: the file is truncated, corrupt or not safetensors.
    """
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type and OSError for a bad file
        raise DeramosError(f"cannot read weights file {path}: truncated, corrupt or not a safetensors file "
                           f"({_first_line(exc)})") from None


def torch_load_safe(path: str | Path, what: str = "checkpoint"):
    """``torch.load(path, weights_only=True)`` on CPU with one clear error for every way it can fail.

    Args:
        path: the file.
        what: what the file should be, for the messages (e.g. ``"resume state"``).

    Raises:
        DeramosError: missing file; not a torch file at all (e.g. text); truncated or corrupt; or a
            checkpoint that would need pickled code.
    """
    path = Path(path)
    if not path.is_file():
        raise DeramosError(f"{what} not found: {path}")
    with path.open("rb") as f:
        head = f.read(4)
    if not (head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_MAGIC)):
        raise DeramosError(f"{path} is not a {what}: it is neither a torch.save file nor safetensors "
                           f"(it starts with {head!r})")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights only load failed" in str(exc).lower() or "weights_only" in str(exc):
            raise DeramosError(
                f"refusing to load {path}: it is not a plain tensor checkpoint and would need pickled code "
                f"to load ({_first_line(exc)}). Re-save it as a state dict or safetensors.") from None
        raise DeramosError(f"cannot read {what} {path}: truncated or corrupt ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
