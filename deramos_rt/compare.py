"""Compare text-to-music systems from a score file: means with intervals, pairwise verdicts, ranks.

``deramos-rt compare SCORES --out DIR`` reads the per-clip scores written by ``deramos-rt score`` (CSV or
JSONL) or a ``predictions_<split>.csv`` of ``training.evaluate``, and writes ``DIR/report.html`` (one
self-contained file), ``DIR/report.md`` and ``DIR/results.json``. :func:`compare` returns the numbers that
go to ``results.json``.

Statistics (the methods of scipy.stats, vectorised over pairs in deramos_rt.compare_resampling):

* per system: the mean with a 95 % BCa bootstrap interval. The resampling unit is the prompt when any
  prompt was given to more than one system (clips of one prompt are not independent), else the clip;
* per pair: the mean difference with a 95 % BCa interval, paired on the prompts both systems scored when
  they share at least two, else unpaired; the p-value of a permutation test (sign flips when paired),
  Holm-corrected; Wilcoxon signed-rank (paired) or Mann-Whitney U (unpaired) as a second opinion; the
  verdict follows the corrected p-value;
* which pairs: all of them up to ``AUTO_ALL_SYSTEMS`` systems, else each system against the best (or on
  request all, the best, the top N, or a ``--baseline``). Pairs picked from the data (the best, the top N)
  are corrected over the family of all pairs, so picking them costs no false verdicts; enough
  permutations are drawn for that correction to reach a verdict;
* ranks: one joint bootstrap over the same unit gives each system's probability of ranking first and its
  95 % rank interval;
* the number of prompts per system that would separate the closest pair at 80 % power;
* with human labels: utterance- and system-level MSE / LCC / SRCC / KTAU with percentile intervals.

A score that is NaN, infinite or outside [1, 5] is invalid: left out of every statistic, counted per
system and stated in the notes. Progress goes to the ``deramos.compare`` logger. This module imports numpy
only at import time; scipy and matplotlib load when used.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from deramos_rt.compare_resampling import (BLOCK, bca, counts_from_indices, label_shuffle_pvalues,
                                           leave_one_out_means, ratio_intervals, resampled_means, row_chunks,
                                           sign_flip_pvalues)
from deramos_rt.errors import DeramosError
from deramos_rt.metrics import mos_metrics, system_id
from deramos_rt.scorefile import numbered_rows

log = logging.getLogger(__name__)

METRICS = ("mi", "ta")
ALPHA = 0.05
POWER = 0.8
BIN_CENTRES = np.linspace(1.0, 5.0, 20)
NO_DIFFERENCE = "no detectable difference at this sample size"
LABEL_RESAMPLES = 1000  # each label resample recomputes 16 correlations, so fewer than for the means
SCORE_RANGE = (1.0, 5.0)
_RANGE_SLACK = 1e-6  # a score is the mean of bins 1..5: rounding may put it a hair outside
AUTO_ALL_SYSTEMS = 30  # up to this many systems the default is the full pair table
PAIR_MODES = ("auto", "all", "best")
MAX_PRINTED_VERDICTS = 20
_PROMPT_ID = re.compile(r"_(P\d+)(?:\.wav)?$", re.IGNORECASE)


@dataclass
class Clip:
    """One scored (or failed) clip of a score file."""

    id: str
    system: str
    prompt: str
    unit: str  # the pairing key: the prompt text, or the id's P### when there is no prompt column
    path: str | None
    scores: dict[str, float] = field(default_factory=dict)  # metric -> score; NaN when not scored
    probs: dict[str, np.ndarray | None] = field(default_factory=dict)
    spread: dict[str, float] = field(default_factory=dict)  # an ensemble's members' SD per metric (NaN: none)
    error: str = ""
    labels: dict[str, float] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)  # metric -> the NaN / inf / out-of-range value


# ----------------------------------------------------------------------------------------------- reading


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _float(value, where: str) -> float:
    if _blank(value):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DeramosError(f"{where}: not a number: {value!r}") from None


def _probs(value, where: str) -> np.ndarray | None:
    if _blank(value):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DeramosError(f"{where}: probabilities are not a JSON list: {value[:40]!r}") from None
    probs = np.asarray(value, dtype=np.float64).reshape(-1)
    if probs.size != BIN_CENTRES.size or not np.all(np.isfinite(probs)) or probs.sum() <= 0:
        raise DeramosError(f"{where}: expected {BIN_CENTRES.size} non-negative probabilities, got {probs.size}")
    return probs / probs.sum()


def _rows(path: Path) -> list[tuple[str, dict]]:
    """``(where, row)`` per data row of a CSV or JSONL score file."""
    return numbered_rows(path)


def read_scores(path: str | Path) -> list[Clip]:
    """Read a score file of ``deramos-rt score`` or a ``predictions_<split>.csv`` of ``training.evaluate``.

    Args:
        path: ``.csv`` or ``.jsonl``.

    Returns:
        One :class:`Clip` per row; labels are filled from a predictions file's ``mi_true`` / ``ta_true``.

    Raises:
        DeramosError: missing file, no ``id`` column, a malformed number or probability list, no rows.
    """
    path = Path(path)
    rows = _rows(path)
    if not rows:
        raise DeramosError(f"score file has no rows: {path}")
    clips = [_clip(row, where) for where, row in rows]
    seen: set[str] = set()
    for clip, (where, _) in zip(clips, rows):
        if clip.id in seen:
            raise DeramosError(f"{where}: clip id {clip.id!r} appears twice")
        seen.add(clip.id)
    return clips


def _clip(row: dict, where: str) -> Clip:
    predictions = "wav_id" in row and "mi_pred" in row  # training.evaluate's predictions_<split>.csv
    clip_id = str(row.get("wav_id" if predictions else "id") or "").strip()
    if not clip_id:
        raise DeramosError(f"{where}: no clip id (column 'id')")
    clip_id = clip_id[:-4] if clip_id.lower().endswith(".wav") else clip_id
    system = str(row.get("system_id" if predictions else "system") or "").strip()
    if not system:
        system = system_id(clip_id)
    prompt = str(row.get("prompt") or "").strip()
    match = _PROMPT_ID.search(clip_id)
    unit = prompt or (match.group(1) if match else clip_id)
    clip = Clip(clip_id, system, prompt, unit, str(row.get("path") or "") or None,
                error=str(row.get("error") or "").strip())
    for metric in METRICS:
        raw = row.get(f"{metric}_pred" if predictions else metric)
        clip.scores[metric] = _float(raw, f"{where} {metric}")
        if not _blank(raw) and math.isnan(clip.scores[metric]):  # a written NaN, unlike an empty cell
            clip.invalid[metric] = str(raw).strip()
        clip.probs[metric] = _probs(row.get(f"{metric}_probs"), f"{where} {metric}_probs")
        clip.spread[metric] = _float(row.get(f"{metric}_std"), f"{where} {metric}_std")
        if predictions:
            clip.labels[metric] = _float(row.get(f"{metric}_true"), f"{where} {metric}_true")
    return clip


def read_labels(path: str | Path) -> dict[str, dict[str, float]]:
    """Read a MusicEval mos list (``wavID,MI,TA`` lines, no header) into ``{id: {"mi", "ta"}}``."""
    path = Path(path)
    if not path.is_file():
        raise DeramosError(f"label list not found: {path}")
    labels = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 3 or not fields[0]:
            raise DeramosError(f"{path}:{line_no}: expected 'wavID,MI,TA', got {line!r}")
        name = fields[0][:-4] if fields[0].lower().endswith(".wav") else fields[0]
        labels[name] = {"mi": _float(fields[1], f"{path}:{line_no} MI"),
                        "ta": _float(fields[2], f"{path}:{line_no} TA")}
    if not labels:
        raise DeramosError(f"label list is empty: {path}")
    return labels


def musiceval_labels(root: str | Path, split: str) -> Path:
    """The mos list of one split of a MusicEval-layout folder."""
    path = Path(root) / "sets" / f"{split}_mos_list.txt"
    if not path.is_file():
        raise DeramosError(f"split list not found: {path} (expected sets/{split}_mos_list.txt)")
    return path


# ------------------------------------------------------------------------------------------ statistics


def _clean(value):
    """JSON-safe: NaN / inf become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def holm(p_values: list[float], family: int | None = None) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN.

    Args:
        p_values: raw p-values of the tested hypotheses.
        family: the size of the family when it holds more hypotheses than were tested (pairs picked from
            the data out of all pairs); the untested ones count as not rejected.

    Returns:
        Adjusted p-values in the same order; reject at level a where adjusted p <= a.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, math.nan)
    valid = np.flatnonzero(np.isfinite(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m, running = max(order.size, family or 0), 0.0
    for i, index in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[index]))
        out[index] = running
    return out.tolist()


