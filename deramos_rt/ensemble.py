"""The arithmetic of ensembles: members' outputs -> one score per clip and the members' spread.

An ensemble bundle's graphs give every output a member axis (``deramos_rt.bundle``): distributions
``(..., M, K)`` for distribution heads, scores ``(..., M)`` for scalar heads. A clip's ensemble MI / TA is
the expected score of the mean of the members' distributions (scalar heads: the mean of their scores;
both equal the mean of the members' expected scores), and its uncertainty is the standard deviation of
the members' scores (ddof 0). One model is an ensemble of one (:func:`add_member_axis`), with no spread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deramos_rt.errors import DeramosError


@dataclass(frozen=True)
class Combined:
    """Ensemble outputs of a batch.

    Attributes:
        score: (...,) float64 expected score of the mean distribution (scalar heads: the mean score).
        probs: (..., K) float64 mean distribution; None for scalar heads.
        std: (...,) float64 standard deviation of the members' scores (ddof 0); None for one member.
        members: (..., M) float64 each member's own score.
    """

    score: np.ndarray
    probs: np.ndarray | None
    std: np.ndarray | None
    members: np.ndarray


def _check(values: np.ndarray, bins: np.ndarray | None) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    least = 2 if bins is not None else 1
    if values.ndim < least:
        raise DeramosError(f"ensemble outputs need a member axis: got shape {values.shape} for "
                           f"{'distribution' if bins is not None else 'scalar'} heads")
    if bins is not None and values.shape[-1] != len(bins):
        raise DeramosError(f"ensemble distributions have {values.shape[-1]} bins, the bundle has {len(bins)}")
    return values


def member_scores(values: np.ndarray, bins: np.ndarray | None) -> np.ndarray:
    """Each member's score: ``values (..., M, K) @ bins`` for distribution heads, ``values (..., M)`` as is.

    Args:
        values: the graph output with its member axis.
        bins: the bin centres (K,), or None for scalar heads.

    Returns:
        (..., M) float64.
    """
    values = _check(values, bins)
    return _expected(values, bins) if bins is not None else values


def _expected(probs: np.ndarray, bins: np.ndarray) -> np.ndarray:
    # An elementwise product summed per row, not a BLAS matmul: BLAS may sum rows of one call in different
    # orders, which would give identical members (or one clip in two batches) scores an ulp apart.
    return np.sum(probs * np.asarray(bins, dtype=np.float64), axis=-1)


def combine(values: np.ndarray, bins: np.ndarray | None) -> Combined:
    """Combine the members of a batch of outputs (see the module docstring).

    Args:
        values: ``(..., M, K)`` distributions (``bins`` given) or ``(..., M)`` scores (``bins`` None).
        bins: the bin centres, or None for scalar heads.

    Returns:
        :class:`Combined`; ``std`` is None when M is 1.
    """
    values = _check(values, bins)
    scores = member_scores(values, bins)
    std = _spread(scores) if scores.shape[-1] > 1 else None
    if bins is None:
        return Combined(scores.mean(axis=-1), None, std, scores)
    probs = values.mean(axis=-2)
    return Combined(_expected(probs, bins), probs, std, scores)


def _spread(scores: np.ndarray) -> np.ndarray:
    # Members that agree exactly get exactly 0 (a float mean of equal values can be off by an ulp).
    return np.where(np.ptp(scores, axis=-1) == 0, 0.0, scores.std(axis=-1, ddof=0))


def add_member_axis(values: np.ndarray, bins: np.ndarray | None) -> np.ndarray:
    """A single model's outputs as an ensemble of one: (..., K) -> (..., 1, K), or (...,) -> (..., 1).

    Args:
        values: one model's graph output (distributions when ``bins`` is given, else scores).
        bins: the bin centres, or None for scalar heads.
    """
    values = np.asarray(values)
    return values[..., None, :] if bins is not None else values[..., None]
