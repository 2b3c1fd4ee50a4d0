"""A scoring job: clip requests (a manifest) in, one resumable score file out, with progress and counts.

Rows are written through :class:`deramos_rt.scorefile.ScoreWriter` (``OUT.partial``, flushed every few
rows, renamed to ``OUT`` at the end); the per-system summary is computed from the finished file.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from deramos_rt.errors import EXIT_OK, EXIT_PARTIAL
from deramos_rt.manifest import check_manifest, iter_manifest
from deramos_rt.pipeline import ClipRequest
from deramos_rt.scorefile import FLUSH_ROWS, ScoreWriter, summarize

PROGRESS_SECONDS = 2.0


@dataclass
class JobReport:
    """What a manifest job did. ``exit_code``: 0 all scored, 3 some clips failed."""

    out: Path
    summary: Path
    total: int
    skipped: int
    scored: int
    failed: int
    prompts_truncated: int
    seconds: float

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.failed == 0 else EXIT_PARTIAL


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


def score_requests(scorer, requests: Iterable[ClipRequest], out: str | Path, total: int, resume: bool = True,
                   probs: bool = False, overwrite: bool = False, progress_stream=None) -> JobReport:
    """Score clip requests into ``out`` (resumable; see the module docstring)."""
    start = time.perf_counter()
    writer = ScoreWriter(out, scorer.provenance, probs=probs, resume=resume, overwrite=overwrite,
                         flush_every=min(scorer.batch_size, FLUSH_ROWS))
    skipped = len(writer.done)
    todo = (r for r in requests if r.id not in writer.done)
    progress = Progress(max(total - skipped, 0), stream=progress_stream)
    failed = scored = 0
    truncated_before = scorer.counts["prompts_truncated"]
    try:
        for result in scorer.iter_scores(todo):
            writer.write(result)
            failed += result.error is not None
            scored += result.error is None
            progress.update(result.error is not None)
    except BaseException:
        writer.abort()
        raise
    final = writer.finish()
    failed += writer.failed_before
    return JobReport(final, summarize(final), total, skipped, scored, failed,
                     scorer.counts["prompts_truncated"] - truncated_before, time.perf_counter() - start)


def score_manifest(scorer, manifest: str | Path, out: str | Path, resume: bool = True, probs: bool = False,
                   overwrite: bool = False, progress_stream=None) -> JobReport:
    """Check a manifest completely, then stream it through ``scorer`` into ``out``.

    Args:
        scorer: a :class:`deramos_rt.scorer.Scorer`.
        manifest: CSV or JSONL manifest.
        out: score file (.csv or .jsonl); ``OUT.partial`` while running.
        resume: skip clips already in ``OUT.partial`` / ``OUT``.
        probs: write the 20-bin distributions too.
        overwrite: discard existing output instead.
        progress_stream: where to print progress lines (None: nowhere).

    Raises:
        DeramosError: a bad manifest (before any work) or output that cannot be resumed.
    """
    total = check_manifest(manifest)
    return score_requests(scorer, iter_manifest(manifest), out, total, resume=resume, probs=probs,
                          overwrite=overwrite, progress_stream=progress_stream)
