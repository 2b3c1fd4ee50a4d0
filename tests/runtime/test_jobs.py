"""Jobs that cannot hurt their inputs or each other: output checks, the lock, de-duplicated resume, write errors."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deramos_rt import jobs, scorefile
from deramos_rt.cli import main
from deramos_rt.errors import DeramosError
from deramos_rt.manifest import iter_manifest
from tests.runtime.conftest import write_clip, write_manifest

REPO = Path(__file__).resolve().parents[2]


def _rows(path):
    return list(scorefile.read_rows(path))


def _cli(manifest, out, bundle, *extra):
    return main(["score", str(manifest), "--out", str(out), "--bundle", str(bundle), "--backend", "onnxruntime",
                 "--workers", "1", *extra])


def _failed_lines(capsys):
    """The FAILED lines the command printed (its logging goes to stderr)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("[deramos_rt] FAILED")]


# ---------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("suffix,flag", [(".csv", "--overwrite"), (".jsonl", "--resume")])
def test_out_equal_to_the_manifest_is_refused_before_anything_is_touched(tiny_bundle, clips, tmp_path, capsys,
                                                                         suffix, flag):
    manifest = tmp_path / f"m{suffix}"
    if suffix == ".csv":
        write_manifest(manifest, clips)
    else:
        manifest.write_text("".join(f'{{"path": "{p}", "prompt": "{t}"}}\n' for p, t in clips), encoding="utf-8")
    before = manifest.read_bytes()
    assert _cli(manifest, manifest, tiny_bundle, flag) == 2
    [line] = _failed_lines(capsys)
    assert f"output {manifest} would overwrite the input {manifest}" in line
    assert manifest.read_bytes() == before and sorted(tmp_path.iterdir()) == [manifest]


def test_summary_path_equal_to_the_manifest_is_refused(tiny_bundle, clips, tmp_path, capsys):
    manifest = write_manifest(tmp_path / "scores.systems.csv", clips)
    before = manifest.read_bytes()
    assert _cli(manifest, tmp_path / "scores.csv", tiny_bundle) == 2
    [line] = _failed_lines(capsys)
    assert str(manifest) in line and "is not a summary written by deramos-rt" in line
    assert manifest.read_bytes() == before and not (tmp_path / "scores.csv.partial").exists()


def test_out_that_is_an_input_audio_file_through_a_link_is_refused(tiny_bundle, tmp_path, capsys):
    clip = write_clip(tmp_path / "take1.wav")
    before = clip.read_bytes()
    (tmp_path / "scores.csv").symlink_to(clip)  # the same file under the output's name
    manifest = write_manifest(tmp_path / "m.csv", [(str(clip), "calm piano")])
    assert _cli(manifest, tmp_path / "scores.csv", tiny_bundle, "--overwrite") == 2
    [line] = _failed_lines(capsys)
    assert f"output {tmp_path / 'scores.csv'} would overwrite the input {clip}" in line
    assert clip.read_bytes() == before and not (tmp_path / "scores.csv.lock").exists()


def test_an_input_listed_under_the_outputs_partial_name_is_refused(tmp_path):
    audio = tmp_path / "scores.csv.partial"
    audio.write_bytes(b"not really audio")
    manifest = write_manifest(tmp_path / "m.csv", [(str(audio), "x")])
    with pytest.raises(DeramosError, match=r"output .*scores\.csv\.partial would overwrite the input .*scores\.csv\.partial"):
        jobs.manifest_job(manifest, tmp_path / "scores.csv")
    assert audio.read_bytes() == b"not really audio"


