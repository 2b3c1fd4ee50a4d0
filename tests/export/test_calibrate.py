"""Export-time calibration: interleaved rounds, rates per CPU candidate stored under this CPU's key, the
budget cut for slow models, and re-calibrating a copied bundle from the command line."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")

from deramos_rt.backends.calibration import cpu_key  # noqa: E402
from deramos_rt.bundle import load_bundle  # noqa: E402
from export import calibrate  # noqa: E402
from export.testing import tiny_bundle  # noqa: E402


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("cal"), precisions=("fp32", "int8"), int8_min_bytes=0,
                       parity_files=2, parity_random=6)


def test_interleave_runs_tasks_in_turns():
    calls = []
    out = calibrate.interleave({"a": lambda: calls.append("a") or 1, "b": lambda: calls.append("b") or 2}, 3)
    assert calls == ["a", "b"] * 3 and out == {"a": [1, 1, 1], "b": [2, 2, 2]}
    counted = []
    assert calibrate.per_call(lambda: counted.append(1), 0.0) >= 0 and len(counted) == 1
    assert calibrate.per_call(lambda: counted.append(1), 10.0, max_calls=4) >= 0 and len(counted) == 5


def test_the_build_stores_rates_for_every_cpu_candidate_under_this_cpu(bundle_dir):
    bundle = load_bundle(bundle_dir)
    names = {n for n, _ in calibrate.candidates(bundle)}
    assert names == {"onnxruntime-fp32"} | ({"onnxruntime-int8"} if "int8" in bundle.variants else set())
    entry = bundle.manifest["calibration"]["cpus"][cpu_key()]
    assert set(entry["rates"]) == names and all(rate > 0 for rate in entry["rates"].values())
    assert all(low <= entry["rates"][n] <= high for n, (low, high) in entry["ranges"].items())
    assert entry["repeats"] == 5 and entry["batch"] == 8 and entry["cpu"]["model"] and entry["measured"]


def test_over_budget_one_round_at_batch_one_and_other_cpus_are_kept(bundle_dir):
    previous = {"cpus": {"Other CPU|avx2": {"rates": {"onnxruntime-fp32": 1.0}}}}
    section = calibrate.calibrate(bundle_dir, budget_s=0.0, previous=previous)
    entry = section["cpus"][cpu_key()]
    assert entry["batch"] == 1 and entry["repeats"] == 1
    assert section["cpus"]["Other CPU|avx2"] == previous["cpus"]["Other CPU|avx2"]
    assert calibrate.calibrate(bundle_dir, budget_s=0.0, previous="junk")["cpus"].keys() == {cpu_key()}


def test_the_command_line_adds_this_cpu_and_the_bundle_still_verifies(bundle_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    manifest = json.loads((copy / "deramos.json").read_text())
    manifest["calibration"] = {"cpus": {"Other CPU|avx2": {"rates": {"onnxruntime-fp32": 1.0}}}}
    (copy / "deramos.json").write_text(json.dumps(manifest))
    assert calibrate.main([str(copy)]) == 0
    cpus = load_bundle(copy).manifest["calibration"]["cpus"]  # verified: every file still matches
    assert set(cpus) == {"Other CPU|avx2", cpu_key()}


def test_the_budget_cuts_the_batch_before_the_rounds():
    assert calibrate._fit_budget({"a": 0.01}, 8, 5, 0.2, 60.0) == (8, 5)  # 5 rounds of 0.2 s: fits
    assert calibrate._fit_budget({"a": 1.0, "b": 0.5}, 8, 5, 0.2, 10.0) == (1, 5)  # 60 s at batch 8, 7.5 at 1
    assert calibrate._fit_budget({"a": 20.0}, 8, 5, 0.2, 60.0) == (1, 1)  # MuQ-large: one round
