"""``deramos-rt``: score (exit codes, identical scores, kill and resume), MusicEval, report, info."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deramos_rt import scorefile
from deramos_rt.cli import main
from deramos_rt.scorer import Scorer
from tests.runtime.conftest import write_manifest

REPO = Path(__file__).resolve().parents[2]


def _rows(path):
    return list(scorefile.read_rows(path))


def test_score_api_manifest_and_cli_give_identical_scores(tiny_bundle, clips, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", clips)
    scorer = Scorer(tiny_bundle, backend="onnxruntime", batch_size=4, decode_workers=2)
    direct = scorer.score(clips)
    report = scorer.score_manifest(manifest, tmp_path / "api.jsonl")
    assert report.exit_code == 0 and report.scored == len(clips)
    code = main(["score", str(manifest), "--out", str(tmp_path / "cli.csv"), "--bundle", str(tiny_bundle),
                 "--backend", "onnxruntime", "--batch-size", "3", "--workers", "1", "--probs"])
    assert code == 0
    api, cli = _rows(tmp_path / "api.jsonl"), _rows(tmp_path / "cli.csv")
    for d, a, c in zip(direct, api, cli, strict=True):
        # The clips lie outside the manifest's folder: their default id is their whole path without the
        # extension (issue 23; it was the stem, which Scorer.score still gives).
        assert d.id == Path(d.path).stem and a["id"] == c["id"] == str(Path(d.path).with_suffix(""))
        assert d.mi == a["mi"] == float(c["mi"]) and d.ta == a["ta"] == float(c["ta"])
        assert c["backend"] == "onnxruntime" and c["precision"] == "fp32" and len(c["bundle"]) == 16
    assert (tmp_path / "cli.systems.csv").is_file() and (tmp_path / "api.systems.jsonl").is_file()


def test_exit_codes_failed_clips_and_refused_jobs(tiny_bundle, clips, tmp_path):
    common = ["--bundle", str(tiny_bundle), "--backend", "onnxruntime"]
    bad = write_manifest(tmp_path / "bad.csv", [clips[0], (str(tmp_path / "gone.wav"), "x"), (clips[1][0], "")])
    assert main(["score", str(bad), "--out", str(tmp_path / "s.csv"), *common]) == 3
    rows = _rows(tmp_path / "s.csv")
    assert [bool(r["error"]) for r in rows] == [False, True, True] and rows[2]["mi"] and not rows[2]["ta"]
    (tmp_path / "nocol.csv").write_text("file,prompt\na.wav,x\n")
    assert main(["score", str(tmp_path / "nocol.csv"), "--out", str(tmp_path / "t.csv"), *common]) == 2
    assert not (tmp_path / "t.csv.partial").exists()
    assert main(["score", str(bad), "--out", str(tmp_path / "s.csv"), *common]) == 2  # exists, no --resume
    # A resumed job whose earlier rows hold failures still reports them (nothing new to score).
    assert main(["score", str(bad), "--out", str(tmp_path / "s.csv"), "--resume", *common]) == 3
    assert main(["score", str(bad), "--out", str(tmp_path / "u.csv"), "--bundle", str(tmp_path)]) == 2


def test_killed_job_resumes_without_missing_or_duplicated_clips(tiny_bundle, clips, tmp_path):
    rows = [(clips[i % len(clips)][0], clips[i % len(clips)][1], f"clip{i:05d}") for i in range(1500)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "scores.csv"
    command = [sys.executable, "-m", "deramos_rt.cli", "score", str(manifest), "--out", str(out), "--bundle",
               str(tiny_bundle), "--backend", "onnxruntime", "--batch-size", "1", "--workers", "1", "--threads", "1"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = scorefile.partial_path(out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.exists() and partial.stat().st_size > 4000:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the job finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial.exists() and not out.exists()
    resumed = subprocess.run(command + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ids = [r["id"] for r in _rows(out)]
    assert sorted(ids) == [r[2] for r in rows] and len(set(ids)) == len(rows)
    assert "resumed past" in resumed.stderr


def test_a_second_job_on_the_same_output_is_refused_and_a_killed_jobs_lock_is_taken_over(tiny_bundle, clips, tmp_path):
    rows = [(clips[i % len(clips)][0], clips[i % len(clips)][1], f"clip{i:05d}") for i in range(1500)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "scores.csv"
    command = [sys.executable, "-m", "deramos_rt.cli", "score", str(manifest), "--out", str(out), "--bundle",
               str(tiny_bundle), "--backend", "onnxruntime", "--workers", "1", "--threads", "1"]
    first = subprocess.Popen(command + ["--batch-size", "1"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = scorefile.partial_path(out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None and not (partial.exists() and partial.stat().st_size > 4000):
        time.sleep(0.02)
    assert first.poll() is None, "the first job finished before the second could start"
    os.kill(first.pid, signal.SIGSTOP)  # paused with its lock held, however long the second takes to start
    try:
        second = subprocess.run(command + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert second.returncode == 2
    [refusal] = [line for line in second.stderr.splitlines() if "FAILED" in line]
    assert f"is being written by another job (pid {first.pid}, lock {out}.lock)" in refusal
    assert (tmp_path / "scores.csv.lock").read_text().strip() == str(first.pid)  # the killed job's lock is left
    third = subprocess.run(command + ["--resume", "--batch-size", "8"], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"took over the lock {out}.lock left by pid {first.pid}" in third.stderr
    ids = [r["id"] for r in _rows(out)]
    assert sorted(ids) == [r[2] for r in rows] and len(set(ids)) == len(rows)  # nothing lost, nothing twice
    assert not (tmp_path / "scores.csv.lock").exists()


def test_a_prompt_longer_than_the_csv_cell_limit_resumes_compares_and_counts_as_truncated(tiny_bundle, clips,
                                                                                           tmp_path, capsys):
    from deramos_rt.compare import read_scores

    long = "a slow and very long piano piece " * 5000  # 165,000 characters: over csv's default 131,072
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"path": p, "prompt": long if i == 0 else t, "id": f"c{i}"}) + "\n"
                                for i, (p, t) in enumerate(clips)), encoding="utf-8")
    out = tmp_path / "scores.csv"
    common = ["--bundle", str(tiny_bundle), "--backend", "onnxruntime"]
    assert main(["score", str(manifest), "--out", str(out), *common]) == 0
    assert "prompts truncated 1;" in capsys.readouterr().err
    assert main(["score", str(manifest), "--out", str(out), "--resume", *common]) == 0
    assert f"resumed past {len(clips)}" in capsys.readouterr().err
    clips_read = read_scores(out)
    assert clips_read[0].prompt == long.strip() and len(clips_read) == len(clips)
    assert main(["compare", str(out), "--out", str(tmp_path / "report"), "--resamples", "200"]) == 0


def test_musiceval_split_prints_metrics(tiny_bundle, tmp_path, capsys):
    from training.fixtures import make_fixture_corpus

    corpus = make_fixture_corpus(tmp_path / "me", n_train=2, n_dev=2, n_test=12, systems=3, seed=1)
    code = main(["score", "--musiceval", str(corpus), "--split", "test", "--out", str(tmp_path / "me.csv"),
                 "--bundle", str(tiny_bundle), "--backend", "onnxruntime"])
    printed = capsys.readouterr().out
    assert code == 0
    for line in ("MI utterance", "MI system", "TA utterance", "TA system"):
        assert line in printed and "SRCC" in printed
    assert {r["system"] for r in _rows(tmp_path / "me.csv")} <= {"S001", "S002", "S003"}


def test_report_runs_compare_on_the_finished_file(tiny_bundle, clips, tmp_path, monkeypatch):
    from deramos_rt import cli

    seen = {}
    monkeypatch.setattr(cli, "run_compare", lambda args: seen.update(vars(args)) or 0)
    manifest = write_manifest(tmp_path / "m.csv", clips)
    assert main(["score", str(manifest), "--out", str(tmp_path / "s.csv"), "--bundle", str(tiny_bundle),
                 "--backend", "onnxruntime", "--report", str(tmp_path / "report")]) == 0
    assert seen["scores"] == str(tmp_path / "s.csv") and seen["out"] == str(tmp_path / "report")


def test_info_lists_backends_and_what_is_missing(capsys):
    assert main(["info"]) == 0
    printed = capsys.readouterr().out
    for name in ("onnxruntime", "tensorrt", "aoti", "torch"):
        assert f"backend {name}" in printed
    assert "built-in model 'default': bundle" in printed
