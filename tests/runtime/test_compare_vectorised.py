"""The vectorised resampling of ``compare`` against the per-pair scipy loop it replaced, seeded."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import stats

from deramos_rt import compare_resampling
from deramos_rt.compare import _paired_tests, compare, difference, holm, verdict
from deramos_rt.compare_resampling import label_shuffle_pvalues, ratio_intervals, sign_flip_pvalues
from tests.runtime.test_compare import _systems


def _paired_stat(a, b, axis=-1):
    return np.mean(a - b, axis=axis)


def _mean_diff(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def _old_pair(a, b, paired: bool, resamples: int, seed: int) -> tuple[float, float, float]:
    """The loop before vectorising, for one pair: scipy's BCa interval, then scipy's permutation test."""
    rng = np.random.default_rng(seed)
    stat = _paired_stat if paired else _mean_diff
    ci = stats.bootstrap((a, b), stat, n_resamples=resamples, method="BCa", paired=paired, rng=rng)
    perm = stats.permutation_test((a, b), stat, permutation_type="samples" if paired else "independent",
                                  n_resamples=resamples, rng=rng)
    return float(ci.confidence_interval.low), float(ci.confidence_interval.high), float(perm.pvalue)


def _mc_close(p: float, reference: float, resamples: int) -> bool:
    """Two Monte Carlo p-values of the same test agree within their sampling error."""
    sd = np.sqrt(max(reference * (1 - reference), 1e-4) / resamples)
    return abs(p - reference) <= 5 * sd + 2 / resamples


def _pair_rows(rng, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.normal(3.0, 0.6, (k, n))
    b = a + rng.normal(0.0, 0.4, (k, n)) + np.linspace(-0.4, 0.4, k)[:, None]
    return a, b


# 2 ** 8 sign vectors are enumerated, 2 ** 40 sampled. With 8 prompts some bootstrap resamples are
# permutations of the data and tie with it: a matrix product rounds them differently from scipy's mean,
# and the tolerance in bca() keeps them ties (without it the interval moved by 4e-4 here).
@pytest.mark.parametrize("n", [8, 40])
def test_pairs_done_together_get_each_pairs_own_scipy_interval_and_p(n):
    a, b = _pair_rows(np.random.default_rng(n), 6, n)
    a[5] = b[5]  # an identical pair: zero-width interval, p = 1, nothing for the rank test to detect
    out = _paired_tests(a - b, 999, 999, np.random.default_rng(3))
    for i, row in enumerate(out[:5]):
        low, high, p = _old_pair(a[i], b[i], True, 999, seed=3)  # every row sees the first draw of seed 3
        assert row["method"] == "BCa"
        assert row["ci_low"] == pytest.approx(low, abs=1e-12) and row["ci_high"] == pytest.approx(high, abs=1e-12)
        assert row["p"] == p if n == 8 else _mc_close(row["p"], p, 999), (row["p"], p)
        assert row["p_second"] == pytest.approx(stats.wilcoxon(a[i], b[i]).pvalue, abs=1e-12)
    assert (out[5]["method"], out[5]["ci_low"], out[5]["p"], out[5]["p_second"]) == ("constant", 0.0, 1.0, 1.0)


@pytest.mark.parametrize("sizes", [(4, 5), (30, 25)])  # C(9, 4) = 126 splits are enumerated; C(55, 30) not
def test_unpaired_difference_is_scipys(sizes):
    rng = np.random.default_rng(sum(sizes))
    a, b = rng.normal(3.0, 0.5, sizes[0]), rng.normal(3.4, 0.5, sizes[1])
    out = difference(a, b, False, 999, np.random.default_rng(8))
    low, high, p = _old_pair(a, b, False, 999, seed=8)
    assert out["ci_low"] == pytest.approx(low, abs=1e-12) and out["ci_high"] == pytest.approx(high, abs=1e-12)
    assert out["p"] == p if sizes == (4, 5) else _mc_close(out["p"], p, 999), (out["p"], p)
    assert out["p_second"] == pytest.approx(stats.mannwhitneyu(a, b).pvalue, abs=1e-12)


def _old_verdicts(clips, metric: str, resamples: int) -> dict[tuple[str, str], str]:
    """All pairs the old way: one scipy permutation test per pair on shared prompts, Holm, verdict."""
    by_system: dict[str, dict[str, float]] = {}
    for clip in clips:
        by_system.setdefault(clip.system, {})[clip.unit] = clip.scores[metric]
    names = sorted(by_system)
    pairs = [(x, y) for i, x in enumerate(names) for y in names[i + 1:]]
    diffs, p_values = [], []
    for seed, (x, y) in enumerate(pairs):
        units = sorted(by_system[x])
        a, b = np.array([by_system[x][u] for u in units]), np.array([by_system[y][u] for u in units])
        diffs.append(a.mean() - b.mean())
        p_values.append(_old_pair(a, b, True, resamples, seed)[2])
    return {pair: verdict(*pair, d, p) for pair, d, p in zip(pairs, diffs, holm(p_values))}


def test_same_verdicts_as_the_old_loop_on_a_small_case():
    clips = _systems(np.random.default_rng(21), {"S001": 3.0, "S002": 3.0, "S003": 3.5, "S004": 3.9}, 25)
    result = compare(clips, metrics=("mi",), resamples=2000)
    ours = {(p["a"], p["b"]): p["verdict"] for p in result["pairs"]["mi"]}
    assert ours == _old_verdicts(clips, "mi", 2000)
    assert ours[("S001", "S002")] != ours[("S001", "S004")]  # the case holds both kinds of verdict


def test_blocks_bound_memory_without_changing_any_rows_numbers(monkeypatch):
    """Rows done in many small blocks (bootstrap counts replayed per chunk of rows) get the numbers each row
    gets alone from the same seed."""
    monkeypatch.setattr(compare_resampling, "BLOCK", 700)
    monkeypatch.setattr(compare_resampling, "CACHED_BLOCKS", 1)
    a, b = _pair_rows(np.random.default_rng(1), 5, 30)
    d = a - b
    together = ratio_intervals(d, np.ones_like(d), np.random.default_rng(4), 400)
    p_together = sign_flip_pvalues(d, np.random.default_rng(4), 500)
    p_shuffled = label_shuffle_pvalues(a, b, np.random.default_rng(4), 500)
    for i in range(5):
        alone = ratio_intervals(d[i:i + 1], np.ones((1, 30)), np.random.default_rng(4), 400)
        assert [x[i] for x in together] == [x[0] for x in alone]
        assert p_together[i] == sign_flip_pvalues(d[i:i + 1], np.random.default_rng(4), 500)[0]
        assert p_shuffled[i] == label_shuffle_pvalues(a[i:i + 1], b[i:i + 1], np.random.default_rng(4), 500)[0]


def test_progress_lines_name_each_stage(caplog):
    clips = _systems(np.random.default_rng(2), {"S001": 3.0, "S002": 3.4, "S003": 3.1}, 20)
    with caplog.at_level(logging.INFO, logger="deramos_rt"):
        compare(clips, metrics=("mi",), resamples=300)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("deramos_rt.compare")]
    assert any(line.startswith("compare: 60 clips, 3 systems") for line in lines), lines
    assert any(line.startswith("MI: system intervals: 3 / 3 (100 %)") for line in lines), lines
    assert any(line.startswith("MI: 3 pairs (all), Holm over 3") for line in lines), lines
    assert any(line.startswith("MI: permutations for 3 paired pair(s):") and "(100 %)" in line
               for line in lines), lines
    assert any(line.startswith("MI: ranks from 300 joint resamples") for line in lines), lines
