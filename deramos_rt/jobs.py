"""A scoring job: checked clip requests in, one resumable score file out, with progress and counts.

A job cannot hurt its own inputs, its neighbours or finished work:

* before anything is touched, :func:`check_output` refuses an output (``OUT``, ``OUT.partial``, the summary
  ``OUT`` with ``.systems`` before the extension, its temporary file, and ``OUT.lock``) that is the manifest,
  the prompt table or an input audio file (the same path, or the same file through links), an ``OUT`` that
  is a folder or lies under a file, and an existing summary this tool did not write;
* while it writes, the job holds an exclusive lock (:class:`OutputLock`, ``fcntl.flock`` on ``OUT.lock``,
  which holds its pid), so a second job on the same output refuses, naming the holder; a lock left by a
  killed job is taken over;
* rows go through :class:`deramos_rt.scorefile.ScoreWriter` (``OUT.partial``, flushed every few rows,
  renamed to ``OUT`` at the end); a write that fails (a full disk) stops the job with one line naming the
  file and errno, every flushed clip kept for ``--resume``. A summary that cannot be written is a warning:
  the scores are complete, and the job's exit code is the scores'.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from deramos_rt.errors import EXIT_OK, EXIT_PARTIAL, DeramosError
from deramos_rt.pipeline import EMPTY_PROMPT, ClipRequest
from deramos_rt.scorefile import (FLUSH_ROWS, ScoreWriter, file_format, is_summary_file, partial_path, summarize,
                                  summary_path, write_error)

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 2.0


def lock_path(out: str | Path) -> Path:
    """``scores.csv`` -> ``scores.csv.lock``."""
    out = Path(out)
    return out.with_name(out.name + ".lock")


def output_files(out: str | Path) -> tuple[Path, ...]:
    """Every file a job on ``out`` writes: the score file, its partial, the summary, its partial, the lock."""
    summary = summary_path(out)
    return Path(out), partial_path(out), summary, partial_path(summary), lock_path(out)


@dataclass
class JobReport:
    """What a job did. ``exit_code``: 0 all scored, 3 some clips failed (whatever became of the summary).

    ``summary`` is None when it could not be written; ``summary_error`` then says why.
    """

    out: Path
    summary: Path | None
    total: int
    skipped: int
    scored: int
    failed: int
    prompts_truncated: int
    seconds: float
    summary_error: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.failed == 0 else EXIT_PARTIAL


@dataclass
class Job:
    """A checked job: where its clips come from and where it writes (build it with the functions below).

    Attributes:
        requests: gives a fresh iterator of the clip requests (read again while scoring: nothing is held).
        total: how many clips.
        out: the score file.
        inputs: the files it reads besides the audio (manifest, prompt table).
        mi_only: MI only on purpose (no prompts): an empty prompt is then not a failure.
    """

    requests: Callable[[], Iterable[ClipRequest]]
    total: int
    out: Path
    inputs: tuple[Path, ...] = ()
    mi_only: bool = False
    _lock: "OutputLock | None" = field(default=None, init=False, repr=False)

    @contextlib.contextmanager
    def locked(self) -> Iterator["Job"]:
        """Hold the output's lock (see :class:`OutputLock`); nested use by the same job holds it once."""
        if self._lock is not None:
            yield self
            return
        with OutputLock(self.out) as self._lock:
            try:
                yield self
            finally:
                self._lock = None


def make_job(requests: Callable[[], Iterable[ClipRequest]], total: int, out: str | Path,
             inputs: Iterable[str | Path] = (), mi_only: bool = False) -> Job:
    """A :class:`Job` whose output has been checked (:func:`check_output`)."""
    file_format(out, "output")
    job = Job(requests, total, Path(out), tuple(Path(p) for p in inputs), mi_only)
    check_output(job)
    return job


def manifest_job(manifest: str | Path, out: str | Path) -> Job:
    """The job of a manifest, read completely and checked before any work (``deramos_rt.manifest``)."""
    from deramos_rt.manifest import check_manifest, iter_manifest

    file_format(out, "output")
    total = check_manifest(manifest)
    return make_job(lambda: iter_manifest(manifest), total, out, inputs=(manifest,))


def folder_job(folder: str | Path, out: str | Path, prompts: str | Path | None = None) -> Job:
    """The job of every audio file under a folder (``deramos_rt.folder``); without ``prompts``, MI only."""
    from deramos_rt.folder import list_folder

    file_format(out, "output")
    listing = list_folder(folder, prompts)
    return make_job(listing.requests, len(listing), out, inputs=() if prompts is None else (prompts,),
                    mi_only=prompts is None)


# ------------------------------------------------------------------------------------------ output checks