def test_a_foreign_summary_is_never_overwritten_but_ours_is(tiny_bundle, clips, tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.csv", clips[:2])
    notes = tmp_path / "scores.systems.csv"
    notes.write_text("my,own,notes\n1,2,3\n")
    assert _cli(manifest, tmp_path / "scores.csv", tiny_bundle) == 2
    assert "is not a summary written by deramos-rt" in _failed_lines(capsys)[0]
    assert notes.read_text() == "my,own,notes\n1,2,3\n"
    notes.unlink()
    assert _cli(manifest, tmp_path / "scores.csv", tiny_bundle) == 0
    assert scorefile.is_summary_file(notes)
    assert _cli(manifest, tmp_path / "scores.csv", tiny_bundle, "--overwrite") == 0  # our own is replaced


@pytest.mark.parametrize("layout,match", [("dir", "is a folder; give a score file"),
                                          ("parent-file", "is a file, not a folder")])
def test_out_that_is_a_folder_or_under_a_file_is_one_line(tiny_bundle, clips, tmp_path, capsys, layout, match):
    manifest = write_manifest(tmp_path / "m.csv", clips[:1])
    if layout == "dir":
        out = tmp_path / "scores.csv"
        out.mkdir()
    else:
        (tmp_path / "results").write_text("a file")
        out = tmp_path / "results" / "sub" / "scores.csv"
    assert _cli(manifest, out, tiny_bundle) == 2
    [line] = _failed_lines(capsys)
    assert match in line and str(out) in line and "\n" not in line


# ------------------------------------------------------------------------------------------------- lock


HOLD = ("import sys, time; from deramos_rt.jobs import OutputLock; lock = OutputLock(sys.argv[1]); "
        "lock.acquire(); print('locked', flush=True); time.sleep(120)")


def test_lock_refuses_a_second_holder_naming_its_pid_and_takes_over_after_a_kill(tmp_path, caplog):
    out = tmp_path / "scores.csv"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DeramosError, match=rf"being written by another job \(pid {holder.pid}, lock "):
            jobs.OutputLock(out).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert jobs.lock_path(out).read_text().strip() == str(holder.pid)  # a killed holder leaves its file
    with jobs.OutputLock(out):
        assert jobs.lock_path(out).read_text().strip() == str(os.getpid())
        assert any(f"left by pid {holder.pid}" in r.getMessage() for r in caplog.records)
    assert not jobs.lock_path(out).exists()  # removed at the end


