"""Manifests in, score files out: streaming, flushed per batch, atomic at the end, resumable.

Manifest: CSV (header) or JSONL with ``path`` and ``prompt``, optional ``id`` (default: the path's stem)
and ``system`` (default: the id's ``S###`` part, else empty); relative paths are relative to the
manifest. It is checked completely before any work (columns, lines, duplicate ids).

Score file (CSV or JSONL by extension): ``id, path, system, prompt, mi, ta, error``, with ``probs``
``mi_probs, ta_probs``, then the provenance ``backend, precision, bundle, deramos_rt``. A failed clip has
``error`` set and empty (CSV) / null (JSONL) scores. Rows go to ``OUT.partial``, flushed after every
batch of results; the finished file is renamed to ``OUT``. A killed job leaves a valid partial file with
every finished clip; resuming drops a torn last line and skips the ids already written. A per-system
summary (``OUT`` with ``.systems`` before the extension) is computed from the finished file.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from deramos_rt.errors import DeramosError
from deramos_rt.report import PARTIAL
from deramos_rt.pipeline import ClipRequest, make_request

log = logging.getLogger("deramos.io")

FORMATS = (".csv", ".jsonl")
REQUIRED = ("path", "prompt")
BASE_COLUMNS = ("id", "path", "system", "prompt", "mi", "ta", "error")
PROB_COLUMNS = ("mi_probs", "ta_probs")
PROVENANCE = ("backend", "precision", "bundle", "deramos_rt")
SUMMARY_COLUMNS = ("system", "clips", "failed", "mi_n", "mi_mean", "ta_n", "ta_mean")
FLUSH_ROWS = 32
PROGRESS_SECONDS = 2.0


def file_format(path: str | Path, what: str) -> str:
    """``.csv`` or ``.jsonl`` from the extension; anything else is refused."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DeramosError(f"{what} {path} must be .csv or .jsonl (by extension), got {suffix or 'no extension'!r}")
    return suffix


# --------------------------------------------------------------------------------------------- manifest


def _csv_records(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise DeramosError(f"manifest {path} is empty (expected a header with columns path, prompt)")
        fields = [c.strip() for c in reader.fieldnames]
        for column in REQUIRED:
            if column not in fields:
                raise DeramosError(f"manifest {path} lacks the required column {column!r} (header: {', '.join(fields)})")
        for row in reader:
            if None in row:
                raise DeramosError(f"manifest {path} line {reader.line_num}: more cells than header columns")
            yield reader.line_num, {k.strip(): v for k, v in row.items() if k is not None}


def jsonl_objects(path: Path, what: str = "manifest") -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSONL file; a bad line is an error naming it."""
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DeramosError(f"{what} {path} line {number} is not valid JSON: {exc.msg}") from exc
            if not isinstance(record, dict):
                raise DeramosError(f"{what} {path} line {number} is not a JSON object")
            yield number, record


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    for number, record in jsonl_objects(path):
        for column in REQUIRED:
            if column not in record:
                raise DeramosError(f"manifest {path} line {number} lacks the required field {column!r}")
        yield number, record


def _request(path: Path, number: int, record: dict) -> ClipRequest:
    audio = record.get("path")
    if not isinstance(audio, str) or not audio.strip():
        raise DeramosError(f"manifest {path} line {number}: empty or non-text 'path'")
    prompt = record.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise DeramosError(f"manifest {path} line {number}: 'prompt' must be text")
    audio_path = Path(audio)
    if not audio_path.is_absolute():
        audio_path = path.parent / audio_path
    fields = {"path": str(audio_path), "prompt": prompt or "", "id": record.get("id") or Path(audio).stem,
              "system": record.get("system")}
    return make_request(fields, number)


def iter_manifest(manifest: str | Path) -> Iterator[ClipRequest]:
    """The manifest's clips, in order (streamed).

    Raises:
        DeramosError: not .csv / .jsonl, unreadable, a required column or field missing, a bad line.
    """
    path = Path(manifest)
    kind = file_format(path, "manifest")
    if not path.is_file():
        raise DeramosError(f"manifest not found: {path}")
    records = _csv_records(path) if kind == ".csv" else _jsonl_records(path)
    try:
        for number, record in records:
            yield _request(path, number, record)
    except UnicodeDecodeError as exc:
        raise DeramosError(f"manifest {path} is not UTF-8 text: {exc}") from exc
    except csv.Error as exc:
        raise DeramosError(f"manifest {path} is not valid CSV: {exc}") from exc


def check_manifest(manifest: str | Path) -> int:
    """Read the whole manifest once before any work; returns its clip count.

    Raises:
        DeramosError: any manifest problem, or an id listed twice (naming both lines).
    """
    seen: dict[str, int] = {}
    count = 0
    for count, request in enumerate(iter_manifest(manifest), start=1):
        if request.id in seen:
            raise DeramosError(f"manifest {manifest}: id {request.id!r} is listed twice (clips #{seen[request.id]} "
                               f"and #{count}); give each clip a unique id (column 'id')")
        seen[request.id] = count
    if count == 0:
        raise DeramosError(f"manifest {manifest} lists no clips")
    return count


# ------------------------------------------------------------------------------------------ score files


def summary_path(out: str | Path) -> Path:
    """``scores.csv`` -> ``scores.systems.csv``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.systems{out.suffix}")


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def columns(probs: bool) -> tuple[str, ...]:
    return BASE_COLUMNS + (PROB_COLUMNS if probs else ()) + PROVENANCE


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)


