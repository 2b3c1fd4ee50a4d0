"""AudioMOS-2025-style evaluation metrics and the paper's checkpoint selection rule.

For one dimension (MI or TA) at two levels: utterance (per clip) and system (the mean prediction per
system id against the mean true MOS per system id). Each level reports MSE, LCC (Pearson), SRCC (Spearman)
and KTAU (Kendall tau-b, scipy's default variant, which corrects for ties).

Degenerate inputs do not raise and do not emit scipy warnings: a correlation is NaN when it is undefined,
i.e. fewer than two items (e.g. a single system) or a constant side (e.g. a collapsed model predicting one
value); MSE is NaN only for an empty input. ``selection_score`` maps NaN to -inf so that checkpoint
selection never prefers such an epoch.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence

import numpy as np

from deramos_rt.errors import DeramosError

# S### as its own token (after start/-/_ and not followed by a further digit), e.g. "...-track1-S002_P044".
_SYSTEM = re.compile(r"(?:^|[-_/])(S\d{3})(?!\d)")
_NAN_LEVEL = {"LCC": math.nan, "SRCC": math.nan, "KTAU": math.nan}


def system_id(wav_id: str) -> str:
    """The system id ``S###`` of a MusicEval wav id.

    Args:
        wav_id: e.g. ``audiomos2025-track1-S002_P044`` or ``audiomos2025-track1-S002_P044.wav``.

    Returns:
        e.g. ``"S002"``.

    Raises:
        DeramosError: the id has no ``S###`` part.
    """
    match = _SYSTEM.search(wav_id)
    if match is None:
        raise DeramosError(f"no system id S### in wav id {wav_id!r}; MusicEval ids look like "
                           "audiomos2025-track1-S002_P044(.wav)")
    return match.group(1)


def _level(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """MSE, LCC, SRCC, KTAU of aligned 1-D arrays; undefined correlations are NaN."""
    from scipy import stats

    mse = float(np.mean((pred - true) ** 2)) if true.size else math.nan
    if true.size < 2 or np.ptp(pred) == 0 or np.ptp(true) == 0:
        return {"MSE": mse, **_NAN_LEVEL}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NaNs inside the inputs: scipy warns and returns NaN, which we keep
        return {
            "MSE": mse,
            "LCC": float(stats.pearsonr(true, pred)[0]),
            "SRCC": float(stats.spearmanr(true, pred)[0]),
            "KTAU": float(stats.kendalltau(true, pred, variant="b")[0]),
        }


def mos_metrics(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray,
                system_ids: Sequence[str] | np.ndarray) -> dict[str, dict[str, float]]:
    """Utterance- and system-level metrics for one dimension (MI or TA).

    Args:
        pred: (N,) predicted MOS per clip.
        true: (N,) true MOS per clip.
        system_ids: (N,) system id per clip (``S###``, see ``system_id``).

    Returns:
        ``{"utterance": {"MSE", "LCC", "SRCC", "KTAU"}, "system": {...}}`` as floats. System level compares,
        over the distinct system ids, the mean prediction with the mean true MOS.

    Raises:
        DeramosError: the three inputs differ in length.
    """
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    true = np.asarray(true, dtype=np.float64).reshape(-1)
    systems = np.asarray(system_ids).reshape(-1)
    if not pred.size == true.size == systems.size:
        raise DeramosError(f"metrics need equal lengths, got {pred.size} predictions, {true.size} labels, "
                           f"{systems.size} system ids")
    _, index = np.unique(systems, return_inverse=True)
    counts = np.bincount(index)
    sys_pred = np.bincount(index, weights=pred) / counts if pred.size else pred
    sys_true = np.bincount(index, weights=true) / counts if true.size else true
    return {"utterance": _level(pred, true), "system": _level(sys_pred, sys_true)}


def selection_score(mi_metrics: dict, ta_metrics: dict) -> float:
    """The paper's checkpoint selection rule: (utterance MI SRCC + system TA SRCC) / 2.

    Args:
        mi_metrics, ta_metrics: ``mos_metrics`` results for MI and TA on the dev split.

    Returns:
        The score, or ``float("-inf")`` when it is NaN, so a NaN epoch is never selected.
    """
    score = (mi_metrics["utterance"]["SRCC"] + ta_metrics["system"]["SRCC"]) / 2
    return float("-inf") if math.isnan(score) else float(score)
