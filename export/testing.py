"""Run directories with random weights, for tests and for checking exports of every model kind quickly."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_random_run(run_dir: str | Path, recipe: str = "tiny", seed: int = 0, load_weights: bool = False,
                     **model_fields: Any) -> Path:
    """Write a run directory (``config.json`` + ``model.safetensors``) with seeded random weights.

    Args:
        run_dir: folder to create.
        recipe: a named recipe or a recipe JSON path (its model section is used).
        seed: torch seed for the random weights.
        load_weights: load encoder weights named in the recipe (False: random encoders, saved in the run).
        **model_fields: ModelConfig overrides, e.g. ``head="scalar"`` or ``audio=BackboneConfig(...)``.

    Returns:
        The run directory.
    """
    import torch

    from training.checkpoint import save_run_model
    from training.config import load_recipe
    from training.model import build_model

    run_config = load_recipe(recipe)
    for key, value in model_fields.items():
        setattr(run_config.model, key, value)
    if not load_weights:  # random encoders are saved inside the run, so no weights source is recorded
        run_config.model.audio.weights = None
        if run_config.model.text.weights != "package":
            run_config.model.text.weights = None
    torch.manual_seed(seed)
    model = build_model(run_config.model, load_weights=load_weights)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_model(model, run_dir)
    run_config.to_json(run_dir / "config.json")
    return run_dir


def tiny_bundle(folder: str | Path, precisions=("fp32",), seed: int = 0, recipe: str = "tiny",
                **options: Any) -> Path:
    """A bundle of a random-weight tiny model in ``folder/bundle`` (run directory in ``folder/run``).

    A pytest fixture can call this once per session: it takes a few seconds on two cores with the default
    (small) parity gate of 4 generated files + 12 random signals.
    """
    from export.build_engine import build_bundle

    folder = Path(folder)
    run = write_random_run(folder / "run", recipe=recipe, seed=seed)
    options.setdefault("parity_files", 4)
    options.setdefault("parity_random", 12)
    return build_bundle(run, folder / "bundle", precisions, **options)
