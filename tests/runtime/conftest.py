"""Runtime fixtures: a tiny run directory, its scorer, and generated clips (built once per session)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

PROMPTS = ("a calm piano piece", "fast drums with bass", "a sad violin melody")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    from export.testing import write_random_run
    from training.config import BackboneConfig

    # A coarse hop keeps the audio sequence short (31 frames), so every test scores in milliseconds.
    audio = BackboneConfig("tiny", {"clip_seconds": 2.0, "hop": 1024})
    return write_random_run(tmp_path_factory.mktemp("tiny-run") / "run", "tiny", seed=0, audio=audio)


@pytest.fixture(scope="session")
def torch_scorer(tiny_run):
    from deramos_rt.scorer import Scorer

    scorer = Scorer(tiny_run, backend="torch", batch_size=4, decode_workers=2)
    yield scorer
    scorer.close()


def write_clip(path, seconds=3.0, rate=16000, channels=1, seed=0, amplitude=0.3):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = amplitude * np.sin(2 * np.pi * (220 + 40 * seed) * t) + 0.05 * rng.standard_normal(t.size)
    data = np.stack([tone * (1 - 0.1 * c) for c in range(channels)], axis=1) if channels > 1 else tone
    sf.write(path, data.astype(np.float32), rate)
    return path


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    """Six ordinary clips with prompts: [(path, prompt)]."""
    root = tmp_path_factory.mktemp("clips")
    return [(str(write_clip(root / f"audiomos-S00{i % 3 + 1}_P{i:03d}.wav", seed=i)), PROMPTS[i % 3]) for i in range(6)]


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run, tmp_path_factory):
    """The tiny run exported (fp32 + int8) by the export engineer's builder."""
    from export.build_engine import build_bundle

    return build_bundle(tiny_run, tmp_path_factory.mktemp("tiny-bundle") / "bundle", precisions=("fp32", "int8"))


def write_manifest(path, rows):
    """A CSV manifest from (path, prompt[, id]) rows."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "prompt", "id"])
        for row in rows:
            writer.writerow([row[0], row[1], row[2] if len(row) > 2 else ""])
    return path