def _no_interval(values: np.ndarray) -> dict:
    return {"n": int(values.size), "mean": float(values.mean()) if values.size else math.nan,
            "ci_low": math.nan, "ci_high": math.nan, "method": "none", "note": ""}


def _intervals(samples: list[tuple[np.ndarray, np.ndarray | None]], resamples: int, rng,
               label: str | None = None) -> list[dict]:
    """:func:`mean_ci` of many samples; samples with the same number of units share their resamples."""
    results, groups = [], {}
    for i, (values, units) in enumerate(samples):
        values = np.asarray(values, dtype=np.float64)
        result = _no_interval(values)
        results.append(result)
        keys, index = np.unique(np.arange(values.size) if units is None else units, return_inverse=True)
        if keys.size < 2:
            result["note"] = f"{values.size} scored clip(s) from {keys.size} unit: no interval"
        elif np.ptp(values) == 0:
            result.update(ci_low=result["mean"], ci_high=result["mean"], method="constant",
                          note="all scores equal: zero-width interval")
        else:
            # Clips of one prompt move together: resample prompts, the mean stays the mean over clips.
            groups.setdefault(keys.size, []).append(
                (i, np.bincount(index, weights=values), np.bincount(index).astype(np.float64)))
    for members in groups.values():
        low, high, methods = ratio_intervals(np.stack([m[1] for m in members]), np.stack([m[2] for m in members]),
                                             rng, resamples, label)
        for (i, _, _), lo, hi, method in zip(members, low, high, methods):
            results[i].update(ci_low=float(lo), ci_high=float(hi), method=str(method))
    return results