def test_a_foreign_file_under_the_locks_name_is_not_overwritten(clips, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", clips[:1])
    (tmp_path / "scores.csv.lock").write_text("my lock notes")
    with pytest.raises(DeramosError, match="is not a lock file of deramos-rt"):
        jobs.manifest_job(manifest, tmp_path / "scores.csv")
    assert (tmp_path / "scores.csv.lock").read_text() == "my lock notes"


# ------------------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_resumed_file_with_duplicates_keeps_one_row_per_id(torch_scorer, clips, tmp_path, suffix):
    manifest = write_manifest(tmp_path / "m.csv", clips)
    out = tmp_path / f"scores{suffix}"
    first = jobs.score_manifest(torch_scorer, manifest, out)
    assert first.scored == len(clips)
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    body = lines[1:] if suffix == ".csv" else lines
    out.write_text("".join(lines + body[:4]), encoding="utf-8")  # as two jobs at once once left it
    report = jobs.score_manifest(torch_scorer, manifest, out)
    ids = [r["id"] for r in _rows(out)]
    assert sorted(ids) == sorted(r.id for r in iter_manifest(manifest))
    assert len(ids) == len(set(ids)) == len(clips) and report.skipped == len(clips) and report.failed == 0
    summary = {r["system"]: int(r["clips"]) for r in _rows(report.summary)}
    assert sum(summary.values()) == len(clips)


# ----------------------------------------------------------------------------------------- write errors


def _long_manifest(tmp_path, clips, count, prompt_chars):
    rows = [(clips[i % len(clips)][0], f"{i} " + "slow piano " * (prompt_chars // 11), f"clip{i:04d}")
            for i in range(count)]
    return write_manifest(tmp_path / "m.csv", rows), [r[2] for r in rows]


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 KiB file system (tmpfs), so that a write fails with ENOSPC."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root to mount a 64 KiB tmpfs (a real full disk)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_one_line_and_the_partial_file_resumes(tiny_bundle, clips, tmp_path, small_disk, capsys):
    manifest, ids = _long_manifest(tmp_path, clips, 60, 500)  # about 0.7 KiB a row, 42 KiB in all
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"x" * 40 * 1024)  # leaves about 20 KiB for the job
    out = small_disk / "scores.csv"
    assert _cli(manifest, out, tiny_bundle, "--batch-size", "2") == 2
    [line] = _failed_lines(capsys)
    assert f"cannot write {out}.partial: No space left on device (errno {errno.ENOSPC} ENOSPC)" in line
    assert "rerun with --resume" in line and not out.exists() and not jobs.lock_path(out).exists()
    kept = scorefile.partial_path(out).read_bytes()
    assert len(kept) > 10_000  # the clips before the disk filled up are there
    ballast.unlink()  # make room
    assert _cli(manifest, out, tiny_bundle, "--resume") == 0
    written = [r["id"] for r in _rows(out)]
    assert sorted(written) == ids and len(set(written)) == len(ids)
    assert "resumed past" in capsys.readouterr().err


def test_an_injected_write_error_keeps_every_flushed_clip(tiny_bundle, clips, tmp_path, capsys, monkeypatch):
    manifest, ids = _long_manifest(tmp_path, clips, 20, 22)
    out = tmp_path / "scores.jsonl"
    real_fsync, calls = os.fsync, []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(scorefile.os, "fsync", failing_fsync)
    assert _cli(manifest, out, tiny_bundle, "--batch-size", "4") == 2
    assert f"cannot write {out}.partial: Input/output error (errno {errno.EIO} EIO)" in _failed_lines(capsys)[0]
    kept = [r["id"] for r in _rows(scorefile.partial_path(out))]
    assert kept == ids[: len(kept)] and len(kept) >= 8  # two flushes of 4 rows made it to disk
    monkeypatch.setattr(scorefile.os, "fsync", real_fsync)
    assert _cli(manifest, out, tiny_bundle, "--resume") == 0
    assert sorted(r["id"] for r in _rows(out)) == ids


@pytest.mark.parametrize("bad_clip,code", [(False, 0), (True, 3)])
def test_when_only_the_summary_fails_the_complete_scores_keep_their_exit_code(tiny_bundle, clips, tmp_path,
                                                                              capsys, monkeypatch, bad_clip, code):
    rows = clips[:3] + ([(str(tmp_path / "gone.wav"), "x")] if bad_clip else [])
    manifest = write_manifest(tmp_path / "m.csv", rows)

    def full_disk(path, rows, cols):
        raise OSError(errno.ENOSPC, "No space left on device", str(scorefile.partial_path(path)))

    monkeypatch.setattr(scorefile, "write_rows", full_disk)
    out = tmp_path / "scores.csv"
    assert _cli(manifest, out, tiny_bundle) == code
    assert len(_rows(out)) == len(rows) and not scorefile.summary_path(out).exists()
    printed = capsys.readouterr()
    assert "the scores in" in printed.err and "are complete" in printed.err and "errno 28 ENOSPC" in printed.err
    assert "FAILED" not in printed.err and "the per-system summary was not written" in printed.out


# ------------------------------------------------------------------------------------------ special inputs


def test_a_fifo_a_folder_and_a_device_are_named_for_what_they_are(torch_scorer, clips, tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    rows = [(str(fifo), "x", "fifo"), (str(folder), "x", "dir"), ("/dev/null", "x", "dev"),
            (str(tmp_path / "gone.wav"), "x", "gone"), (clips[0][0], clips[0][1], "ok")]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    report = jobs.score_manifest(torch_scorer, manifest, tmp_path / "scores.csv")
    errors = {r["id"]: r["error"] for r in _rows(report.out)}
    assert errors == {"fifo": f"not a regular file: FIFO {fifo}", "dir": f"not a regular file: directory {folder}",
                      "dev": "not a regular file: character device /dev/null",
                      "gone": f"audio file not found: {tmp_path / 'gone.wav'}", "ok": ""}
    assert report.exit_code == 3
