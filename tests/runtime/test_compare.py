"""deramos_rt.compare: statistics checked against scipy, by hand, and by simulation; degenerate inputs."""

from __future__ import annotations

import argparse
import csv
import json
import math

import numpy as np
import pytest
from scipy import stats

from deramos_rt.cli import add_compare_arguments
from deramos_rt.compare import (NO_DIFFERENCE, Clip, _pairs, clip_sd, compare, difference, holm, mean_ci, read_labels,
                                read_scores)
from deramos_rt.errors import DeramosError


def _clip(system: str, prompt: int, mi: float, ta: float | None = None, error: str = "") -> Clip:
    clip_id = f"audiomos2025-track1-{system}_P{prompt:03d}"
    return Clip(clip_id, system, f"prompt {prompt}", f"prompt {prompt}", f"wav/{clip_id}.wav",
                scores={"mi": mi, "ta": mi if ta is None else ta}, probs={"mi": None, "ta": None}, error=error)


def _systems(rng, means: dict[str, float], prompts: int, prompt_sd=0.5, noise_sd=0.4, shared=True):
    clips = []
    effect = rng.normal(0, prompt_sd, prompts)
    for k, (name, mu) in enumerate(means.items()):
        own = effect if shared else rng.normal(0, prompt_sd, prompts)
        for p in range(prompts):
            unit = p if shared else 1000 * k + p
            # Scores live on the 1-5 scale; anything outside it would be counted as invalid.
            clips.append(_clip(name, unit, float(np.clip(mu + own[p] + rng.normal(0, noise_sd), 1.0, 5.0))))
    return clips


# --------------------------------------------------------------------------------------- hand / scipy


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04); NaN is left out
    assert holm([0.01, 0.04, 0.03, math.nan])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([0.01, 0.04, 0.03, math.nan])[3])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    # two pairs tested out of a family of five: the untested three count as not rejected
    assert holm([0.04, 0.01], family=5) == pytest.approx([0.16, 0.05])


def test_mean_ci_is_scipy_bca_on_clips():
    x = np.random.default_rng(3).normal(3, 1, 25)
    ours = mean_ci(x, None, 999, np.random.default_rng(5))
    ref = stats.bootstrap((x,), np.mean, n_resamples=999, method="BCa", rng=np.random.default_rng(5))
    assert ours["method"] == "BCa"
    assert ours["ci_low"] == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert ours["ci_high"] == pytest.approx(ref.confidence_interval.high, abs=1e-12)