def mean_ci(values: np.ndarray, units: np.ndarray | None, resamples: int, rng) -> dict:
    """The mean of one system's scores with its 95 % bootstrap interval.

    Args:
        values: (N,) scores of the scored clips.
        units: (N,) resampling unit per clip (prompt), or None to resample clips.
        resamples: bootstrap resamples.
        rng: numpy Generator.

    Returns:
        ``{"n", "mean", "ci_low", "ci_high", "method", "note"}``; no interval below two units.
    """
    return _intervals([(values, units)], resamples, rng)[0]


def _test_rows(diff: np.ndarray, n_a: np.ndarray, n_b: np.ndarray, paired: bool) -> list[dict]:
    return [{"diff": float(d), "ci_low": math.nan, "ci_high": math.nan, "method": "none", "p": math.nan,
             "p_second": math.nan, "n_a": int(a), "n_b": int(b),
             "second_test": "Wilcoxon signed-rank" if paired else "Mann-Whitney U"}
            for d, a, b in zip(diff, n_a, n_b)]


def _set_intervals(out: list[dict], rows, low, high, methods) -> None:
    for i, lo, hi, method in zip(rows, low, high, methods):
        out[i].update(ci_low=float(lo), ci_high=float(hi), method=str(method))


def _paired_tests(diffs: np.ndarray, resamples: int, permutations: int, rng, label: str | None = None) -> list[dict]:
    """Paired comparisons of k pairs on the same number of shared prompts; rows are per-prompt a - b.

    All rows share one set of bootstrap resamples and one set of sign flips; the per-row numbers are those
    of ``scipy.stats.bootstrap`` / ``permutation_test`` on that row.
    """
    from scipy import stats

    k, n = diffs.shape
    out = _test_rows(diffs.mean(axis=1), np.full(k, n), np.full(k, n), True)
    if n < 2:
        return out
    spread = np.ptp(diffs, axis=1)
    constant = np.flatnonzero(spread == 0)
    _set_intervals(out, constant, diffs[constant, 0], diffs[constant, 0], ["constant"] * constant.size)
    varying = np.flatnonzero(spread > 0)
    if varying.size:
        _set_intervals(out, varying, *ratio_intervals(diffs[varying], np.ones((varying.size, n)), rng, resamples))
    p = sign_flip_pvalues(diffs, rng, permutations, label)
    for row, d, p_row in zip(out, diffs, p):
        row["p"] = float(p_row)
        # One call per pair: on a 2-D array scipy picks one method (exact or normal) for all rows.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # All differences zero: the rank test is undefined, and there is nothing to detect.
            row["p_second"] = 1.0 if not d.any() else float(stats.wilcoxon(d).pvalue)
    return out


def _unpaired_tests(a: np.ndarray, b: np.ndarray, boot_a: list[np.ndarray], boot_b: list[np.ndarray],
                    permutations: int, rng, label: str | None = None) -> list[dict]:
    """Unpaired comparisons of k pairs with the same sample sizes: rows of a (k, n_a) and b (k, n_b).

    ``boot_a[i]`` / ``boot_b[i]``: independent bootstrap means of row i's two samples (one array per system,
    shared by all its pairs). The label shuffles are shared by the rows.
    """
    from scipy import stats

    k, n_a, n_b = a.shape[0], a.shape[1], b.shape[1]
    mean_a, mean_b = a.mean(axis=1), b.mean(axis=1)
    out = _test_rows(mean_a - mean_b, np.full(k, n_a), np.full(k, n_b), False)
    if min(n_a, n_b) < 2:
        return out
    jack_a = leave_one_out_means(a) - mean_b[:, None]
    jack_b = mean_a[:, None] - leave_one_out_means(b)
    for rows in row_chunks(k, boot_a[0].size):
        theta_b = np.stack([boot_a[i] - boot_b[i] for i in range(rows.start, rows.stop)])
        interval = bca(theta_b, mean_a[rows] - mean_b[rows], [jack_a[rows], jack_b[rows]])
        _set_intervals(out, range(rows.start, rows.stop), *interval)
    constant = np.flatnonzero(np.maximum(np.ptp(a, axis=1), np.ptp(b, axis=1)) == 0)
    _set_intervals(out, constant, mean_a[constant] - mean_b[constant], mean_a[constant] - mean_b[constant],
                   ["constant"] * constant.size)
    p = label_shuffle_pvalues(a, b, rng, permutations, label)
    for i, row in enumerate(out):
        row["p"] = float(p[i])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row["p_second"] = float(stats.mannwhitneyu(a[i], b[i]).pvalue)
    return out


