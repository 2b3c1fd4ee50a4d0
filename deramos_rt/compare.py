"""Compare text-to-music systems from a score file: means with intervals, pairwise verdicts, ranks.

``deramos-rt compare SCORES --out DIR`` reads the per-clip scores written by ``deramos-rt score`` (CSV or
JSONL) or a ``predictions_<split>.csv`` of ``training.evaluate``, and writes ``DIR/report.html`` (one
self-contained file), ``DIR/report.md`` and ``DIR/results.json``. :func:`compare` returns the numbers that
go to ``results.json``.

Statistics (scipy.stats wherever it has the method):

* per system: the mean with a 95 % BCa bootstrap interval. The resampling unit is the prompt when any
  prompt was given to more than one system (clips of one prompt are not independent), else the clip;
* per pair: the mean difference with a 95 % BCa interval, paired on the prompts both systems scored when
  they share at least two, else unpaired; the p-value of a permutation test (sign flips when paired),
  Holm-corrected over the pairs of one metric; Wilcoxon signed-rank (paired) or Mann-Whitney U (unpaired)
  as a second opinion; the verdict follows the corrected p-value;
* ranks: one joint bootstrap over the same unit gives each system's probability of ranking first and its
  95 % rank interval;
* the number of prompts per system that would separate the closest pair at 80 % power;
* with human labels: utterance- and system-level MSE / LCC / SRCC / KTAU with percentile intervals.

This module imports numpy only at import time; scipy and matplotlib load when used.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
    error: str = ""
    labels: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- reading


def _float(value, where: str) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DeramosError(f"{where}: not a number: {value!r}") from None


def _probs(value, where: str) -> np.ndarray | None:
    if value is None or (isinstance(value, str) and not value.strip()):
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
        clip.scores[metric] = _float(row.get(f"{metric}_pred" if predictions else metric), f"{where} {metric}")
        clip.probs[metric] = _probs(row.get(f"{metric}_probs"), f"{where} {metric}_probs")
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


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN.

    Args:
        p_values: raw p-values of one family of tests.

    Returns:
        Adjusted p-values in the same order; reject at level a where adjusted p <= a.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, math.nan)
    valid = np.flatnonzero(np.isfinite(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m, running = order.size, 0.0
    for i, index in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[index]))
        out[index] = running
    return out.tolist()


def _bootstrap_ci(data: tuple, statistic, resamples: int, rng, paired: bool = False) -> tuple[float, float, str]:
    """95 % BCa interval from scipy; percentile when BCa is undefined (e.g. a degenerate jackknife)."""
    from scipy import stats

    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns on degenerate BCa and returns NaN, handled below
            res = stats.bootstrap(data, statistic, n_resamples=resamples, method=method, paired=paired,
                                  vectorized=True, rng=rng)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high, method
    return math.nan, math.nan, "none"


def _ratio(sums, counts, axis=-1):
    return np.sum(sums, axis=axis) / np.sum(counts, axis=axis)


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
    values = np.asarray(values, dtype=np.float64)
    result = {"n": int(values.size), "mean": float(values.mean()) if values.size else math.nan,
              "ci_low": math.nan, "ci_high": math.nan, "method": "none", "note": ""}
    if units is None:
        units = np.arange(values.size)
    keys, index = np.unique(units, return_inverse=True)
    if keys.size < 2:
        result["note"] = f"{values.size} scored clip(s) from {keys.size} unit: no interval"
        return result
    if np.ptp(values) == 0:
        result.update(ci_low=result["mean"], ci_high=result["mean"], method="constant",
                      note="all scores equal: zero-width interval")
        return result
    # Clips of one prompt move together: resample prompts, the mean stays the mean over clips.
    sums = np.bincount(index, weights=values)
    counts = np.bincount(index).astype(np.float64)
    low, high, method = _bootstrap_ci((sums, counts), _ratio, resamples, rng, paired=True)
    result.update(ci_low=low, ci_high=high, method=method)
    return result


def _mean_diff(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def _paired_stat(a, b, axis=-1):
    return np.mean(a - b, axis=axis)


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
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out = {"diff": float(a.mean() - b.mean()), "ci_low": math.nan, "ci_high": math.nan, "method": "none",
           "p": math.nan, "p_second": math.nan, "n_a": int(a.size), "n_b": int(b.size),
           "second_test": "Wilcoxon signed-rank" if paired else "Mann-Whitney U"}
    if min(a.size, b.size) < 2:
        return out
    stat = _paired_stat if paired else _mean_diff
    spread = np.ptp(a - b) if paired else max(np.ptp(a), np.ptp(b))
    if spread == 0:
        out.update(ci_low=out["diff"], ci_high=out["diff"], method="constant")
    else:
        out["ci_low"], out["ci_high"], out["method"] = _bootstrap_ci((a, b), stat, resamples, rng, paired=paired)
    perm = stats.permutation_test((a, b), stat, permutation_type="samples" if paired else "independent",
                                  vectorized=True, n_resamples=resamples, rng=rng)
    out["p"] = float(perm.pvalue)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            second = stats.wilcoxon(a, b) if paired else stats.mannwhitneyu(a, b)
            out["p_second"] = float(second.pvalue)
        except ValueError:  # all differences zero: the rank test is undefined, there is nothing to detect
            out["p_second"] = 1.0
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


def _compare_pair(a: list[Clip], b: list[Clip], metric: str, resamples: int, rng) -> dict:
    means_a, means_b = _unit_means(a, metric), _unit_means(b, metric)
    shared = sorted(set(means_a) & set(means_b))
    if len(shared) >= 2:
        result = difference([means_a[u] for u in shared], [means_b[u] for u in shared], True, resamples, rng)
        result.update(paired=True, shared_prompts=len(shared))
        return result
    va = [c.scores[metric] for c in _scored(a, metric)]
    vb = [c.scores[metric] for c in _scored(b, metric)]
    result = difference(va, vb, False, resamples, rng)
    result.update(paired=False, shared_prompts=len(shared))
    return result


def _pairs(systems: dict[str, list[Clip]], names: list[str], metric: str, baseline: str | None,
           resamples: int, rng) -> list[dict]:
    pairs = []
    for a, b in _pair_list(names, baseline):
        result = {"a": a, "b": b, **_compare_pair(systems[a], systems[b], metric, resamples, rng)}
        if not math.isfinite(result["p"]):
            result["note"] = (f"too few scored clips to test ({result['n_a']} vs {result['n_b']}; "
                              "at least 2 on each side are needed)")
        pairs.append(result)
    adjusted = holm([p["p"] for p in pairs])
    for pair, p_holm in zip(pairs, adjusted):
        pair["p_holm"] = p_holm
        pair["verdict"] = verdict(pair["a"], pair["b"], pair["diff"], p_holm)
    return pairs


def _resampled_means(systems: dict[str, list[Clip]], names: list[str], metric: str, by_prompt: bool,
                     resamples: int, rng, batch: int = 500) -> np.ndarray:
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
        for start in range(0, resamples, batch):
            idx = rng.integers(0, len(units), size=(min(batch, resamples - start), len(units)))
            with np.errstate(invalid="ignore", divide="ignore"):
                means = sums[:, idx].sum(-1) / counts[:, idx].sum(-1)  # (systems, batch)
            # A resample that drew none of a system's prompts keeps that system at its observed mean.
            out[start:start + idx.shape[0]] = np.where(np.isfinite(means), means, observed[:, None]).T
        return out
    for i, name in enumerate(names):
        values = np.array([c.scores[metric] for c in _scored(systems[name], metric)])
        for start in range(0, resamples, batch):
            size = min(batch, resamples - start)
            out[start:start + size, i] = values[rng.integers(0, values.size, (size, values.size))].mean(1)
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
        if metric in clip.labels:
            record[f"{metric}_human"] = clip.labels[metric]
    return record


def _listen(systems: dict[str, list[Clip]], metrics: tuple[str, ...], k: int = 3) -> dict[str, dict]:
    """Per system: the most uncertain clips (largest mean predicted SD) and the lowest scored per metric."""
    out = {}
    for name, clips in systems.items():
        records = [_clip_record(c, metrics) for c in clips]
        with_sd = [r for r in records if any(math.isfinite(r[f"{m}_sd"]) for m in metrics)]
        uncertain = sorted(with_sd, key=lambda r: -np.nanmean([r[f"{m}_sd"] for m in metrics]))[:k]
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
        if clip.id in table:
            clip.labels = dict(table[clip.id])
            matched += 1
    if matched == 0:
        raise DeramosError(f"no clip id of the score file appears in the labels {labels}")
    return matched


def compare(scores, labels=None, baseline=None, metrics=("mi", "ta"), resamples=10000, seed=0) -> dict:
    """Compare the systems of a score file; the numbers of ``results.json``.

    Args:
        scores: a score file path, or a list of :class:`Clip`.
        labels: None, a MusicEval mos list path (``wavID,MI,TA``), or ``{id: {"mi", "ta"}}``.
        baseline: compare every system with this one only (default: all pairs).
        metrics: any of ``"mi"``, ``"ta"``.
        resamples: bootstrap and permutation resamples.
        seed: every random draw follows from it.

    Returns:
        A JSON-safe dict (missing values are None): ``inputs``, ``systems``, ``pairs``, ``ranks``,
        ``power``, ``listen``, ``labels``, ``notes``.

    Raises:
        DeramosError: unreadable input, unknown metric or baseline, labels matching no clip.
    """
    metrics = tuple(metrics)
    if not metrics or any(m not in METRICS for m in metrics):
        raise DeramosError(f"metrics must be among {', '.join(METRICS)}, got {', '.join(metrics) or 'none'}")
    if resamples < 100:
        raise DeramosError(f"--resamples must be at least 100, got {resamples}")
    clips = read_scores(scores) if isinstance(scores, (str, Path)) else list(scores)
    labelled = _attach_labels(clips, labels)
    systems = _by_system(clips)
    if baseline is not None and baseline not in systems:
        raise DeramosError(f"baseline {baseline!r} is not among the systems {', '.join(systems)}")
    by_prompt = _shared_prompts(systems)
    rng = np.random.default_rng(seed)
    result = {"inputs": {"scores": str(scores) if isinstance(scores, (str, Path)) else None,
                         "clips": len(clips), "systems": len(systems), "metrics": list(metrics),
                         "baseline": baseline, "resamples": resamples, "seed": seed,
                         "unit": "prompt" if by_prompt else "clip", "labelled_clips": labelled,
                         "alpha": ALPHA, "correction": "Holm", "ci": "95 % bootstrap (BCa)"},
              "systems": {}, "pairs": {}, "ranks": {}, "power": {}, "labels": {}, "notes": []}
    notes = result["notes"]
    if not by_prompt:
        notes.append("No prompt was given to two systems: intervals resample clips, pairs are unpaired "
                     "(permutation of labels, Mann-Whitney U as second opinion).")
    for name, system_clips in systems.items():
        entry = {"clips": len(system_clips),
                 "failed": sum(not any(math.isfinite(c.scores.get(m, math.nan)) for m in metrics)
                               for c in system_clips),
                 "errors": sum(bool(c.error) for c in system_clips)}
        for metric in metrics:
            scored = _scored(system_clips, metric)
            units = np.array([c.unit for c in scored]) if by_prompt else None
            entry[metric] = mean_ci(np.array([c.scores[metric] for c in scored]), units, resamples, rng)
        result["systems"][name] = entry
    for metric in metrics:
        _metric_analysis(result, systems, metric, baseline, by_prompt, resamples, rng)
    result["listen"] = _listen(systems, metrics)
    if labelled:
        for metric in metrics:
            result["labels"][metric] = {**_label_metrics(clips, metric, resamples, rng),
                                        "per_system": _label_systems(systems, metric)}
    return _clean(result)


def _metric_analysis(result: dict, systems: dict, metric: str, baseline: str | None, by_prompt: bool,
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
    if baseline is not None and baseline not in names:
        notes.append(f"{metric.upper()}: the baseline {baseline} has no scored clip; no pairs.")
        result["pairs"][metric] = []
    else:
        result["pairs"][metric] = _pairs(systems, names, metric, baseline, resamples, rng)
    if len(names) >= 2:
        means = _resampled_means(systems, names, metric, by_prompt, resamples, rng)
        result["ranks"][metric] = rank_uncertainty(means, names)
    tested = [p for p in result["pairs"][metric] if p["p"] is not None and math.isfinite(p["p"])]
    floor = 2 * len(tested) / (resamples + 1)  # smallest Holm-adjusted two-sided Monte Carlo p-value
    if floor >= ALPHA:
        notes.append(f"{metric.upper()}: with {resamples} resamples and {len(tested)} pairs the smallest "
                     f"possible corrected p-value is {floor:.3g}, so no pair can be declared different; "
                     "raise --resamples.")
    if tested:
        closest = min(tested, key=lambda p: abs(p["diff"]))
        result["power"][metric] = prompts_needed(closest, systems, metric, len(tested))
    elif names and len(names) < 2:
        notes.append(f"{metric.upper()}: fewer than two systems with scores: nothing to compare.")