def test_paired_difference_by_hand_and_scipy():
    a, b = np.array([1.0, 2, 3, 4]), np.array([0.0, 1, 3, 2])
    out = difference(a, b, True, 1000, np.random.default_rng(0))
    # d = 1, 1, 0, 2: of the 16 exact sign flips only +-(1 + 1 + 2) reach |mean| >= 1 -> p = 4 / 16
    assert out["diff"] == 1.0
    assert out["p"] == pytest.approx(0.25)
    assert out["p_second"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert out["ci_low"] <= 1.0 <= out["ci_high"]


def test_unpaired_difference_uses_mann_whitney():
    a, b = np.arange(10.0), np.arange(10.0) + 3
    out = difference(a, b, False, 500, np.random.default_rng(0))
    assert out["diff"] == -3.0 and out["second_test"] == "Mann-Whitney U"
    assert out["p_second"] == pytest.approx(stats.mannwhitneyu(a, b).pvalue)


def test_clip_sd_of_a_two_point_distribution():
    probs = np.zeros(20)
    probs[[0, 19]] = 0.5  # half on 1, half on 5: SD 2
    assert clip_sd(probs) == pytest.approx(2.0)
    assert math.isnan(clip_sd(None))


# ---------------------------------------------------------------------------------------- simulation


def _per_system_coverage(experiments: int, resamples: int) -> float:
    rng = np.random.default_rng(11)
    covered = 0
    for _ in range(experiments):
        # 60 prompts, 2 clips each that share the prompt effect: resampling clips would be too narrow.
        # (Bootstrap intervals run a little narrow on few units: 92 % coverage at 20 prompts, docs/compare.md.)
        effect = np.repeat(rng.normal(0, 0.6, 60), 2)
        values = 3.0 + effect + rng.normal(0, 0.3, 120)
        ci = mean_ci(values, np.repeat(np.arange(60), 2), resamples, rng)
        covered += ci["ci_low"] <= 3.0 <= ci["ci_high"]
    return covered / experiments


def test_per_system_interval_covers_the_true_mean():
    coverage = _per_system_coverage(1000, 999)
    assert 0.93 <= coverage <= 0.97, coverage


def _pair_simulation(experiments: int, resamples: int) -> dict[str, float]:
    """A and B identical, C better by 0.25, 40 shared prompts."""
    rng = np.random.default_rng(12)
    truth = {("A", "B"): 0.0, ("A", "C"): -0.25, ("B", "C"): -0.25}
    covered = raw_fp = holm_fp = 0
    for _ in range(experiments):
        clips = _systems(rng, {"A": 3.0, "B": 3.0, "C": 3.25}, 40)
        systems = {n: [c for c in clips if c.system == n] for n in "ABC"}
        pairs = _pairs(systems, ["A", "B", "C"], "mi", None, resamples, rng)
        for pair in pairs:
            covered += pair["ci_low"] <= truth[(pair["a"], pair["b"])] <= pair["ci_high"]
        raw_fp += pairs[0]["p"] < 0.05
        holm_fp += pairs[0]["verdict"] != NO_DIFFERENCE
    return {"coverage": covered / (3 * experiments), "raw_fp": raw_fp / experiments,
            "holm_fp": holm_fp / experiments}


def test_pair_intervals_and_false_positives_fast():
    sim = _pair_simulation(100, 199)
    assert 0.91 <= sim["coverage"] <= 0.99, sim
    assert sim["raw_fp"] <= 0.11 and sim["holm_fp"] <= sim["raw_fp"], sim


@pytest.mark.slow
def test_pair_intervals_and_false_positives_1000_experiments():
    sim = _pair_simulation(1000, 999)
    assert 0.93 <= sim["coverage"] <= 0.97, sim
    assert 0.03 <= sim["raw_fp"] <= 0.07, sim
    assert sim["holm_fp"] <= sim["raw_fp"] and sim["holm_fp"] <= 0.055, sim


def test_detects_a_real_difference_and_names_the_better_system():
    clips = _systems(np.random.default_rng(1), {"S001": 3.0, "S002": 3.8}, 30)
    result = compare(clips, resamples=999)
    (pair,) = result["pairs"]["mi"]
    assert pair["verdict"] == "S002 > S001" and pair["paired"] and pair["shared_prompts"] == 30
    assert result["ranks"]["mi"]["S002"]["p_first"] > 0.95
    assert result["inputs"]["unit"] == "prompt"
    assert "prompts per system" in result["power"]["mi"]["line"]


# ------------------------------------------------------------------------------------ degenerate / API


def test_deterministic_for_a_seed():
    clips = _systems(np.random.default_rng(2), {"S001": 3.0, "S002": 3.1, "S003": 3.2}, 12)
    first, second = compare(clips, resamples=300, seed=4), compare(clips, resamples=300, seed=4)
    assert json.dumps(first) == json.dumps(second)
    assert json.dumps(compare(clips, resamples=300, seed=5)) != json.dumps(first)


def test_degenerate_systems_give_statements_not_errors():
    rng = np.random.default_rng(3)
    clips = _systems(rng, {"S001": 3.0, "S002": 3.5}, 10)
    clips.append(_clip("S003", 1, 2.0))  # one clip
    clips += [_clip("S004", p, math.nan, math.nan, error="decode failed") for p in range(3)]  # all failed
    result = compare(clips, resamples=300)
    json.dumps(result, allow_nan=False)  # no NaN anywhere
    assert result["systems"]["S004"]["failed"] == 3 and result["systems"]["S004"]["mi"]["mean"] is None
    assert result["systems"]["S003"]["mi"]["ci_low"] is None
    assert "S004" not in result["ranks"]["mi"]
    assert any("S004 has no scored clip" in n for n in result["notes"])
    assert any("S003 has one scored clip" in n for n in result["notes"])
    for pair in result["pairs"]["mi"]:
        assert pair["verdict"] in (NO_DIFFERENCE, f"{pair['a']} > {pair['b']}", f"{pair['b']} > {pair['a']}")
        if "S003" in (pair["a"], pair["b"]):
            assert pair["verdict"] == NO_DIFFERENCE and "too few" in pair["note"]


def test_no_shared_prompts_resamples_clips_unpaired():
    clips = _systems(np.random.default_rng(4), {"S001": 3.0, "S002": 4.0}, 15, shared=False)
    result = compare(clips, resamples=500)
    assert result["inputs"]["unit"] == "clip"
    (pair,) = result["pairs"]["mi"]
    assert not pair["paired"] and pair["second_test"] == "Mann-Whitney U"
    assert pair["verdict"] == "S002 > S001"
    assert any("No prompt was given to two systems" in n for n in result["notes"])


def test_baseline_compares_each_system_with_it_only():
    clips = _systems(np.random.default_rng(5), {"S001": 3.0, "S002": 3.1, "S003": 3.2}, 8)
    result = compare(clips, baseline="S002", metrics=("mi",), resamples=200)
    assert [(p["a"], p["b"]) for p in result["pairs"]["mi"]] == [("S001", "S002"), ("S003", "S002")]
    with pytest.raises(DeramosError, match="baseline 'S009'"):
        compare(clips, baseline="S009", resamples=200)


def test_pair_mode_is_checked_and_excludes_a_baseline():
    clips = _systems(np.random.default_rng(5), {"S001": 3.0, "S002": 3.1, "S003": 3.2}, 8)
    for bad in ("some", 0, True):
        with pytest.raises(DeramosError, match="--pairs must be one of"):
            compare(clips, pairs=bad, resamples=200)
    with pytest.raises(DeramosError, match="either --baseline or --pairs"):
        compare(clips, baseline="S001", pairs="best", resamples=200)
    parser = argparse.ArgumentParser()
    add_compare_arguments(parser)
    assert parser.parse_args(["s.csv", "--out", "r", "--pairs", "7"]).pairs == 7
    assert parser.parse_args(["s.csv", "--out", "r", "--pairs", "BEST"]).pairs == "best"
    assert parser.parse_args(["s.csv", "--out", "r"]).pairs == "auto"


# ------------------------------------------------------------------------------------------- reading


def test_reads_csv_with_probs_failures_and_system_from_id(tmp_path):
    path = tmp_path / "scores.csv"
    probs = json.dumps([0.05] * 20)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "system", "prompt", "mi", "ta", "error", "mi_probs", "ta_probs", "backend"])
        w.writerow(["audiomos2025-track1-S002_P044", "a.wav", "", "calm piano", "3.5", "4", "", probs, probs, "x"])
        w.writerow(["audiomos2025-track1-S003_P044", "b.wav", "", "calm piano", "", "", "bad wav", "", "", "x"])
        w.writerow(["audiomos2025-track1-S003_P045", "c.wav", "", "", "2.5", "", "empty prompt", "", "", "x"])
    clips = read_scores(path)
    assert [c.system for c in clips] == ["S002", "S003", "S003"]
    assert clips[0].unit == "calm piano" and clips[2].unit == "P045"  # no prompt text: the id's P###
    assert clips[0].probs["mi"].sum() == pytest.approx(1.0)
    assert math.isnan(clips[1].scores["mi"]) and clips[2].scores["mi"] == 2.5 and math.isnan(clips[2].scores["ta"])


