import math

import numpy as np
import pytest
from scipy import stats

from deramos_rt.errors import DeramosError
from training.metrics import mos_metrics, selection_score, system_id


def test_utterance_metrics_match_scipy():
    rng = np.random.default_rng(0)
    true = np.round(rng.uniform(1, 5, 50) / 0.2) * 0.2
    pred = true + rng.normal(0, 0.5, 50)
    m = mos_metrics(pred, true, ["S001"] * 25 + ["S002"] * 25)["utterance"]
    assert m["MSE"] == pytest.approx(np.mean((pred - true) ** 2))
    assert m["LCC"] == pytest.approx(stats.pearsonr(true, pred)[0])
    assert m["SRCC"] == pytest.approx(stats.spearmanr(true, pred)[0])
    assert m["KTAU"] == pytest.approx(stats.kendalltau(true, pred, variant="b")[0])


def test_system_level_is_mean_per_system_by_hand():
    pred = [1.0, 3.0, 4.0, 4.0, 2.0]
    true = [2.0, 2.0, 5.0, 3.0, 1.0]
    m = mos_metrics(pred, true, ["S001", "S001", "S002", "S002", "S003"])["system"]
    # system means: pred [2, 4, 2], true [2, 4, 1] -> MSE = 1/3
    assert m["MSE"] == pytest.approx(1 / 3)
    assert m["SRCC"] == pytest.approx(stats.spearmanr([2, 4, 1], [2, 4, 2])[0])


def test_degenerate_inputs_give_nan_and_selection_never_picks_nan():
    m = mos_metrics([3.0, 3.0, 3.0], [1.0, 2.0, 3.0], ["S001", "S001", "S001"])
    assert math.isnan(m["utterance"]["SRCC"]) and math.isnan(m["system"]["LCC"])
    assert selection_score(m, m) == -math.inf
    good = {"utterance": {"SRCC": 0.8}, "system": {"SRCC": 0.6}}
    assert selection_score(good, good) == pytest.approx(0.7)


def test_system_id_and_length_errors():
    assert system_id("audiomos2025-track1-S002_P044.wav") == "S002"
    with pytest.raises(DeramosError, match="no system id"):
        system_id("clip_001")
    with pytest.raises(DeramosError, match="equal lengths"):
        mos_metrics([1.0], [1.0, 2.0], ["S001"])
