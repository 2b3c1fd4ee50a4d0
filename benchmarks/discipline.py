"""Measurement discipline for the benchmark report: interleaved repeats, medians with ranges, the machine's
load while measuring, and what ran (BLAS thread pools, CPU features).

* Every row is measured ``repeats`` times, interleaved with the other rows (A B C A B C ...): a change in
  the machine's load then hits every row alike instead of one. The report keeps the median and the
  min-max of every figure.
* Load: ``os.getloadavg()`` before and after, and, while measuring, a sampler that counts the runnable
  threads of *other* processes (``/proc/*/task/*/stat`` in state R or D, as the kernel's load average
  counts them, minus this process and its children). The 1-minute average right after a run mostly
  measures the run itself, so the judgement uses the load before and the other processes' load during
  it: above half the cores, targets are "not judged: machine busy".
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

BUSY = "not judged: machine busy"


# ------------------------------------------------------------------------------------------------ repeats

def guarded(task: Callable[[], dict], log=None, name: str = "") -> Callable[[], dict]:
    """``task`` that returns ``{"error": ...}`` instead of raising, and once failed is not run again."""
    failure: dict = {}

    def run() -> dict:
        if failure:
            return dict(failure)
        try:
            return task()
        except Exception as exc:  # one failed row must not lose the others
            failure["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
            if log:
                log(f"{name} FAILED: {failure['error']}")
            return dict(failure)
    return run


def median_range(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of numbers."""
    return statistics.median(values), min(values), max(values)


def summarise(runs: list[dict]) -> dict:
    """One row from its repeats: numbers become medians (``range`` holds each one's [min, max]); everything
    else (names, nested dicts, scores) is taken from the first repeat. ``repeats`` counts the runs used.

    A run with ``error`` is left out; when every run failed the first error is returned.
    """
    good = [r for r in runs if "error" not in r]
    if not good:
        return dict(runs[0]) if runs else {"error": "not run"}
    out = dict(good[0])
    ranges = {}
    for key, value in good[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [r[key] for r in good if isinstance(r.get(key), (int, float))]
            med, low, high = median_range(values)
            out[key] = med if isinstance(value, float) or med != int(med) else int(med)
            if high != low:
                ranges[key] = [low, high]
    out["range"] = ranges
    out["repeats"] = len(good)
    return out


# ------------------------------------------------------------------------------------------------ load

def _tree(root: int) -> set[int]:
    """``root`` and all its descendant process ids (from /proc/*/stat parent ids)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def runnable_threads(root: int | None = None) -> tuple[int, int]:
    """(runnable threads of other processes, runnable threads of ``root``'s process tree), states R and D."""
    ours = _tree(root or os.getpid())
    others = own = 0
    for stat in Path("/proc").glob("[0-9]*/task/[0-9]*/stat"):
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state in ("R", "D"):
            if int(stat.parent.parent.parent.name) in ours:
                own += 1
            else:
                others += 1
    return others, max(own - 1, 0)  # minus the sampling thread itself


class LoadMonitor:
    """Samples :func:`runnable_threads` every ``interval`` seconds in a daemon thread while running."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "LoadMonitor":
        self._thread = threading.Thread(target=self._run, name="load-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                others, own = runnable_threads()
            except OSError:  # no /proc: nothing to sample
                return
            self.samples.append((time.time(), others, own))

    def mark(self) -> int:
        """A position in the samples, for :meth:`summary` of what follows."""
        return len(self.samples)

    def summary(self, since: int = 0) -> dict[str, Any]:
        """Mean and max runnable threads of other processes (and of this run) since ``since``."""
        part = self.samples[since:]
        if not part:
            return {"samples": 0}
        others = [s[1] for s in part]
        own = [s[2] for s in part]
        return {"samples": len(part), "others_mean": round(statistics.fmean(others), 2), "others_max": max(others),
                "own_mean": round(statistics.fmean(own), 2)}


def load_verdict(before: tuple[float, ...] | list[float], during: dict, cores: int | None = None) -> dict:
    """Whether figures taken under this load may judge targets: busy when the 1-minute load before, or the
    other processes' mean runnable threads during, exceeds half the cores."""
    cores = cores or os.cpu_count() or 1
    limit = cores / 2
    others = during.get("others_mean")
    busy = before[0] > limit or (others is not None and others > limit)
    why = (f"load before {before[0]:.2f}, other processes' runnable threads during {others if others is not None else '-'}"
           f" (mean); limit {limit:g} = half of {cores} cores")
    return {"busy": busy, "detail": why, "load_before": [round(x, 2) for x in before], "during": during}


def load_since_start(start: Sequence[float], before: Sequence[float], during: dict, start_name: str) -> dict:
    """:func:`load_verdict` for one section of a longer run. The 1-minute load average before a later section
    counts the run's own earlier sections, so the verdict reads the load at the run's start (``start_name``
    says which run) and the other processes' runnable threads during the section; the load before and after
    the section are recorded beside it."""
    verdict = load_verdict(start, during)
    verdict["detail"] = verdict["detail"].replace("load before", f"load at {start_name}", 1)
    return {**verdict, "load_at_start": [round(x, 2) for x in start], "load_before": [round(x, 2) for x in before],
            "load_after": [round(x, 2) for x in os.getloadavg()]}


# ------------------------------------------------------------------------------------------------ what ran

def threadpools() -> list[dict]:
    """``threadpoolctl.threadpool_info()``: which BLAS / OpenMP libraries are loaded, with their thread counts."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"error": "threadpoolctl is not installed"}]
    keep = ("user_api", "internal_api", "prefix", "version", "num_threads", "threading_layer", "architecture")
    return [{k: v for k, v in pool.items() if k in keep} for pool in threadpool_info()]


def blas_environment() -> dict[str, str]:
    """The thread and BLAS environment variables set for this run (they change what the figures mean)."""
    names = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "OMP_WAIT_POLICY", "TOKENIZERS_PARALLELISM")
    return {n: os.environ[n] for n in names if n in os.environ}