def result_record(result, provenance: dict, probs: bool) -> dict:
    """The row of one :class:`~deramos_rt.scorer.ClipScore` (JSON-safe values; None for missing)."""
    record = {"id": result.id, "path": result.path, "system": result.system, "prompt": result.prompt,
              "mi": result.mi, "ta": result.ta, "error": result.error}
    if probs:
        record["mi_probs"], record["ta_probs"] = result.mi_probs, result.ta_probs
    record.update(provenance)
    return record


def complete_records(data: bytes, csv_format: bool) -> int:
    """Byte length of the leading complete records (a torn last line is cut off)."""
    end, start, quotes = 0, 0, 0
    while True:
        newline = data.find(b"\n", start)
        if newline < 0:
            return end
        quotes += data.count(b'"', start, newline)
        start = newline + 1
        if csv_format and quotes % 2:
            continue  # a newline inside a quoted CSV cell: the record goes on
        if not csv_format:
            try:
                json.loads(data[end:start])
            except ValueError:
                return end
        end, quotes = start, 0


def read_rows(path: str | Path) -> Iterator[dict]:
    """Stream the rows of a complete score file (CSV cells as text, JSONL values as parsed).

    A partial file is made complete first by :class:`ScoreWriter` (its torn last line is cut off).
    """
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as f:
        if _is_csv(path):
            yield from csv.DictReader(f)
            return
        for line in f:
            if line.strip():
                yield json.loads(line)


def _is_csv(path: Path) -> bool:
    return path.name.lower().removesuffix(".partial").endswith(".csv")


def _csv_header(path: Path) -> tuple[str, ...]:
    with path.open(encoding="utf-8", newline="") as f:
        return tuple(next(csv.reader(f), ()))


def _number(value) -> float | None:
    if value in (None, ""):
        return None
    return float(value)