def difference(a: np.ndarray, b: np.ndarray, paired: bool, resamples: int, rng) -> dict:
    """Mean difference a - b with a 95 % BCa interval, a permutation p-value and a rank-test p-value.

    Args:
        a, b: scores (per shared prompt, aligned, when ``paired``; else each system's clips).
        paired: paired on prompts (sign-flip permutations, Wilcoxon signed-rank) or independent samples
            (label permutations, Mann-Whitney U).
        resamples: bootstrap and permutation resamples.
        rng: numpy Generator.

    Returns:
        ``{"diff", "ci_low", "ci_high", "method", "p", "p_second", "second_test", "n_a", "n_b"}``; the
        p-values are NaN when there are fewer than two observations on a side.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if paired:
        (out,) = _paired_tests((a - b)[None, :], resamples, resamples, rng)
        return out
    boots = [resampled_means(x, rng, resamples) for x in (a, b)] if min(a.size, b.size) >= 2 else [None, None]
    (out,) = _unpaired_tests(a[None, :], b[None, :], boots[:1], boots[1:], resamples, rng)
    return out


def verdict(a: str, b: str, diff: float, p_adjusted: float) -> str:
    """``"A > B"``, ``"B > A"`` or the no-difference sentence, from the Holm-adjusted p-value."""
    if not math.isfinite(p_adjusted) or p_adjusted >= ALPHA or diff == 0:
        return NO_DIFFERENCE
    return f"{a} > {b}" if diff > 0 else f"{b} > {a}"


# ------------------------------------------------------------------------------------------ the analysis


def _by_system(clips: list[Clip]) -> dict[str, list[Clip]]:
    systems: dict[str, list[Clip]] = {}
    for clip in sorted(clips, key=lambda c: (c.system, c.id)):
        systems.setdefault(clip.system, []).append(clip)
    return systems


def _scored(clips: list[Clip], metric: str) -> list[Clip]:
    return [c for c in clips if math.isfinite(c.scores.get(metric, math.nan))]


def _unit_means(clips: list[Clip], metric: str) -> dict[str, float]:
    """Mean score per prompt unit (a system may have several clips of one prompt)."""
    groups: dict[str, list[float]] = {}
    for clip in _scored(clips, metric):
        groups.setdefault(clip.unit, []).append(clip.scores[metric])
    return {unit: float(np.mean(v)) for unit, v in groups.items()}


def _shared_prompts(systems: dict[str, list[Clip]]) -> bool:
    owners: dict[str, set] = {}
    for name, clips in systems.items():
        for clip in clips:
            owners.setdefault(clip.unit, set()).add(name)
    return any(len(v) > 1 for v in owners.values())


def _pair_list(names: list[str], baseline: str | None) -> list[tuple[str, str]]:
    if baseline is not None:
        return [(name, baseline) for name in names if name != baseline]
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]


def pair_set(names: list[str], means: dict[str, float], baseline: str | None = None, pairs="auto") -> dict:
    """Which pairs of one metric to test, and the Holm family they are corrected over.

    Args:
        names: the systems with scores, in report order.
        means: each system's mean (picks the best and the top N).
        baseline: each system against this one (a choice made before seeing the data).
        pairs: ``"auto"`` (all up to ``AUTO_ALL_SYSTEMS`` systems, else ``"best"``), ``"all"``, ``"best"``
            (each system against the highest mean) or N (all pairs among the N highest means, and every
            other system against the best).

    Returns:
        ``{"mode", "reference", "pairs", "family"}``: ``family`` is None when the tested pairs are the whole
        family, else the number of all pairs (the tested ones were picked from the data).
    """
    if baseline is not None:
        return {"mode": "baseline", "reference": baseline, "pairs": _pair_list(names, baseline), "family": None}
    mode = ("all" if len(names) <= AUTO_ALL_SYSTEMS else "best") if pairs == "auto" else pairs
    if mode == "all" or (isinstance(mode, int) and mode >= len(names)) or len(names) < 3:
        return {"mode": "all", "reference": None, "pairs": _pair_list(names, None), "family": None}
    ranked = sorted(names, key=lambda n: (-means[n], n))
    top = ranked[:1] if mode == "best" else ranked[:mode]
    chosen = _pair_list(top, None) + [(ranked[0], name) for name in ranked[len(top):]]
    return {"mode": "best" if len(top) == 1 else f"top {len(top)}", "reference": ranked[0], "pairs": chosen,
            "family": len(names) * (len(names) - 1) // 2}


def permutations_for(resamples: int, family: int) -> int:
    """Permutations per test: at least ``resamples``, and enough that the smallest Holm-corrected Monte Carlo
    p-value over ``family`` pairs, 2 * family / (permutations + 1), can reach a quarter of ``ALPHA``."""
    return max(resamples, math.ceil(8 * family / ALPHA))


def _unit_matrix(systems: dict[str, list[Clip]], names: list[str], metric: str) -> np.ndarray:
    """(systems, units) mean score per prompt unit in sorted unit order; NaN where a system has none."""
    means = [_unit_means(systems[name], metric) for name in names]
    units = sorted(set().union(*means))
    column = {u: j for j, u in enumerate(units)}
    matrix = np.full((len(names), len(units)), math.nan)
    for i, row in enumerate(means):
        matrix[i, [column[u] for u in row]] = list(row.values())
    return matrix


def _group_pairs(matrix: np.ndarray, index: dict[str, int], values: dict[str, np.ndarray],
                 pair_list: list[tuple[str, str]]) -> dict[tuple, list[int]]:
    """Pairs with the same design: paired on the same shared prompts, or unpaired with the same sizes."""
    groups: dict[tuple, list[int]] = {}
    present = np.isfinite(matrix)
    for i, (a, b) in enumerate(pair_list):
        shared = present[index[a]] & present[index[b]]
        if np.count_nonzero(shared) >= 2:
            key = ("paired", shared.tobytes())
        else:
            key = ("unpaired", values[a].size, values[b].size)
        groups.setdefault(key, []).append(i)
    return groups


def _pairs(systems: dict[str, list[Clip]], names: list[str], metric: str, baseline: str | None,
           resamples: int, rng, pair_list: list[tuple[str, str]] | None = None, family: int | None = None,
           permutations: int | None = None) -> list[dict]:
    """Test the pairs (default: all, or each against ``baseline``), Holm-correct over ``family``, give verdicts."""
    pair_list = _pair_list(names, baseline) if pair_list is None else pair_list
    permutations = permutations or resamples
    matrix, index = _unit_matrix(systems, names, metric), {n: i for i, n in enumerate(names)}
    values = {n: np.array([c.scores[metric] for c in _scored(systems[n], metric)]) for n in names}
    results: list[dict | None] = [None] * len(pair_list)
    boots: dict[str, np.ndarray] = {}
    for key, members in _group_pairs(matrix, index, values, pair_list).items():
        label = f"{metric.upper()}: permutations for {len(members)} {key[0]} pair(s)"
        if key[0] == "paired":
            shared = np.frombuffer(key[1], dtype=bool)
            diffs = np.stack([matrix[index[a], shared] - matrix[index[b], shared]
                              for a, b in (pair_list[i] for i in members)])
            tested = _paired_tests(diffs, resamples, permutations, rng, label)
        else:
            tested = _unpaired_group([pair_list[i] for i in members], values, boots, resamples, permutations,
                                     rng, label)
        for i, row in zip(members, tested):
            a, b = pair_list[i]
            shared = int(np.count_nonzero(np.isfinite(matrix[index[a]]) & np.isfinite(matrix[index[b]])))
            results[i] = {"a": a, "b": b, **row, "paired": key[0] == "paired", "shared_prompts": shared}
    return _verdicts(results, family)


def _unpaired_group(pairs: list[tuple[str, str]], values: dict[str, np.ndarray], boots: dict[str, np.ndarray],
                    resamples: int, permutations: int, rng, label: str) -> list[dict]:
    if min(values[pairs[0][0]].size, values[pairs[0][1]].size) >= 2:
        for name in (n for pair in pairs for n in pair):
            if name not in boots:  # one independent bootstrap per system, shared by all its pairs
                boots[name] = resampled_means(values[name], rng, resamples)
    a = np.stack([values[x] for x, _ in pairs])
    b = np.stack([values[y] for _, y in pairs])
    return _unpaired_tests(a, b, [boots.get(x) for x, _ in pairs], [boots.get(y) for _, y in pairs],
                           permutations, rng, label)


def _verdicts(pairs: list[dict], family: int | None) -> list[dict]:
    for pair in pairs:
        if not math.isfinite(pair["p"]):
            pair["note"] = (f"too few scored clips to test ({pair['n_a']} vs {pair['n_b']}; "
                            "at least 2 on each side are needed)")
    for pair, p_holm in zip(pairs, holm([p["p"] for p in pairs], family)):
        pair["p_holm"] = p_holm
        pair["verdict"] = verdict(pair["a"], pair["b"], pair["diff"], p_holm)
    return pairs


def _resampled_means(systems: dict[str, list[Clip]], names: list[str], metric: str, by_prompt: bool,
                     resamples: int, rng) -> np.ndarray:
    """(resamples, systems) bootstrap means; prompts are drawn jointly so shared prompts stay paired."""
    out = np.empty((resamples, len(names)))
    if by_prompt:
        units = sorted({c.unit for n in names for c in _scored(systems[n], metric)})
        col = {u: j for j, u in enumerate(units)}
        sums, counts = np.zeros((len(names), len(units))), np.zeros((len(names), len(units)))
        for i, name in enumerate(names):
            for clip in _scored(systems[name], metric):
                sums[i, col[clip.unit]] += clip.scores[metric]
                counts[i, col[clip.unit]] += 1
        observed = sums.sum(1) / counts.sum(1)
        batch = max(1, BLOCK // max(len(units), len(names)))
        for start in range(0, resamples, batch):
            weights = counts_from_indices(rng.integers(0, len(units), (min(batch, resamples - start), len(units))),
                                          len(units))
            with np.errstate(invalid="ignore", divide="ignore"):
                means = (sums @ weights.T) / (counts @ weights.T)  # (systems, batch)
            # A resample that drew none of a system's prompts keeps that system at its observed mean.
            out[start:start + weights.shape[0]] = np.where(np.isfinite(means), means, observed[:, None]).T
        return out
    for i, name in enumerate(names):
        out[:, i] = resampled_means(np.array([c.scores[metric] for c in _scored(systems[name], metric)]), rng,
                                    resamples)
    return out


def rank_uncertainty(means: np.ndarray, names: list[str]) -> dict[str, dict]:
    """Probability of ranking first and the 95 % rank interval (rank 1 = highest mean) per system.

    Args:
        means: (resamples, systems) bootstrap means.
        names: system names in column order.
    """
    order = np.argsort(-means, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(means.shape[0])[:, None]
    ranks[rows, order] = np.arange(1, means.shape[1] + 1)
    return {name: {"p_first": float(np.mean(ranks[:, i] == 1)),
                   "rank_low": int(np.quantile(ranks[:, i], 0.025, method="lower")),
                   "rank_high": int(np.quantile(ranks[:, i], 0.975, method="higher"))}
            for i, name in enumerate(names)}


def prompts_needed(pair: dict, systems: dict[str, list[Clip]], metric: str, m_pairs: int) -> dict:
    """Prompts per system to separate one pair at 80 % power (normal approximation, Bonferroni alpha)."""
    from scipy import stats

    a, b = systems[pair["a"]], systems[pair["b"]]
    if pair["paired"]:
        ma, mb = _unit_means(a, metric), _unit_means(b, metric)
        diffs = np.array([ma[u] - mb[u] for u in sorted(set(ma) & set(mb))])
        variance = float(np.var(diffs, ddof=1)) if diffs.size > 1 else math.nan
    else:
        va = np.array([c.scores[metric] for c in _scored(a, metric)])
        vb = np.array([c.scores[metric] for c in _scored(b, metric)])
        variance = (float(np.var(va, ddof=1) + np.var(vb, ddof=1))
                    if min(va.size, vb.size) > 1 else math.nan)
    alpha = ALPHA / max(m_pairs, 1)  # the first Holm step is the strictest: plan for it
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(POWER)
    delta = abs(pair["diff"])
    needed = math.ceil((z ** 2) * variance / delta ** 2) if delta > 0 and math.isfinite(variance) else None
    pair_name = f"{pair['a']} vs {pair['b']}"
    if needed is None:
        line = (f"{metric.upper()}: the closest pair ({pair_name}) cannot be sized: "
                + ("its observed difference is zero" if delta == 0 else "its variance is unknown"))
    elif needed > 100_000:
        line = (f"{metric.upper()}: the closest pair ({pair_name}, observed difference {pair['diff']:+.3f}) is "
                f"practically tied: separating it at 80 % power would need more than 100,000 prompts per system")
    else:
        line = (f"{metric.upper()}: separating the closest pair ({pair_name}, observed difference "
                f"{pair['diff']:+.3f}, SD {math.sqrt(variance):.3f}) at 80 % power needs about {needed} "
                f"prompts per system (alpha {alpha:.3g}, {'paired' if pair['paired'] else 'unpaired'})")
    return {"pair": [pair["a"], pair["b"]], "diff": pair["diff"], "sd": math.sqrt(variance)
            if math.isfinite(variance) else math.nan, "alpha": alpha, "prompts_needed": needed, "line": line}


def clip_sd(probs: np.ndarray | None) -> float:
    """Standard deviation of a 20-bin predicted distribution on the bin centres linspace(1, 5, 20)."""
    if probs is None:
        return math.nan
    mean = float(np.dot(probs, BIN_CENTRES))
    return float(math.sqrt(max(np.dot(probs, (BIN_CENTRES - mean) ** 2), 0.0)))


def _clip_record(clip: Clip, metrics: tuple[str, ...]) -> dict:
    record = {"id": clip.id, "system": clip.system, "prompt": clip.prompt, "path": clip.path,
              "error": clip.error}
    for metric in metrics:
        record[metric] = clip.scores.get(metric, math.nan)
        record[f"{metric}_sd"] = clip_sd(clip.probs.get(metric))
        record[f"{metric}_spread"] = clip.spread.get(metric, math.nan)
        if metric in clip.labels:
            record[f"{metric}_human"] = clip.labels[metric]
    return record


def uncertainty_key(systems: dict[str, list[Clip]], metrics: tuple[str, ...]) -> str:
    """What ranks a clip's uncertainty: an ensemble's members' spread when the score file has it (the members
    disagree), else the predicted distribution's SD (one model unsure of itself)."""
    spread = any(math.isfinite(c.spread.get(m, math.nan)) for clips in systems.values() for c in clips for m in metrics)
    return "spread" if spread else "sd"


