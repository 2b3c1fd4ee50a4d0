"""AudioMOS-style metrics against scipy and against hand arithmetic; degenerate inputs; selection rule."""

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from deramos_rt.errors import DeramosError
from training.metrics import mos_metrics, selection_score, system_id


def _scipy_level(pred, true):
    return {"MSE": np.mean((np.asarray(pred) - np.asarray(true)) ** 2), "LCC": stats.pearsonr(true, pred)[0],
            "SRCC": stats.spearmanr(true, pred)[0], "KTAU": stats.kendalltau(true, pred, variant="b")[0]}


def test_both_levels_match_scipy_on_random_data():
    rng = np.random.default_rng(0)
    true = np.round(rng.uniform(1, 5, 120) / 0.2) * 0.2  # MOS-like values with many ties
    pred = true + rng.normal(0, 0.6, 120)
    systems = np.array([f"S{k:03d}" for k in rng.integers(1, 9, 120)])
    m = mos_metrics(pred, true, systems.tolist())
    for key, value in _scipy_level(pred, true).items():
        assert m["utterance"][key] == pytest.approx(value, rel=1e-9)
    names = sorted(set(systems))
    sys_pred = [pred[systems == s].mean() for s in names]
    sys_true = [true[systems == s].mean() for s in names]
    for key, value in _scipy_level(sys_pred, sys_true).items():
        assert m["system"][key] == pytest.approx(value, rel=1e-9)


def test_system_level_by_hand():
    pred = [1.0, 3.0, 4.0, 4.0, 2.0]
    true = [2.0, 2.0, 5.0, 3.0, 1.0]
    m = mos_metrics(pred, true, ["S002", "S002", "S001", "S001", "S003"])["system"]
    # Means per system (S001, S002, S003): pred [4, 2, 2], true [4, 2, 1].
    assert m["MSE"] == pytest.approx((0 + 0 + 1) / 3)
    # Deviations from the means 8/3 and 7/3: pred [4, -2, -2]/3, true [5, -1, -4]/3 -> r = 30 / sqrt(24 * 42)
    assert m["LCC"] == pytest.approx(30 / math.sqrt(24 * 42))
    # Ranks pred [3, 1.5, 1.5], true [3, 2, 1]: r = 1.5 / sqrt(1.5 * 2)
    assert m["SRCC"] == pytest.approx(1.5 / math.sqrt(3))
    # Pairs: 2 concordant, 0 discordant, 1 tied in pred only: tau-b = 2 / sqrt((2 + 1) * 2)
    assert m["KTAU"] == pytest.approx(2 / math.sqrt(6))


def test_kendall_is_tau_b_with_ties():
    true, pred = [1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 3.0]
    # 6 pairs: 4 concordant, 0 discordant, 1 tied in true only, 1 tied in pred only.
    # tau-b = 4 / sqrt((4 + 1) * (4 + 1)) = 0.8 (tau-a would be 4 / 6).
    assert mos_metrics(pred, true, ["S001", "S001", "S002", "S002"])["utterance"]["KTAU"] == pytest.approx(0.8)


def test_degenerate_inputs_give_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        flat = mos_metrics([3.0, 3.0, 3.0], [1.0, 2.0, 3.0], ["S001", "S002", "S002"])
        one_system = mos_metrics([1.0, 2.5, 3.0], [1.0, 2.0, 3.0], ["S004"] * 3)
        with_nan = mos_metrics([1.0, math.nan, 3.0], [1.0, 2.0, 3.0], ["S001", "S002", "S003"])
        empty = mos_metrics([], [], [])
    assert all(math.isnan(flat["utterance"][k]) for k in ("LCC", "SRCC", "KTAU"))
    assert flat["utterance"]["MSE"] == pytest.approx((4 + 1 + 0) / 3)
    assert all(math.isnan(one_system["system"][k]) for k in ("LCC", "SRCC", "KTAU"))
    assert one_system["system"]["MSE"] == pytest.approx((6.5 / 3 - 2) ** 2)
    assert one_system["utterance"]["SRCC"] == pytest.approx(1.0)
    assert math.isnan(with_nan["utterance"]["LCC"]) and math.isnan(with_nan["utterance"]["MSE"])
    assert math.isnan(empty["utterance"]["MSE"]) and math.isnan(empty["system"]["SRCC"])


def test_selection_score_rule_and_nan():
    mi = {"utterance": {"SRCC": 0.8}, "system": {"SRCC": 0.1}}
    ta = {"utterance": {"SRCC": 0.2}, "system": {"SRCC": 0.6}}
    assert selection_score(mi, ta) == pytest.approx((0.8 + 0.6) / 2)
    nan_ta = {"utterance": {"SRCC": 0.9}, "system": {"SRCC": math.nan}}
    assert selection_score(mi, nan_ta) == float("-inf")
    flat = mos_metrics([3.0, 3.0], [1.0, 2.0], ["S001", "S002"])
    scores = [selection_score(flat, flat), selection_score(mi, ta)]
    assert scores[0] == float("-inf") and max(range(2), key=scores.__getitem__) == 1


def test_system_id_and_errors():
    assert system_id("audiomos2025-track1-S002_P044") == "S002"
    assert system_id("audiomos2025-track1-S002_P044.wav") == "S002"
    assert system_id("wav/audiomos2025-track1-S031_demo7.wav") == "S031"
    for bad in ("clip_001", "audiomos2025-track1-S02_P044", "audiomos2025-track1-S0021_P044"):
        with pytest.raises(DeramosError, match="no system id"):
            system_id(bad)
    with pytest.raises(DeramosError, match="equal lengths"):
        mos_metrics([1.0], [1.0, 2.0], ["S001"])
