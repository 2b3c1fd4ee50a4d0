"""``compare`` at experiment size: a score-file generator, the 200 x 250 budget (slow), default pair sets.

Re-measure on a quiet machine (the generator is also a script):

    PYTHONPATH=$PWD python -m tests.runtime.test_compare_scale /tmp/s200.csv --systems 200 --clips 250
    /usr/bin/time -v env PYTHONPATH=$PWD python -m deramos_rt.cli compare /tmp/s200.csv --out /tmp/r200
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deramos_rt.compare import NO_DIFFERENCE, Clip, _by_system, _pairs, compare, pair_set, permutations_for, read_scores

REPO = Path(__file__).resolve().parents[2]

CENTRES = np.linspace(1.0, 5.0, 20)
COLUMNS = ("id", "path", "system", "prompt", "mi", "ta", "error", "mi_probs", "ta_probs", "backend",
           "precision", "bundle", "deramos_rt")


def _distributions(target: np.ndarray) -> np.ndarray:
    """(N, 20) bin probabilities peaked at each target score (rounded to 6 digits, as a score file holds)."""
    logits = -((CENTRES[None, :] - target[:, None]) ** 2) / (2 * 0.45 ** 2)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return np.round(probs / probs.sum(1, keepdims=True), 6)


def score_rows(systems: int, clips: int, seed: int = 0) -> list[dict]:
    """Rows of a ``deramos-rt score`` CSV: every system scored the same ``clips`` prompts once.

    System means are spread over about 1 MOS so that the best few are close and the rest clearly worse;
    each prompt has its own effect shared by all systems (so pairs are paired), plus per-clip noise.
    """
    rng = np.random.default_rng(seed)
    means = {"mi": np.linspace(3.6, 2.6, systems), "ta": rng.permutation(np.linspace(3.4, 2.8, systems))}
    effect = {m: rng.normal(0, 0.4, clips) for m in means}
    rows = []
    for s in range(systems):
        name = f"S{s + 1:03d}"
        target = {m: np.clip(means[m][s] + effect[m] + rng.normal(0, 0.35, clips), 1.2, 4.8) for m in means}
        probs = {m: _distributions(target[m]) for m in means}
        for p in range(clips):
            clip_id = f"gen-{name}_P{p + 1:03d}"
            row = {"id": clip_id, "path": f"wav/{clip_id}.wav", "system": name, "prompt": f"prompt {p + 1}",
                   "error": "", "backend": "onnxruntime", "precision": "fp32", "bundle": "gen", "deramos_rt": "0"}
            for m in means:
                row[m] = repr(float(probs[m][p] @ CENTRES))
                row[f"{m}_probs"] = json.dumps(probs[m][p].tolist())
            rows.append(row)
    return rows


def write_scores(path: str | Path, systems: int, clips: int, seed: int = 0) -> Path:
    """Write :func:`score_rows` as a score CSV; returns the path."""
    path = Path(path)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(score_rows(systems, clips, seed))
    return path


def test_generated_file_reads_as_a_score_file(tmp_path):
    clips = read_scores(write_scores(tmp_path / "s.csv", systems=3, clips=5))
    assert len(clips) == 15 and sorted({c.system for c in clips}) == ["S001", "S002", "S003"]
    assert {c.unit for c in clips} == {f"prompt {p}" for p in range(1, 6)}  # shared prompts: paired
    for clip in clips:
        for metric in ("mi", "ta"):
            assert 1 <= clip.scores[metric] <= 5 and not clip.invalid
            assert clip.scores[metric] == pytest.approx(clip.probs[metric] @ CENTRES, abs=1e-4)


def _means(result: dict, metric: str) -> dict[str, float]:
    return {n: s[metric]["mean"] for n, s in result["systems"].items()}


def test_many_systems_default_to_each_against_the_best(tmp_path):
    path = write_scores(tmp_path / "s.csv", systems=40, clips=6)
    result = compare(path, metrics=("mi",), resamples=200)
    means = _means(result, "mi")
    best = max(means, key=means.get)
    assert result["pair_sets"]["mi"] == {"mode": "best", "reference": best, "tested": 39, "family": 780,
                                         "permutations": permutations_for(200, 780)}
    assert all(p["a"] == best for p in result["pairs"]["mi"]) and len(result["pairs"]["mi"]) == 39
    assert json.dumps(result) == json.dumps(compare(path, metrics=("mi",), resamples=200))  # seeded


def test_pair_sets_all_top_n_and_a_few_systems():
    names = [f"S{i:03d}" for i in range(1, 41)]
    means = {n: float(i) for i, n in enumerate(names)}  # S040 is the best
    top = pair_set(names, means, pairs=3)
    assert top["mode"] == "top 3" and top["reference"] == "S040" and top["family"] == 780
    assert top["pairs"][:3] == [("S040", "S039"), ("S040", "S038"), ("S039", "S038")]
    assert len(top["pairs"]) == 3 + 37 and top["pairs"][-1] == ("S040", "S001")
    every = pair_set(names, means, pairs="all")
    assert len(every["pairs"]) == 780 and every["family"] is None
    assert pair_set(names[:30], means)["mode"] == "all" and pair_set(names[:31], means)["mode"] == "best"
    assert pair_set(names, means, pairs=40)["mode"] == "all"
    baseline = pair_set(names, means, baseline="S001")
    assert baseline["family"] is None and baseline["pairs"][0] == ("S002", "S001") and len(baseline["pairs"]) == 39


def _identical(systems: int, prompts: int, seed: int) -> dict[str, list[Clip]]:
    rng = np.random.default_rng(seed)
    effect = rng.normal(0, 0.4, prompts)
    return _by_system([Clip(f"x-S{s:03d}_P{p:03d}", f"S{s:03d}", f"p{p}", f"p{p}", None,
                            scores={"mi": float(np.clip(3 + effect[p] + rng.normal(0, 0.4), 1, 5))},
                            probs={"mi": None})
                       for s in range(systems) for p in range(prompts)])


def test_the_best_picked_from_the_data_gives_no_false_verdict_on_identical_systems():
    """100 systems of one quality: the best and the worst differ by chance alone. Holm over the 99 pairs with
    the best would call some of them different; over all 4,950 pairs (what the best was picked from) none."""
    systems = _identical(100, 20, seed=3)
    names = list(systems)
    chosen = pair_set(names, {n: float(np.mean([c.scores["mi"] for c in systems[n]])) for n in names})
    naive = _pairs(systems, names, "mi", None, 1000, np.random.default_rng(1), chosen["pairs"], None,
                   permutations_for(1000, 99))
    assert sum(p["verdict"] != NO_DIFFERENCE for p in naive) > 0
    ours = _pairs(systems, names, "mi", None, 1000, np.random.default_rng(1), chosen["pairs"], chosen["family"],
                  permutations_for(1000, chosen["family"]))
    assert all(p["verdict"] == NO_DIFFERENCE for p in ours)


def test_cli_on_many_systems_writes_the_report(tmp_path):
    from deramos_rt.cli import main

    path = write_scores(tmp_path / "s.csv", systems=45, clips=8)
    assert main(["compare", str(path), "--out", str(tmp_path / "r"), "--resamples", "200"]) == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert {m: s["mode"] for m, s in results["pair_sets"].items()} == {"mi": "best", "ta": "best"}
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "each system against the best" in markdown and "Holm over all 990 pairs" in markdown
    assert "No pair matrix: it is drawn up to 40 systems" in (tmp_path / "r" / "report.html").read_text()


@pytest.mark.slow
def test_200_systems_by_250_clips_take_under_two_minutes_and_1_gb(tmp_path):
    scores = write_scores(tmp_path / "scores.csv", systems=200, clips=250)
    code = ("import resource, sys; from deramos_rt.cli import main; rc = main(sys.argv[1:]); "
            "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, "compare", str(scores), "--out", str(tmp_path / "report")],
                          capture_output=True, text=True, env=env, timeout=900)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    rss_mb = int(done.stdout.rsplit("MAXRSS_KB", 1)[1].split()[0]) / 1024
    print(f"200 x 250: {seconds:.1f} s, peak RSS {rss_mb:.0f} MB, load {os.getloadavg()}")
    assert seconds < 120 and rss_mb < 1024, (seconds, rss_mb)
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    for metric in ("mi", "ta"):
        assert results["pair_sets"][metric]["mode"] == "best" and len(results["pairs"][metric]) == 199
    # S001 and S200 are a full MOS apart in MI: whoever is best, the worst one is separated from it
    assert any(p["b"] == "S200" and p["verdict"] != NO_DIFFERENCE for p in results["pairs"]["mi"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write a generated score file for compare")
    parser.add_argument("out")
    parser.add_argument("--systems", type=int, default=200)
    parser.add_argument("--clips", type=int, default=250, help="clips (= shared prompts) per system")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_scores(args.out, args.systems, args.clips, args.seed))


if __name__ == "__main__":
    main()