def _listen(systems: dict[str, list[Clip]], metrics: tuple[str, ...], k: int = 3) -> dict[str, dict]:
    """Per system: the most uncertain clips (see :func:`uncertainty_key`) and the lowest scored per metric."""
    out = {}
    key = uncertainty_key(systems, metrics)
    for name, clips in systems.items():
        records = [_clip_record(c, metrics) for c in clips]
        with_sd = [r for r in records if any(math.isfinite(r[f"{m}_{key}"]) for m in metrics)]
        uncertain = sorted(with_sd, key=lambda r: -np.nanmean([r[f"{m}_{key}"] for m in metrics]))[:k]
        lowest = {m: sorted([r for r in records if math.isfinite(r[m])], key=lambda r: r[m])[:k]
                  for m in metrics}
        failed = [r for r in records if r["error"]][:k]
        out[name] = {"uncertain": uncertain, "lowest": lowest, "failed": failed}
    return out


def _label_metrics(clips: list[Clip], metric: str, resamples: int, rng) -> dict:
    """mos_metrics of predicted vs human over labelled scored clips, with percentile intervals."""
    from scipy import stats

    rows = [c for c in _scored(clips, metric) if math.isfinite(c.labels.get(metric, math.nan))]
    pred = np.array([c.scores[metric] for c in rows])
    true = np.array([c.labels[metric] for c in rows])
    sys_ids = np.array([c.system for c in rows])
    point = mos_metrics(pred, true, sys_ids)
    result = {"clips": len(rows), "systems": int(np.unique(sys_ids).size), "point": point, "ci": {}}
    if len(rows) < 3:
        return result
    keys = [(level, name) for level in ("utterance", "system") for name in ("MSE", "LCC", "SRCC", "KTAU")]

    def statistic(index):
        index = index.astype(int)
        m = mos_metrics(pred[index], true[index], sys_ids[index])
        return np.array([m[level][name] for level, name in keys])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap((np.arange(len(rows)),), statistic, n_resamples=min(resamples, LABEL_RESAMPLES),
                              method="percentile", vectorized=False, rng=rng)
    # Resamples in which a correlation is undefined give NaN; scipy then reports NaN for that bound.
    for (level, name), low, high in zip(keys, res.confidence_interval.low, res.confidence_interval.high):
        result["ci"].setdefault(level, {})[name] = [float(low), float(high)]
    return result


