"""Console-script entry points (``deramos-train``, ``deramos-evaluate``) that fail politely.

Training and evaluation need the ``train`` extra (torch, transformers, safetensors, scipy). Without it the
scripts print one line naming the install command and exit 2, instead of an import traceback. The check
runs before ``training.train`` / ``training.evaluate`` are imported, since importing them needs torch.
"""

from __future__ import annotations

import importlib.util
import sys

TRAIN_PACKAGES = ("torch", "transformers", "safetensors", "scipy")
INSTALL_HINT = "pip install 'deramos_rt[train]'"


def missing_packages(names: tuple[str, ...] = TRAIN_PACKAGES) -> list[str]:
    """The packages of ``names`` that cannot be imported."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken or half-installed package
            found = False
        if found:
            try:
                __import__(name)
            except Exception:  # installed but unusable (e.g. a wheel for another Python): same remedy
                found = False
        if not found:
            missing.append(name)
    return missing


def _check(prog: str) -> bool:
    missing = missing_packages()
    if missing:
        print(f"{prog}: needs {', '.join(missing)} (the train extra): {INSTALL_HINT}", file=sys.stderr)
        return False
    return True


def train_main(argv: list[str] | None = None) -> int:
    """``deramos-train``: ``python -m training.train`` after checking the train extra."""
    if not _check("deramos-train"):
        return 2
    from training.train import main

    return main(argv)


def evaluate_main(argv: list[str] | None = None) -> int:
    """``deramos-evaluate``: ``python -m training.evaluate`` after checking the train extra."""
    if not _check("deramos-evaluate"):
        return 2
    from training.evaluate import main

    return main(argv)
