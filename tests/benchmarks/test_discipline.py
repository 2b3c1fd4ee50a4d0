"""Measurement discipline: medians with ranges over repeats, failed rows kept out, the load judgement and
the load sampler (no test asserts a time)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from benchmarks import discipline
from benchmarks.discipline import BUSY, LoadMonitor, guarded, load_verdict, runnable_threads, summarise


def test_summarise_takes_medians_and_ranges_and_leaves_failed_runs_out():
    runs = [{"name": "a", "rate": 3.0, "clips": 8, "nested": {"x": 1}}, {"error": "boom"},
            {"name": "a", "rate": 1.0, "clips": 8, "nested": {"x": 2}}, {"name": "a", "rate": 2.0, "clips": 8}]
    row = summarise(runs)
    assert row["rate"] == 2.0 and row["range"] == {"rate": [1.0, 3.0]} and row["repeats"] == 3
    assert row["clips"] == 8 and isinstance(row["clips"], int) and row["nested"] == {"x": 1}
    assert summarise([{"error": "first"}, {"error": "second"}]) == {"error": "first"}


def test_a_failed_task_is_recorded_and_not_run_again():
    calls = []

    def task():
        calls.append(1)
        raise ValueError("no such backend\nsecond line")

    run = guarded(task)
    assert run() == {"error": "ValueError: no such backend"} and run() == {"error": "ValueError: no such backend"}
    assert len(calls) == 1


def test_targets_are_judged_only_below_half_the_cores():
    assert not load_verdict((0.9, 0.5, 0.2), {"others_mean": 0.4}, cores=2)["busy"]
    assert load_verdict((1.2, 0.5, 0.2), {"others_mean": 0.1}, cores=2)["busy"]
    busy = load_verdict((0.1, 0.1, 0.1), {"others_mean": 3.0}, cores=2)
    assert busy["busy"] and "half of 2 cores" in busy["detail"]
    assert not load_verdict((0.5,), {"samples": 0}, cores=2)["busy"]  # nothing sampled: the load before decides
    assert BUSY == "not judged: machine busy"


def test_the_sampler_counts_our_own_children_apart_from_other_processes():
    child = subprocess.Popen([sys.executable, "-c", "print('go', flush=True)\nwhile True: pass"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "go"
        others, own = runnable_threads()
        assert own >= 1 and others >= 0
        with LoadMonitor(interval=0.05) as monitor:
            mark = monitor.mark()
            while len(monitor.samples) < mark + 3:
                time.sleep(0.01)
        summary = monitor.summary(mark)
        assert summary["samples"] >= 3 and summary["own_mean"] > 0 and summary["others_max"] >= 0
    finally:
        child.kill()
        child.wait()
    assert LoadMonitor().summary() == {"samples": 0}


def test_what_ran_is_recorded():
    import numpy  # noqa: F401  (loads its BLAS)

    pools = discipline.threadpools()
    if pools and "error" in pools[0]:
        pytest.skip(pools[0]["error"])
    assert any(p.get("user_api") == "blas" for p in pools)
    assert set(discipline.blas_environment()) <= {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                                  "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY",
                                                  "TOKENIZERS_PARALLELISM"}
