"""Built-in models by name: the packaged run, its cached bundle, and a wheel that works outside the clone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from deramos_rt import models
from deramos_rt.errors import DeramosError
from deramos_rt.source import RunSource, resolve_source

REPO = Path(__file__).resolve().parents[2]


def test_names_resolve_to_the_packaged_run_and_a_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("DERAMOS_CACHE", str(tmp_path))
    assert models.run_dir("default") == REPO / "deramos_rt" / "model_data" / "default"
    path = models.bundle_path("default")
    assert path.parent == tmp_path / "bundles" and path.name.startswith("default-")
    with pytest.raises(DeramosError, match="unknown built-in model 'nope'; built-in models: default"):
        models.run_dir("nope")
    with pytest.raises(DeramosError, match="no bundle yet"):
        models.bundle_dir("default", build=False)
    source = resolve_source("default", backend="torch")
    assert isinstance(source, RunSource) and source.kind == "run" and len(source.identity) == 16


def test_a_failed_build_is_one_line_and_leaves_no_bundle(monkeypatch, tmp_path):
    monkeypatch.setenv("DERAMOS_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "build_command", lambda name, out=None: [sys.executable, "-c", "raise SystemExit(4)"])
    with pytest.raises(DeramosError, match="bundle failed .exit 4"):
        models.bundle_dir("default")
    assert not models.bundle_path("default").exists()


def _venv_with_the_wheel(tmp_path: Path) -> Path:
    """A fresh venv holding only the project's wheel; its dependencies come from this environment's
    site-packages through a .pth path line (which adds the folder, not its .pth files: the editable
    install of the clone is not visible there)."""
    # Built from a copy, so that setuptools' build/ and egg-info folders never land in (or come from) the clone.
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", ".cache",
                                                                 "models", "results", "data", "runs", "__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(source)], check=True, cwd=tmp_path)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "deps.pth").write_text("\n".join(deps) + "\n")
    [wheel] = wheels.glob("deramos_rt-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, cwd=tmp_path)
    return python


def test_an_installed_wheel_scores_with_the_built_in_model_outside_the_clone(tmp_path):
    python = _venv_with_the_wheel(tmp_path)
    script = (
        "import numpy as np, deramos_rt, sys\n"
        "assert 'site-packages' in deramos_rt.__file__ and '" + str(REPO) + "' not in deramos_rt.__file__\n"
        "from deramos_rt import Scorer\n"
        "tone = (0.3 * np.sin(np.arange(16000 * 3) / 16000 * 2 * np.pi * 440)).astype('float32')\n"
        "[r] = Scorer(decode_workers=0).score([(tone, 16000, 'a calm piano piece')])\n"
        "assert r.error is None and 1 <= r.mi <= 5 and 1 <= r.ta <= 5, r\n"
        "print('scored', r.mi, r.ta)\n")
    env = {**os.environ, "DERAMOS_CACHE": str(tmp_path / "cache"), "PYTHONPATH": ""}
    env.pop("DERAMOS_DEFAULT_BUNDLE", None)
    done = subprocess.run([str(python), "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "scored" in done.stdout
    assert list((tmp_path / "cache" / "bundles").glob("default-*/deramos.json"))
