"""benchmarks.ensemble_cost on a tiny model: members share encoders, both bundles score the same clips, the
ratio and the target's verdict come from the measured rows (no test asserts a time)."""

from __future__ import annotations

import json

import pytest

from benchmarks import ensemble_cost
from benchmarks.models import random_run


def test_the_benchmark_builds_members_scores_both_bundles_and_reports_the_ratio(tmp_path, monkeypatch):
    tiny = random_run("tiny", tmp_path / "tiny-run")
    monkeypatch.setattr(ensemble_cost, "base_run", lambda model, work: tiny)
    out = tmp_path / "out"
    code = ensemble_cost.main(["--out", str(out), "--models", "default", "--members", "3", "--clips", "3",
                               "--repeats", "2", "--work", str(tmp_path / "work")])
    assert code == 0
    results = json.loads((out / "ensemble_cost.json").read_text())
    section = results["models"]["default"]
    from deramos_rt.bundle import load_bundle

    joint = load_bundle(section["ensemble_bundle"])
    assert len(joint.manifest["model"]["members"]) == 3
    single, ensemble = section["rows"]["single"], section["rows"]["ensemble"]
    assert single["repeats"] == ensemble["repeats"] == 2 and single["clips"] == ensemble["clips"] == 3
    assert section["e2e_ratio"] == pytest.approx(ensemble["e2e_seconds"] / single["e2e_seconds"], rel=1e-3)
    assert single["spread"] is None and section["ensemble_spread"]["mi_std"] > 0  # distinct heads, one pass
    assert section["status"].startswith(("met", "not met", "not judged"))
    assert "| default:" in (out / "ensemble_cost.md").read_text()
    # A second run reuses what the first built.
    assert ensemble_cost.prepare("default", 3, tmp_path / "work")["build_seconds"] == {"single": None, "ensemble": None}


def _rows(single_s, joint_s):
    return {"single": {"e2e_seconds": single_s, "model_seconds": 1.0, "e2e_clips_per_s": 10 / single_s},
            "ensemble": {"e2e_seconds": joint_s, "model_seconds": 1.1, "e2e_clips_per_s": 10 / joint_s,
                         "spread": {"mi_std": [0.1, 0.3], "ta_std": [0.2]}}}


def test_the_verdict_reads_the_ratio_and_the_load():
    quiet, busy = {"busy": False}, {"busy": True}
    met = ensemble_cost.verdict(_rows(1.0, 1.1), quiet)
    assert met["status"] == "met" and met["e2e_ratio"] == 1.1 and met["ensemble_spread"] == {"mi_std": 0.2, "ta_std": 0.2}
    assert ensemble_cost.verdict(_rows(1.0, 1.3), quiet)["status"] == "not met"
    assert ensemble_cost.verdict(_rows(1.0, 1.1), busy)["status"] == "not judged: machine busy (would be: met)"
    failed = ensemble_cost.verdict({"single": {"error": "boom"}, "ensemble": {}}, quiet)
    assert failed["status"] == "not measured" and failed["detail"] == "boom"


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        ensemble_cost.main(["--out", "x", "--models", "nope"])
    with pytest.raises(SystemExit):
        ensemble_cost.main(["--out", "x", "--members", "1"])


def test_an_out_that_is_a_file_is_refused_before_any_build(tmp_path):
    a_file = tmp_path / "scores.csv"
    a_file.write_text("id,mi\n")
    with pytest.raises(SystemExit) as exit_info:
        ensemble_cost.main(["--out", str(a_file), "--work", str(tmp_path / "work")])
    assert exit_info.value.code == 2 and a_file.read_text() == "id,mi\n" and not (tmp_path / "work").exists()