def check_output(job: Job) -> None:
    """Refuse, before anything is touched, an output that would hurt an input or a file we did not write.

    Raises:
        DeramosError: one line naming the output and the input (or the problem); see the module docstring.
    """
    check_location(job.out)
    summary = summary_path(job.out)
    if summary.exists() and not is_summary_file(summary):
        raise DeramosError(f"{summary} exists and is not a summary written by deramos-rt, so it is not overwritten "
                           f"by the summary of --out {job.out}: move it away or choose another --out")
    lock = lock_path(job.out)
    if lock.is_file() and not _lock_text(lock):
        raise DeramosError(f"{lock} exists and is not a lock file of deramos-rt: move it away or choose another --out")
    inputs = itertools.chain(job.inputs, (Path(r.path) for r in job.requests() if r.path is not None))
    clash = first_clash(output_files(job.out), inputs)
    if clash is not None:
        output, source = clash
        raise DeramosError(f"output {output} would overwrite the input {source}: choose another --out "
                           "(nothing was written)")


def check_location(out: Path) -> None:
    """``out`` and its companions are not folders, and the nearest existing folder above it is a folder."""
    for path in output_files(out):
        if path.is_dir():
            raise DeramosError(f"--out {out}: {path} is a folder; give a score file such as {out / 'scores.csv'}"
                               if path == out else f"--out {out}: {path} is a folder, in the way of the job's files")
    for parent in Path(os.path.abspath(out)).parents:
        if parent.exists():
            if not parent.is_dir():
                raise DeramosError(f"--out {out}: {parent} is a file, not a folder")
            return


def first_clash(outputs: Iterable[Path], inputs: Iterable[Path]) -> tuple[Path, Path] | None:
    """The first ``(output, input)`` that are the same path, or the same existing file through links."""
    outputs = list(outputs)
    by_path = {os.path.abspath(p): p for p in outputs}
    by_inode = {}
    for path in outputs:
        with contextlib.suppress(OSError):
            st = path.stat()
            by_inode[(st.st_dev, st.st_ino)] = path
    for source in inputs:
        hit = by_path.get(os.path.abspath(source))
        if hit is None and by_inode:  # only an output that exists can be an existing input through a link
            with contextlib.suppress(OSError):
                st = source.stat()
                hit = by_inode.get((st.st_dev, st.st_ino))
        if hit is not None:
            return hit, source
    return None


# --------------------------------------------------------------------------------------------------- lock


def _lock_text(path: Path) -> bool:
    """Whether a lock file holds what ours hold: a pid, or nothing (a job killed before writing it)."""
    try:
        return re.fullmatch(rb"\s*\d*\s*", path.read_bytes()[:64]) is not None
    except OSError:
        return True  # unreadable here: the lock itself decides below


class OutputLock:
    """An exclusive lock on ``OUT.lock`` (``fcntl.flock``), which holds the holder's pid; removed on release.

    The kernel drops the lock when its process dies, so the file a killed job leaves behind is simply
    taken over. Works on local file systems; on one without ``flock`` the job refuses to start.

    Raises:
        DeramosError: another job holds the lock (naming its pid), or the lock file cannot be created.
    """

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.path = lock_path(out)
        self._fd: int | None = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock (without waiting) and write this process's pid into the lock file."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while self._fd is None:
                self._fd = self._try_lock()
        except OSError as exc:
            raise write_error(exc.filename or self.path, exc, " (the lock of the output)") from exc
        self._write_pid()

    def _try_lock(self) -> int | None:
        """The locked descriptor, or None when the file was replaced meanwhile (try again)."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise DeramosError(f"output {self.out} is being written by another job (pid {holder or 'unknown'}, "
                               f"lock {self.path}): wait for it to finish or choose another --out") from None
        except OSError:
            os.close(fd)
            raise
        if _same_file(fd, self.path):
            return fd
        os.close(fd)  # its last holder removed the file between our open and our lock: lock the new one
        return None

    def _write_pid(self) -> None:
        previous = _read_pid(self._fd)
        if previous and previous != os.getpid():
            log.warning("took over the lock %s left by pid %d, which no longer holds it (killed?)", self.path, previous)
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # a full disk: the lock holds without the pid; the job's first write will say more
            log.warning("could not write the pid into %s: %s", self.path, exc)

    def release(self) -> None:
        """Remove the lock file and drop the lock (a no-op when not held)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # before closing, so a waiting job never locks a file that is going away
        os.close(self._fd)
        self._fd = None


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 64, 0).strip()
    return int(text) if text.isdigit() else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st, now = os.fstat(fd), path.stat()
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


# --------------------------------------------------------------------------------------------------- run