def _label_systems(systems: dict[str, list[Clip]], metric: str) -> dict[str, dict]:
    out = {}
    for name, clips in systems.items():
        rows = [c for c in _scored(clips, metric) if math.isfinite(c.labels.get(metric, math.nan))]
        if rows:
            out[name] = {"n": len(rows), "pred": float(np.mean([c.scores[metric] for c in rows])),
                         "human": float(np.mean([c.labels[metric] for c in rows]))}
    return out


def _attach_labels(clips: list[Clip], labels: dict | str | Path | None) -> int:
    if labels is None:
        return sum(bool(c.labels) for c in clips)
    table = read_labels(labels) if isinstance(labels, (str, Path)) else labels
    matched = 0
    for clip in clips:
        # A manifest's default id is the clip's path without extension (``wav/<name>``); labels name the file.
        key = clip.id if clip.id in table else clip.id.rsplit("/", 1)[-1]
        if key in table:
            clip.labels = dict(table[key])
            matched += 1
    if matched == 0:
        raise DeramosError(f"no clip id of the score file appears in the labels {labels}")
    return matched


def _checked(clip: Clip, metrics: tuple[str, ...]) -> Clip:
    """The clip with every infinite or out-of-range score moved to ``invalid`` (NaN in ``scores``)."""
    low, high = SCORE_RANGE[0] - _RANGE_SLACK, SCORE_RANGE[1] + _RANGE_SLACK
    scores = {m: clip.scores.get(m, math.nan) for m in metrics}
    bad = {m: v for m, v in scores.items() if not math.isnan(v) and not low <= v <= high}  # inf is outside
    if not bad:
        return clip
    return replace(clip, scores={**clip.scores, **dict.fromkeys(bad, math.nan)},
                   invalid={**clip.invalid, **{m: repr(float(v)) for m, v in bad.items()}})