def test_reads_jsonl_and_evaluate_predictions(tmp_path):
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text(json.dumps({"id": "x-S001_P001", "system": "S001", "prompt": "p", "mi": 3.0, "ta": None,
                                 "error": "no prompt"}) + "\n")
    (clip,) = read_scores(jsonl)
    assert clip.scores["mi"] == 3.0 and math.isnan(clip.scores["ta"])
    pred = tmp_path / "predictions_test.csv"
    pred.write_text("wav_id,system_id,mi_true,mi_pred,ta_true,ta_pred\n"
                    "audiomos2025-track1-S001_P001,S001,3.2,3.1,4.0,3.9\n")
    (clip,) = read_scores(pred)
    assert clip.scores == {"mi": 3.1, "ta": 3.9} and clip.labels == {"mi": 3.2, "ta": 4.0}


def _invalid_rows_file(tmp_path):
    """S001: 6 good clips. S002: 6 prompts with a NaN, an inf, 7.5, 0.2, a failed clip and one good clip."""
    path = tmp_path / "scores.csv"
    rows = [[f"x-S001_P{p:03d}", "S001", f"prompt {p}", f"{3 + 0.1 * p:.2f}", "3.5", ""] for p in range(6)]
    rows += [["x-S002_P000", "S002", "prompt 0", "nan", "3.0", ""],
             ["x-S002_P001", "S002", "prompt 1", "3.2", "inf", ""],
             ["x-S002_P002", "S002", "prompt 2", "7.5", "-inf", ""],
             ["x-S002_P003", "S002", "prompt 3", "0.2", "", ""],
             ["x-S002_P004", "S002", "prompt 4", "", "", "decode failed"],
             ["x-S002_P005", "S002", "prompt 5", "5.0000000000001", "1", ""]]  # rounding above 5 is fine
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["id", "system", "prompt", "mi", "ta", "error"], *rows])
    return path


