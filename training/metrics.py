"""AudioMOS-2025 metrics: MSE, LCC (Pearson), SRCC (Spearman), KTAU (Kendall tau-b), per clip and per system.

System level: the mean prediction per system id against the mean true MOS per system id. A correlation
that is undefined (constant input, fewer than two items) is NaN, never an exception.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np

from deramos_rt.errors import DeramosError

_SYSTEM = re.compile(r"(S\d{3})")


def system_id(wav_id: str) -> str:
    """``S###`` from a MusicEval wav id such as ``audiomos2025-track1-S002_P044(.wav)``."""
    match = _SYSTEM.search(wav_id)
    if match is None:
        raise DeramosError(f"no system id S### in wav id {wav_id!r}")
    return match.group(1)


def _level(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    from scipy import stats

    out = {"MSE": float(np.mean((pred - true) ** 2)) if len(true) else math.nan}
    degenerate = len(true) < 2 or np.ptp(pred) == 0 or np.ptp(true) == 0
    if degenerate:
        return {**out, "LCC": math.nan, "SRCC": math.nan, "KTAU": math.nan}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["LCC"] = float(stats.pearsonr(true, pred)[0])
        out["SRCC"] = float(stats.spearmanr(true, pred)[0])
        out["KTAU"] = float(stats.kendalltau(true, pred)[0])  # variant "b": tie-corrected
    return out


def mos_metrics(pred, true, system_ids) -> dict[str, dict[str, float]]:
    """``{"utterance": {MSE, LCC, SRCC, KTAU}, "system": {...}}`` for one dimension (MI or TA).

    Args:
        pred, true: per-clip predicted and true MOS.
        system_ids: per-clip system id (``S###``).
    """
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    systems = np.asarray(system_ids)
    if not (len(pred) == len(true) == len(systems)):
        raise DeramosError(f"metrics need equal lengths, got {len(pred)} predictions, {len(true)} labels, "
                           f"{len(systems)} system ids")
    names = sorted(set(systems.tolist()))
    sys_pred = np.array([pred[systems == s].mean() for s in names])
    sys_true = np.array([true[systems == s].mean() for s in names])
    return {"utterance": _level(pred, true), "system": _level(sys_pred, sys_true)}


def selection_score(mi: dict, ta: dict) -> float:
    """The paper's checkpoint rule: (utterance MI SRCC + system TA SRCC) / 2; NaN counts as -inf."""
    score = (mi["utterance"]["SRCC"] + ta["system"]["SRCC"]) / 2
    return -math.inf if math.isnan(score) else float(score)