def _system_entry(clips: list[Clip], metrics: tuple[str, ...]) -> dict:
    """Row counts: ``failed`` has no score on any metric, ``invalid`` has an invalid one on some metric."""
    invalid = [any(m in c.invalid for m in metrics) for c in clips]
    scored = [any(math.isfinite(c.scores.get(m, math.nan)) for m in metrics) for c in clips]
    return {"clips": len(clips), "failed": sum(not s and not i for s, i in zip(scored, invalid)),
            "invalid": sum(invalid), "errors": sum(bool(c.error) for c in clips)}


def _invalid_note(systems: dict[str, list[Clip]], metric: str) -> str | None:
    counts = {name: sum(metric in c.invalid for c in clips) for name, clips in systems.items()}
    counts = {name: k for name, k in counts.items() if k}
    if not counts:
        return None
    example = next(c for clips in systems.values() for c in clips if metric in c.invalid)
    listed = ", ".join(f"{name} ({k})" for name, k in list(counts.items())[:10])
    more = f" and {len(counts) - 10} more systems" if len(counts) > 10 else ""
    return (f"{metric.upper()}: {sum(counts.values())} row(s) have an invalid score (NaN, infinite or outside "
            f"[{SCORE_RANGE[0]:g}, {SCORE_RANGE[1]:g}]) and are left out of every statistic: {listed}{more}; "
            f"e.g. {example.id} = {example.invalid[metric]}. The systems table counts them per system.")


def _check_arguments(metrics: tuple[str, ...], resamples: int, baseline, pairs) -> None:
    if not metrics or any(m not in METRICS for m in metrics):
        raise DeramosError(f"metrics must be among {', '.join(METRICS)}, got {', '.join(metrics) or 'none'}")
    if resamples < 100:
        raise DeramosError(f"--resamples must be at least 100, got {resamples}")
    if not (pairs in PAIR_MODES or (isinstance(pairs, int) and not isinstance(pairs, bool) and pairs >= 1)):
        raise DeramosError(f"--pairs must be one of {', '.join(PAIR_MODES)} or a number of top systems, got {pairs!r}")
    if baseline is not None and pairs != "auto":
        raise DeramosError("give either --baseline or --pairs, not both")