def test_nan_infinite_and_out_of_range_scores_are_counted_per_system(tmp_path):
    result = compare(_invalid_rows_file(tmp_path), resamples=200)
    s1, s2 = result["systems"]["S001"], result["systems"]["S002"]
    assert (s1["invalid"], s1["mi"]["invalid"], s1["ta"]["invalid"], s1["failed"]) == (0, 0, 0, 0)
    assert (s2["clips"], s2["invalid"], s2["failed"]) == (6, 4, 1)
    assert (s2["mi"]["invalid"], s2["ta"]["invalid"]) == (3, 2)
    assert (s2["mi"]["n"], s2["ta"]["n"]) == (2, 2)  # only the valid scores are used
    assert s2["mi"]["mean"] == pytest.approx((3.2 + 5.0000000000001) / 2)
    (mi_note,) = [n for n in result["notes"] if n.startswith("MI: 3 row(s) have an invalid score")]
    assert "S002 (3)" in mi_note and "x-S002_P000 = nan" in mi_note
    assert any(n.startswith("TA: 2 row(s) have an invalid score") for n in result["notes"])
    json.dumps(result, allow_nan=False)


def test_invalid_scores_in_jsonl_and_in_clip_lists(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"id": f"x-S001_P00{p}", "prompt": f"p{p}", "mi": mi}) + "\n"
                            for p, mi in enumerate([3.0, float("nan"), None, 3.4])))  # NaN is written as NaN
    clips = read_scores(path)
    assert [c.invalid for c in clips] == [{}, {"mi": "nan"}, {}, {}]
    clips.append(_clip("S002", 1, math.inf))
    result = compare(clips, metrics=("mi",), resamples=200)
    assert result["systems"]["S001"]["invalid"] == 1 and result["systems"]["S001"]["failed"] == 1
    assert result["systems"]["S002"]["invalid"] == 1 and result["systems"]["S002"]["mi"]["n"] == 0
    assert math.isinf(clips[-1].scores["mi"])  # the caller's clip is left as it was


@pytest.mark.parametrize("text, message", [
    ("id,mi\n,3\n", "no clip id"),
    ("id,mi\nx-S001_P001,abc\n", "not a number"),
    ("id,mi\nx-S001_P001,3\nx-S001_P001,3\n", "appears twice"),
    ("id,mi\nnosystem,3\n", "no system id"),
])
def test_bad_score_files_name_the_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DeramosError, match=message):
        read_scores(path)
    with pytest.raises(DeramosError, match="must end in"):
        read_scores(tmp_path / "x.txt") if (tmp_path / "x.txt").write_text("a") else None


def test_labels_give_metrics_with_intervals(tmp_path):
    rng = np.random.default_rng(6)
    clips = _systems(rng, {"S001": 2.5, "S002": 3.0, "S003": 3.5, "S004": 4.0}, 10)
    lines = [f"{c.id}.wav,{c.scores['mi'] + rng.normal(0, 0.3):.1f},{c.scores['ta']:.1f}" for c in clips]
    (tmp_path / "mos.txt").write_text("\n".join(lines) + "\n")
    assert len(read_labels(tmp_path / "mos.txt")) == 40
    result = compare(clips, labels=tmp_path / "mos.txt", metrics=("mi",), resamples=100)
    entry = result["labels"]["mi"]
    assert entry["clips"] == 40 and entry["point"]["system"]["SRCC"] == pytest.approx(1.0)
    low, high = entry["ci"]["utterance"]["LCC"]
    assert low <= entry["point"]["utterance"]["LCC"] <= high
    with pytest.raises(DeramosError, match="no clip id"):
        compare(clips, labels={"other": {"mi": 3.0, "ta": 3.0}}, resamples=200)