class ScoreWriter:
    """Writes rows to ``OUT.partial`` (flushed per batch) and renames it to ``OUT`` when closed cleanly.

    Args:
        out: the final score file (.csv or .jsonl).
        provenance: the provenance columns' values.
        probs: also write ``mi_probs``, ``ta_probs``.
        resume: continue an existing ``OUT.partial`` or ``OUT`` (skipping its ids).
        overwrite: discard existing output.
        flush_every: rows written between flushes to disk (what a killed process can lose at most).

    Attributes:
        done: ids already in the output; failed_before: how many of those rows carry an error.

    Raises:
        DeramosError: output exists and neither ``resume`` nor ``overwrite``; resumed output with other
            columns or from another model.
    """

    def __init__(self, out: str | Path, provenance: dict, probs: bool = False, resume: bool = False,
                 overwrite: bool = False, flush_every: int = FLUSH_ROWS):
        self.out = Path(out)
        self.format = file_format(self.out, "output")
        self.partial = partial_path(self.out)
        self.provenance = dict(provenance)
        self.columns = columns(probs)
        self.probs = probs
        self.done: set[str] = set()
        self.failed_before = 0
        self.flush_every = max(1, int(flush_every))
        self._prepare_existing(resume, overwrite)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.partial.exists() or self.partial.stat().st_size == 0
        self._file = self.partial.open("a", encoding="utf-8", newline="")
        self._csv = csv.writer(self._file, lineterminator="\n") if self.format == ".csv" else None
        if fresh and self._csv is not None:
            self._csv.writerow(self.columns)
            self._file.flush()
        self._unflushed = 0

    def _prepare_existing(self, resume: bool, overwrite: bool) -> None:
        existing = [p for p in (self.partial, self.out) if p.exists()]
        if existing and overwrite:
            for p in existing:
                p.unlink()
            return
        if existing and not resume:
            raise DeramosError(f"output {existing[0]} already exists: pass --resume to continue it (finished clips "
                               "are skipped) or --overwrite to start again")
        if not existing:
            return
        if self.partial.exists():
            self._truncate_torn_tail()
            self._load_done(self.partial)
            if self.out.exists():
                self.out.unlink()  # the partial is the newer state of the same job
        else:
            self._load_done(self.out)  # checked before it is touched, so a refused resume changes nothing
            os.replace(self.out, self.partial)  # resume a finished file: reopen it as the partial

    def _truncate_torn_tail(self) -> None:
        data = self.partial.read_bytes()
        keep = complete_records(data, self.format == ".csv")
        if keep < len(data):
            log.warning("resume: dropped a torn last line of %s (%d bytes)", self.partial, len(data) - keep)
            with self.partial.open("r+b") as f:
                f.truncate(keep)

    def _load_done(self, path: Path) -> None:
        header = _csv_header(path) if self.format == ".csv" else self.columns
        if header and header != self.columns:
            raise DeramosError(f"cannot resume {path}: its columns ({', '.join(header)}) differ from this "
                               f"run's ({', '.join(self.columns)}); use the same --probs setting or --overwrite")
        for row in read_rows(path):
            if self.format == ".jsonl" and ("mi_probs" in row) != self.probs:
                raise DeramosError(f"cannot resume {path}: it was written {'with' if 'mi_probs' in row else 'without'} "
                                   "--probs; use the same --probs setting or --overwrite")
            if row.get("bundle") and row["bundle"] != self.provenance["bundle"]:
                raise DeramosError(f"cannot resume {path}: it was scored with model {row['bundle']}, this run "
                                   f"uses {self.provenance['bundle']}; use --overwrite or another --out")
            self.done.add(str(row["id"]))
            self.failed_before += bool(row.get("error"))

    def write(self, result) -> None:
        record = result_record(result, self.provenance, self.probs)
        if self._csv is not None:
            self._csv.writerow([_cell(record[c]) for c in self.columns])
        else:
            self._file.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        self.done.add(result.id)
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._unflushed = 0

    def finish(self) -> Path:
        """Flush, close and rename the partial file to the final name (atomic)."""
        self.flush()
        self._file.close()
        os.replace(self.partial, self.out)
        return self.out

    def abort(self) -> None:
        """Flush and close, keeping ``OUT.partial`` for a later resume."""
        if not self._file.closed:
            self._file.flush()
            self._file.close()


def summarize(out: str | Path) -> Path:
    """Write the per-system summary of a finished score file beside it (atomically); returns its path."""
    from deramos_rt.scorer import SystemTally

    tally, provenance = SystemTally(), {}
    for row in read_rows(out):
        tally.add(str(row.get("system") or ""), _number(row.get("mi")), _number(row.get("ta")), row.get("error") or None)
        provenance = {k: row.get(k) for k in PROVENANCE}
    path = summary_path(out)
    tmp = path.with_name(path.name + ".partial")
    rows = [{"system": s, **v, **provenance} for s, v in tally.summary().items()]
    with tmp.open("w", encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".csv":
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(SUMMARY_COLUMNS + PROVENANCE)
            writer.writerows([_cell(r.get(c)) for c in SUMMARY_COLUMNS + PROVENANCE] for r in rows)
        else:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------- the job


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
        return 0 if self.failed == 0 else PARTIAL


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
            print(f"[deramos] {self.count}/{self.total} clips, {rate:.1f} clips/s, {self.failed} failed, "
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