def compare(scores, labels=None, baseline=None, metrics=("mi", "ta"), resamples=10000, seed=0,
            pairs="auto") -> dict:
    """Compare the systems of a score file; the numbers of ``results.json``.

    Args:
        scores: a score file path, or a list of :class:`Clip`.
        labels: None, a MusicEval mos list path (``wavID,MI,TA``), or ``{id: {"mi", "ta"}}``.
        baseline: compare every system with this one only.
        metrics: any of ``"mi"``, ``"ta"``.
        resamples: bootstrap resamples, and the least number of permutations per test.
        seed: every random draw follows from it.
        pairs: which pairs without a baseline: ``"auto"``, ``"all"``, ``"best"`` or N (see :func:`pair_set`).

    Returns:
        A JSON-safe dict (missing values are None): ``inputs``, ``systems``, ``pairs``, ``pair_sets``,
        ``ranks``, ``power``, ``listen``, ``labels``, ``notes``.

    Raises:
        DeramosError: unreadable input, unknown metric, baseline or pair mode, labels matching no clip.
    """
    metrics = tuple(metrics)
    _check_arguments(metrics, resamples, baseline, pairs)
    clips = read_scores(scores) if isinstance(scores, (str, Path)) else list(scores)
    clips = [_checked(c, metrics) for c in clips]
    labelled = _attach_labels(clips, labels)
    systems = _by_system(clips)
    if baseline is not None and baseline not in systems:
        raise DeramosError(f"baseline {baseline!r} is not among the systems {', '.join(systems)}")
    by_prompt = _shared_prompts(systems)
    log.info("compare: %d clips, %d systems, unit %s, %s resamples", len(clips), len(systems),
             "prompt" if by_prompt else "clip", f"{resamples:,}")
    rng = np.random.default_rng(seed)
    result = {"inputs": {"scores": str(scores) if isinstance(scores, (str, Path)) else None,
                         "clips": len(clips), "systems": len(systems), "metrics": list(metrics),
                         "baseline": baseline, "pairs": pairs, "resamples": resamples, "seed": seed,
                         "unit": "prompt" if by_prompt else "clip", "labelled_clips": labelled,
                         "alpha": ALPHA, "correction": "Holm", "ci": "95 % bootstrap (BCa)",
                         "score_range": list(SCORE_RANGE)},
              "systems": {name: _system_entry(c, metrics) for name, c in systems.items()},
              "pairs": {}, "pair_sets": {}, "ranks": {}, "power": {}, "labels": {}, "notes": []}
    if not by_prompt:
        result["notes"].append("No prompt was given to two systems: intervals resample clips, pairs are unpaired "
                               "(permutation of labels, Mann-Whitney U as second opinion).")
    for metric in metrics:
        _system_intervals(result, systems, metric, by_prompt, resamples, rng)
        _metric_analysis(result, systems, metric, baseline, pairs, by_prompt, resamples, rng)
    result["listen"] = _listen(systems, metrics)
    result["uncertainty"] = uncertainty_key(systems, metrics)
    if labelled:
        for metric in metrics:
            result["labels"][metric] = {**_label_metrics(clips, metric, resamples, rng),
                                        "per_system": _label_systems(systems, metric)}
    return _clean(result)


def _system_intervals(result: dict, systems: dict[str, list[Clip]], metric: str, by_prompt: bool,
                      resamples: int, rng) -> None:
    samples = []
    for clips in systems.values():
        scored = _scored(clips, metric)
        samples.append((np.array([c.scores[metric] for c in scored]),
                        np.array([c.unit for c in scored]) if by_prompt else None))
    entries = _intervals(samples, resamples, rng, f"{metric.upper()}: system intervals")
    for (name, clips), entry in zip(systems.items(), entries):
        entry["invalid"] = sum(metric in c.invalid for c in clips)
        result["systems"][name][metric] = entry
    note = _invalid_note(systems, metric)
    if note:
        result["notes"].append(note)
        log.warning("%s", note)


def _metric_analysis(result: dict, systems: dict, metric: str, baseline: str | None, pairs, by_prompt: bool,
                     resamples: int, rng) -> None:
    notes = result["notes"]
    names = [n for n in systems if result["systems"][n][metric]["n"] > 0]
    for name in systems:
        if name not in names:
            notes.append(f"{metric.upper()}: {name} has no scored clip (all {len(systems[name])} failed); "
                         "it is not compared or ranked.")
        elif result["systems"][name][metric]["n"] == 1:
            notes.append(f"{metric.upper()}: {name} has one scored clip: no interval, and no pair with it "
                         "can show a difference.")
    chosen = pair_set(names, {n: result["systems"][n][metric]["mean"] for n in names}, baseline, pairs)
    if baseline is not None and baseline not in names:
        notes.append(f"{metric.upper()}: the baseline {baseline} has no scored clip; no pairs.")
        chosen["pairs"] = []
    family = chosen["family"] or len(chosen["pairs"])
    permutations = permutations_for(resamples, family)
    result["pair_sets"][metric] = {"mode": chosen["mode"], "reference": chosen["reference"],
                                   "tested": len(chosen["pairs"]), "family": family, "permutations": permutations}
    log.info("%s: %d pairs (%s), Holm over %d, %s permutations per test", metric.upper(), len(chosen["pairs"]),
             chosen["mode"], family, f"{permutations:,}")
    result["pairs"][metric] = _pairs(systems, names, metric, baseline, resamples, rng, chosen["pairs"],
                                     chosen["family"], permutations)
    if len(names) >= 2:
        log.info("%s: ranks from %s joint resamples", metric.upper(), f"{resamples:,}")
        means = _resampled_means(systems, names, metric, by_prompt, resamples, rng)
        result["ranks"][metric] = rank_uncertainty(means, names)
    tested = [p for p in result["pairs"][metric] if p["p"] is not None and math.isfinite(p["p"])]
    if tested:
        closest = min(tested, key=lambda p: abs(p["diff"]))
        result["power"][metric] = prompts_needed(closest, systems, metric, chosen["family"] or len(tested))
    elif names and len(names) < 2:
        notes.append(f"{metric.upper()}: fewer than two systems with scores: nothing to compare.")