class Progress:
    """A stderr line with clips/s every few seconds (no dependency)."""

    def __init__(self, total: int, every: float = PROGRESS_SECONDS, stream=None):
        self.total, self.every, self.stream = total, every, stream
        self.start = self.last = time.perf_counter()
        self.count = 0
        self.failed = 0

    def update(self, failed: bool) -> None:
        self.count += 1
        self.failed += failed
        now = time.perf_counter()
        if self.stream is not None and now - self.last >= self.every:
            self.last = now
            rate = self.count / max(now - self.start, 1e-9)
            left = (self.total - self.count) / rate if rate > 0 else math.inf
            print(f"[deramos_rt] {self.count}/{self.total} clips, {rate:.1f} clips/s, {self.failed} failed, "
                  f"~{left:.0f} s left", file=self.stream, flush=True)


def run_job(scorer, job: Job, resume: bool = True, probs: bool = False, overwrite: bool = False,
            progress_stream=None) -> JobReport:
    """Score a checked job into its output, holding the output's lock.

    Args:
        scorer: a :class:`deramos_rt.scorer.Scorer`.
        job: from :func:`manifest_job`, :func:`folder_job` or :func:`make_job`.
        resume: skip clips already in ``OUT.partial`` / ``OUT``.
        probs: write the 20-bin distributions too.
        overwrite: discard existing output instead.
        progress_stream: where to print progress lines (None: nowhere).

    Raises:
        DeramosError: output that cannot be resumed, another job on the output, a failed write.
    """
    with job.locked():
        start = time.perf_counter()
        writer = ScoreWriter(job.out, scorer.provenance, probs=probs, resume=resume, overwrite=overwrite,
                             flush_every=min(scorer.batch_size, FLUSH_ROWS))
        skipped = len(writer.done)
        todo = (r for r in job.requests() if r.id not in writer.done)
        truncated_before = scorer.counts["prompts_truncated"]
        progress = Progress(max(job.total - skipped, 0), stream=progress_stream)
        scored, failed = _write_scores(scorer, writer, todo, job.mi_only, progress)
        final = writer.finish()
        summary, summary_error = _summary(final)
        return JobReport(final, summary, job.total, skipped, scored, failed + writer.failed_before,
                         scorer.counts["prompts_truncated"] - truncated_before, time.perf_counter() - start,
                         summary_error)


def _write_scores(scorer, writer: ScoreWriter, todo: Iterable[ClipRequest], mi_only: bool,
                  progress: Progress) -> tuple[int, int]:
    """Score and write every request; returns (scored, failed). Stopped early, what was written is kept."""
    scored = failed = 0
    try:
        for result in scorer.iter_scores(todo):
            if mi_only and result.error == EMPTY_PROMPT:
                result.error = None  # MI only on purpose: an empty TA is what was asked for
            writer.write(result)
            failed += result.error is not None
            scored += result.error is None
            progress.update(result.error is not None)
    except BaseException:
        writer.abort()
        raise
    return scored, failed


def _summary(out: Path) -> tuple[Path | None, str | None]:
    """Write the per-system summary; a failure is reported, never a failure of the complete scores."""
    try:
        return summarize(out), None
    except OSError as exc:
        error = str(write_error(exc.filename or summary_path(out), exc))
        log.warning("the scores in %s are complete, but the per-system summary was not written: %s", out, error)
        return None, error


def score_manifest(scorer, manifest: str | Path, out: str | Path, resume: bool = True, probs: bool = False,
                   overwrite: bool = False, progress_stream=None) -> JobReport:
    """Check a manifest and its output completely, then stream it through ``scorer`` into ``out``.

    Args:
        scorer: a :class:`deramos_rt.scorer.Scorer`.
        manifest: CSV or JSONL manifest.
        out: score file (.csv or .jsonl); ``OUT.partial`` while running.
        resume, probs, overwrite, progress_stream: as for :func:`run_job`.

    Raises:
        DeramosError: a bad manifest or output (before any work), output that cannot be resumed, another job
            on the output, a failed write.
    """
    return run_job(scorer, manifest_job(manifest, out), resume=resume, probs=probs, overwrite=overwrite,
                   progress_stream=progress_stream)


def score_folder(scorer, folder: str | Path, out: str | Path, prompts: str | Path | None = None,
                 resume: bool = True, probs: bool = False, overwrite: bool = False, progress_stream=None) -> JobReport:
    """Score every audio file under ``folder`` into ``out`` (see ``deramos_rt.folder``); as :func:`score_manifest`."""
    return run_job(scorer, folder_job(folder, out, prompts), resume=resume, probs=probs, overwrite=overwrite,
                   progress_stream=progress_stream)
