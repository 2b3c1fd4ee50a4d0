"""Vectorised resampling for ``deramos-rt compare``: many bootstrap intervals and permutation tests at once.

Rows that share a design (the same number of observations) share one matrix of resamples: bootstrap
counts (how often each observation is drawn), permutation signs, or label selections. A row's resampled
statistic is then a matrix product, so hundreds of pairs cost about as much as one, and every working
array is cut into blocks of about ``BLOCK`` float64 elements, which bounds memory whatever the sizes.

The formulas are those of ``scipy.stats.bootstrap`` (BCa) and ``scipy.stats.permutation_test`` (Monte
Carlo p-values with the +1 correction; exact enumeration when that is not more than the resamples). The
bootstrap draws are scipy's own (the same generator calls), so a row gets the interval scipy gives it from
the same seed; permutations are drawn as sign bits or random splits, so Monte Carlo p-values agree with
scipy's within their sampling error and exact ones exactly (tests/runtime/test_compare_vectorised.py).
Only numpy at import time; scipy.special loads when an interval is computed.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)

BLOCK = 2_000_000  # float64 elements in one working array (16 MB)
CACHED_BLOCKS = 4  # bootstrap counts up to 64 MB are kept, not redrawn, while rows are done in chunks
LEVEL = 0.95
PROGRESS_SECONDS = 5.0
_SIGNS = np.array([1.0, -1.0])

Blocks = Callable[[], Iterator[np.ndarray]]


class Progress:
    """Log ``label: done / total (percent), seconds, time left`` every ``PROGRESS_SECONDS`` and at the end."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.done = label, max(int(total), 1), 0
        self.start = self.last = time.perf_counter()

    def add(self, amount: int) -> None:
        """Count ``amount`` more units of work; log when due."""
        self.done += int(amount)
        now = time.perf_counter()
        if self.done >= self.total or now - self.last >= PROGRESS_SECONDS:
            self.last, done, spent = now, min(self.done, self.total), now - self.start
            left = f", about {spent * (self.total - done) / done:.0f} s left" if 0 < done < self.total else ""
            log.info("%s: %s / %s (%d %%), %.1f s%s", self.label, f"{done:,}", f"{self.total:,}",
                     100 * done // self.total, spent, left)


# -------------------------------------------------------------------------------------------- draws


def _replayable(rng: np.random.Generator, draw: Callable[[np.random.Generator, int], np.ndarray],
                total: int, rows: int) -> Blocks:
    """Blocks of ``rows`` resamples (``total`` in all) drawn by ``draw(generator, size)``.

    Each call of the returned function replays the same blocks from ``rng``'s state at this moment, so a
    caller can go over them once per chunk of its own rows; ``rng`` ends where one pass leaves it. Up to
    ``CACHED_BLOCKS`` blocks are kept instead of replayed.
    """
    state = copy.deepcopy(rng.bit_generator.state)

    def blocks(generator: np.random.Generator) -> Iterator[np.ndarray]:
        for start in range(0, total, rows):
            yield draw(generator, min(rows, total - start))

    cached = list(blocks(rng)) if total <= rows * CACHED_BLOCKS else None
    if cached is None:
        for _ in blocks(rng):  # advance the caller's generator past the draws, as one pass would
            pass

    def replay() -> Iterator[np.ndarray]:
        if cached is not None:
            yield from cached
            return
        generator = np.random.Generator(type(rng.bit_generator)())
        generator.bit_generator.state = copy.deepcopy(state)
        yield from blocks(generator)

    return replay


def counts_from_indices(indices: np.ndarray, n: int) -> np.ndarray:
    """(R, n) float64: how often each of n observations appears in each row of drawn indices."""
    rows = indices.shape[0]
    flat = (indices + (np.arange(rows) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def bootstrap_counts(rng: np.random.Generator, n: int, resamples: int) -> Blocks:
    """Replayable blocks of bootstrap counts, drawn as ``scipy.stats.bootstrap`` draws indices."""
    rows = max(1, BLOCK // n)
    return _replayable(rng, lambda g, size: counts_from_indices(g.integers(0, n, (size, n)), n),
                       resamples, rows)


# ------------------------------------------------------------------------------------------ intervals


def _lerp_quantiles(ordered: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-row linear-interpolation quantile (numpy's default method) of rows sorted ascending."""
    position = q * (ordered.shape[1] - 1)
    low = np.clip(np.floor(position).astype(np.int64), 0, ordered.shape[1] - 1)
    high = np.minimum(low + 1, ordered.shape[1] - 1)
    rows = np.arange(ordered.shape[0])
    a, b, t = ordered[rows, low], ordered[rows, high], position - low
    return np.where(t < 0.5, a + (b - a) * t, b - (b - a) * (1 - t))


def bca(theta_b: np.ndarray, observed: np.ndarray, jackknives: list[np.ndarray]) -> tuple:
    """95 % BCa intervals per row, as ``scipy.stats.bootstrap(method="BCa")`` computes them.

    Args:
        theta_b: (k, R) bootstrap statistics; sorted in place.
        observed: (k,) the statistic on the data.
        jackknives: per sample of the statistic, (k, n_j) leave-one-out statistics.

    Returns:
        ``(low, high, methods)``: where BCa is undefined (a degenerate jackknife or bootstrap) the row gets
        the percentile interval of the same resamples and the method ``"percentile"``.
    """
    from scipy.special import ndtr, ndtri

    resamples = theta_b.shape[1]
    # A resample equal to the data in theory (e.g. a permutation of it) ties with it whatever the rounding
    # of the matrix product: the tolerance of scipy's permutation_test keeps the tie a tie.
    gamma = (np.finfo(np.float64).eps * 100 * np.abs(observed))[:, None]
    below = np.count_nonzero(theta_b < observed[:, None] - gamma, axis=1)
    at_or_below = np.count_nonzero(theta_b <= observed[:, None] + gamma, axis=1)
    with np.errstate(all="ignore"):
        z0 = ndtri((below + at_or_below) / (2 * resamples))
        nums, dens = 0.0, 0.0
        for jack in jackknives:
            n = float(jack.shape[1])
            u = (n - 1) * (jack.mean(axis=1, keepdims=True) - jack)
            nums = nums + np.sum(u ** 3, axis=1) / n ** 3
            dens = dens + np.sum(u ** 2, axis=1) / n ** 2
        a_hat = nums / dens ** 1.5 / 6
        z = float(ndtri((1 - LEVEL) / 2))
        alpha_1 = ndtr(z0 + (z0 + z) / (1 - a_hat * (z0 + z)))
        alpha_2 = ndtr(z0 + (z0 - z) / (1 - a_hat * (z0 - z)))
    theta_b.sort(axis=1)
    bca_ok = np.isfinite(alpha_1) & np.isfinite(alpha_2)
    alpha_1 = np.where(bca_ok, alpha_1, (1 - LEVEL) / 2)
    alpha_2 = np.where(bca_ok, alpha_2, (1 + LEVEL) / 2)
    low, high = _lerp_quantiles(theta_b, alpha_1), _lerp_quantiles(theta_b, alpha_2)
    return low, high, np.where(bca_ok, "BCa", "percentile")


def row_chunks(k: int, width: int) -> Iterator[slice]:
    """Slices of k rows such that a (rows, width) block stays within ``BLOCK`` elements."""
    step = max(1, BLOCK // max(width, 1))
    for start in range(0, k, step):
        yield slice(start, min(k, start + step))


def ratio_intervals(sums: np.ndarray, counts: np.ndarray, rng: np.random.Generator, resamples: int,
                    label: str | None = None) -> tuple:
    """BCa intervals of sum(sums) / sum(counts) per row, resampling the n columns (units) with replacement.

    A row of per-unit sums over clip counts gives a system's mean over clips with its prompts resampled;
    a row of paired differences with counts 1 gives the mean difference. All rows share the resamples.

    Args:
        sums, counts: (k, n), counts > 0.
        rng: numpy Generator.
        resamples: bootstrap resamples.
        label: progress lines name this, counting rows.

    Returns:
        ``(low, high, methods)`` arrays of k.
    """
    k, n = sums.shape
    blocks = bootstrap_counts(rng, n, resamples)
    total_s, total_c = sums.sum(axis=1), counts.sum(axis=1)
    low, high, methods = np.empty(k), np.empty(k), np.empty(k, dtype=object)
    progress = Progress(label, k) if label else None
    for rows in row_chunks(k, resamples):
        theta_b, start = np.empty((rows.stop - rows.start, resamples)), 0
        for weights in blocks():
            stop = start + weights.shape[0]
            theta_b[:, start:stop] = (sums[rows] @ weights.T) / (counts[rows] @ weights.T)
            start = stop
        jack = (total_s[rows, None] - sums[rows]) / (total_c[rows, None] - counts[rows])
        low[rows], high[rows], methods[rows] = bca(theta_b, total_s[rows] / total_c[rows], [jack])
        if progress is not None:
            progress.add(rows.stop - rows.start)
    return low, high, methods


def resampled_means(values: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """(R,) bootstrap means of one sample, drawn as ``scipy.stats.bootstrap`` draws one sample."""
    rows, out = max(1, BLOCK // values.size), np.empty(resamples)
    for start in range(0, resamples, rows):
        size = min(rows, resamples - start)
        out[start:start + size] = values[rng.integers(0, values.size, (size, values.size))].mean(axis=1)
    return out


def leave_one_out_means(values: np.ndarray) -> np.ndarray:
    """The mean of each row of ``values`` without each of its n values in turn (same shape)."""
    return (values.sum(axis=-1, keepdims=True) - values) / (values.shape[-1] - 1)


# ------------------------------------------------------------------------------------------ p-values


def _count_extremes(rows: np.ndarray, observed: np.ndarray, blocks: Iterator[np.ndarray], scale: float,
                    offset: np.ndarray, total: int, exact: bool, progress: Progress | None) -> np.ndarray:
    """Two-sided p-values of ``permutation_test``: the null of a row is ``rows @ block.T * scale + offset``."""
    gamma = np.abs(np.finfo(np.float64).eps * 100 * observed)  # scipy's tolerance for equal statistics
    at_most, at_least = np.zeros(rows.shape[0], np.int64), np.zeros(rows.shape[0], np.int64)
    scaled = rows * scale
    for block in blocks:
        for chunk in row_chunks(rows.shape[0], block.shape[0]):
            null = scaled[chunk] @ block.T + offset[chunk, None]
            at_most[chunk] += np.count_nonzero(null <= (observed + gamma)[chunk, None], axis=1)
            at_least[chunk] += np.count_nonzero(null >= (observed - gamma)[chunk, None], axis=1)
        if progress is not None:
            progress.add(block.shape[0])
    adjustment = 0 if exact else 1
    p = 2 * np.minimum(at_most + adjustment, at_least + adjustment) / (total + adjustment)
    return np.clip(p, 0.0, 1.0)


def _sign_blocks(rng: np.random.Generator, n: int, total: int, exact: bool) -> Iterator[np.ndarray]:
    """(rows, n) blocks of +-1: every sign vector once when exact, else independent fair signs."""
    rows = max(1, BLOCK // n)
    for start in range(0, total, rows):
        size = min(rows, total - start)
        if exact:
            codes = np.arange(start, start + size, dtype=np.int64)
            bits = (codes[:, None] >> np.arange(n)) & 1
        else:
            packed = rng.integers(0, 256, (size, (n + 7) // 8), dtype=np.uint8)
            bits = np.unpackbits(packed, axis=1, count=n)
        yield _SIGNS.take(bits)  # a table look-up: 5x faster than 1 - 2 * bits


def sign_flip_pvalues(diffs: np.ndarray, rng: np.random.Generator, resamples: int,
                      label: str | None = None) -> np.ndarray:
    """Paired permutation test of mean(a - b) per row: flip the sign of each pair's difference.

    Args:
        diffs: (k, n) paired differences, n >= 2; the rows share the sign draws.
        rng: numpy Generator.
        resamples: random sign vectors; all 2 ** n are enumerated when that is not more.
        label: progress lines name this, counting sign vectors.

    Returns:
        (k,) two-sided p-values.
    """
    n = diffs.shape[1]
    exact = n < 63 and 2 ** n <= resamples
    total = 2 ** n if exact else resamples
    return _count_extremes(diffs, diffs.mean(axis=1), _sign_blocks(rng, n, total, exact), 1.0 / n,
                           np.zeros(diffs.shape[0]), total, exact, Progress(label, total) if label else None)


def _selection_blocks(rng: np.random.Generator, n_a: int, n: int, total: int,
                      exact: bool) -> Iterator[np.ndarray]:
    """(rows, n) 0/1 blocks marking which pooled observations form sample a (n_a of n)."""
    rows = max(1, BLOCK // n)
    combos = itertools.combinations(range(n), n_a) if exact else None
    for start in range(0, total, rows):
        size = min(rows, total - start)
        block = np.zeros((size, n))
        if exact:
            chosen = np.array(list(itertools.islice(combos, size)), dtype=np.int64).reshape(size, n_a)
        else:
            chosen = np.argpartition(rng.random((size, n)), n_a - 1, axis=1)[:, :n_a] if n_a < n else None
        if chosen is None:
            block[:] = 1.0
        else:
            block[np.arange(size)[:, None], chosen] = 1.0
        yield block


def label_shuffle_pvalues(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, resamples: int,
                          label: str | None = None) -> np.ndarray:
    """Independent-samples permutation test of mean(a) - mean(b) per row: shuffle the labels.

    Args:
        a: (k, n_a) and b: (k, n_b) samples (every row the same sizes); the rows share the shuffles.
        rng: numpy Generator.
        resamples: random shuffles; all C(n_a + n_b, n_a) splits are enumerated when that is not more.
        label: progress lines name this, counting shuffles.

    Returns:
        (k,) two-sided p-values.
    """
    n_a, n_b = a.shape[1], b.shape[1]
    pooled = np.concatenate([a, b], axis=1)
    exact = math.comb(n_a + n_b, n_a) <= resamples
    total = math.comb(n_a + n_b, n_a) if exact else resamples
    observed = a.mean(axis=1) - b.mean(axis=1)
    # mean(chosen) - mean(rest) = sum(chosen) * (1/n_a + 1/n_b) - sum(all) / n_b
    return _count_extremes(pooled, observed, _selection_blocks(rng, n_a, n_a + n_b, total, exact),
                           1.0 / n_a + 1.0 / n_b, -pooled.sum(axis=1) / n_b, total, exact,
                           Progress(label, total) if label else None)
