"""The score-file format: its columns, cell encoding, reading, writing and the per-system summary.

Every tool that writes or reads per-clip scores goes through this module: the single-process job
(``deramos_rt.jobs``), the Ray job (``deramos_rt.distributed``) and the comparison (``deramos_rt.compare``).

Score file (CSV or JSONL by extension): ``id, path, system, prompt, mi, ta, mi_std, ta_std, error`` (the
``*_std`` cells: an ensemble's members' spread, empty for one model), with ``probs``
``mi_probs, ta_probs``, then the provenance ``backend, precision, bundle, deramos_rt``. A failed clip has
``error`` set and empty (CSV) / null (JSONL) scores; in CSV a float is written with ``repr`` (exact round
trip) and a distribution as JSON text. Rows go to ``OUT.partial``, flushed every few rows; the finished
file is renamed to ``OUT``. A killed job leaves a valid partial file with every flushed clip; resuming
drops a torn last line, keeps one row per id (the first) and skips the ids already written. A write that
fails (a full disk) is a :class:`DeramosError` naming the file and the errno, with the partial file kept
for a resume. The per-system summary (``OUT`` with ``.systems`` before the extension) is computed from the
finished file; its header tells it apart from files this tool did not write (:func:`is_summary_file`).
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator

from deramos_rt.errors import DeramosError

log = logging.getLogger(__name__)

FORMATS = (".csv", ".jsonl")
BASE_COLUMNS = ("id", "path", "system", "prompt", "mi", "ta", "mi_std", "ta_std", "error")
PROB_COLUMNS = ("mi_probs", "ta_probs")
PROVENANCE = ("backend", "precision", "bundle", "deramos_rt")
SUMMARY_COLUMNS = ("system", "clips", "failed", "mi_n", "mi_mean", "ta_n", "ta_mean")
FLUSH_ROWS = 32


def file_format(path: str | Path, what: str) -> str:
    """``.csv`` or ``.jsonl`` from the extension; anything else is refused."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DeramosError(f"{what} {path} must be .csv or .jsonl (by extension), got {suffix or 'no extension'!r}")
    return suffix


def allow_long_csv_fields() -> None:
    """Let the csv module read cells as long as any this tool writes (a prompt can exceed csv's 128 KiB)."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # the C long is 32 bits on some platforms
            limit //= 2


def columns(probs: bool) -> tuple[str, ...]:
    """The per-clip columns, in order."""
    return BASE_COLUMNS + (PROB_COLUMNS if probs else ()) + PROVENANCE


def summary_path(out: str | Path) -> Path:
    """``scores.csv`` -> ``scores.systems.csv``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.systems{out.suffix}")


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def write_error(path: str | Path, exc: OSError, advice: str = "") -> DeramosError:
    """One line for a failed write: the file, the system's reason and the errno (``ENOSPC``: a full disk)."""
    code = errno.errorcode.get(exc.errno, "") if exc.errno else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return DeramosError(f"cannot write {path}: {reason} (errno {exc.errno} {code})".replace(" )", ")") + advice)


def cell(value) -> str:
    """A value as CSV text: '' for None, ``repr`` for floats (exact), JSON for sequences of numbers."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        return json.dumps([float(v) for v in value])
    return str(value)


def number(value) -> float | None:
    """A score cell (text, number or None) as a float, None when empty."""
    if value in (None, ""):
        return None
    return float(value)


def result_record(result, provenance: dict, probs: bool) -> dict:
    """The row of one :class:`~deramos_rt.scorer.ClipScore` (JSON-safe values; None for missing)."""
    record = {"id": result.id, "path": result.path, "system": result.system, "prompt": result.prompt,
              "mi": result.mi, "ta": result.ta, "mi_std": result.mi_std, "ta_std": result.ta_std,
              "error": result.error}
    if probs:
        record["mi_probs"], record["ta_probs"] = result.mi_probs, result.ta_probs
    record.update(provenance)
    return record


# ----------------------------------------------------------------------------------------------- reading


def jsonl_objects(path: Path, what: str = "manifest") -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSONL file; a bad line is an error naming it."""
    with path.open(encoding="utf-8-sig") as f:
        for number_, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DeramosError(f"{what} {path} line {number_} is not valid JSON: {exc.msg}") from exc
            if not isinstance(record, dict):
                raise DeramosError(f"{what} {path} line {number_} is not a JSON object")
            yield number_, record


def is_csv(path: str | Path) -> bool:
    return Path(path).name.lower().removesuffix(".partial").endswith(".csv")


def read_rows(path: str | Path) -> Iterator[dict]:
    """Stream the rows of a complete score file (CSV cells as text, JSONL values as parsed).

    A partial file is made complete first by :class:`ScoreWriter` (its torn last line is cut off).
    """
    path = Path(path)
    allow_long_csv_fields()
    with path.open(encoding="utf-8", newline="") as f:
        if is_csv(path):
            yield from csv.DictReader(f)
            return
        for line in f:
            if line.strip():
                yield json.loads(line)


def numbered_rows(path: str | Path) -> list[tuple[str, dict]]:
    """``(where, row)`` for every row of a score file, ``where`` naming the file and line (for errors).

    Raises:
        DeramosError: not .csv / .jsonl, missing, not UTF-8, or not valid CSV / JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise DeramosError(f"score file not found: {path}")
    if path.suffix.lower() not in FORMATS:
        raise DeramosError(f"score file must end in .csv or .jsonl: {path}")
    try:
        if path.suffix.lower() == ".jsonl":
            return [(f"{path}:{n}", row) for n, row in jsonl_objects(path, "score file")]
        allow_long_csv_fields()
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            return [(f"{path}:{reader.line_num}", row) for row in reader]
    except UnicodeDecodeError as exc:
        raise DeramosError(f"score file {path} is not UTF-8 text: {exc}") from exc
    except csv.Error as exc:
        raise DeramosError(f"score file {path} is not valid CSV: {exc}") from exc


def csv_header(path: Path) -> tuple[str, ...]:
    allow_long_csv_fields()
    with path.open(encoding="utf-8", newline="") as f:
        return tuple(next(csv.reader(f), ()))


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


def cut_torn_tail(path: Path) -> None:
    """Truncate a partial score file to its complete records (after a killed writer)."""
    data = path.read_bytes()
    keep = complete_records(data, is_csv(path))
    if keep < len(data):
        log.warning("resume: dropped a torn last line of %s (%d bytes)", path, len(data) - keep)
        with path.open("r+b") as f:
            f.truncate(keep)


# ----------------------------------------------------------------------------------------------- writing


def write_rows(path: Path, rows: Iterable[dict], cols: tuple[str, ...]) -> None:
    """Write rows (dicts) with ``cols`` to ``path`` (CSV or JSONL by extension), atomically."""
    tmp = partial_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tmp.open("w", encoding="utf-8", newline="") as f:
            if is_csv(path):
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(cols)
                writer.writerows([cell(row.get(c)) for c in cols] for row in rows)
            else:
                f.writelines(json.dumps({c: row.get(c) for c in cols}, ensure_ascii=False) + "\n" for row in rows)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written copy is never left beside the file it was to replace
        raise


class ScoreWriter:
    """Writes rows to ``OUT.partial`` (flushed every ``flush_every`` rows) and renames it to ``OUT`` at the end.

    Args:
        out: the final score file (.csv or .jsonl).
        provenance: the provenance columns' values.
        probs: also write ``mi_probs``, ``ta_probs``.
        resume: continue an existing ``OUT.partial`` or ``OUT`` (skipping its ids; an id written twice, by two
            jobs at once, is kept once).
        overwrite: discard existing output.
        flush_every: rows written between flushes to disk (what a killed process can lose at most).

    Attributes:
        done: ids already in the output; failed_before: how many of those rows carry an error.

    Raises:
        DeramosError: output exists and neither ``resume`` nor ``overwrite``; resumed output with other
            columns or from another model; a write that fails (naming the file and errno; every row
            flushed before it stays in ``OUT.partial``).
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
        self._unflushed = 0
        self._file = None
        try:
            self._prepare_existing(resume, overwrite)
            self._open()
        except OSError as exc:
            raise self._write_error(exc) from exc

    def _open(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.partial.exists() or self.partial.stat().st_size == 0
        self._file = self.partial.open("a", encoding="utf-8", newline="")
        self._csv = csv.writer(self._file, lineterminator="\n") if self.format == ".csv" else None
        if fresh and self._csv is not None:
            self._csv.writerow(self.columns)
            self._file.flush()

    def _write_error(self, exc: OSError) -> DeramosError:
        path = exc.filename or self.partial
        kept = (f"; every clip written before is kept in {self.partial}: make room, then rerun with --resume"
                if self.partial.exists() else "")
        return write_error(path, exc, kept)

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
            cut_torn_tail(self.partial)
            duplicates = self._load_done(self.partial)
            if self.out.exists():
                self.out.unlink()  # the partial is the newer state of the same job
        else:
            duplicates = self._load_done(self.out)  # checked before it is touched, so a refused resume changes nothing
            os.replace(self.out, self.partial)  # resume a finished file: reopen it as the partial
        if duplicates:
            self._drop_duplicates(duplicates)

    def _load_done(self, path: Path) -> int:
        """Read the ids (and failures) of an existing output; returns how many rows repeat an earlier id."""
        header = csv_header(path) if self.format == ".csv" else self.columns
        if header and header != self.columns:
            raise DeramosError(f"cannot resume {path}: its columns ({', '.join(header)}) differ from this "
                               f"run's ({', '.join(self.columns)}); use the same --probs setting or --overwrite")
        duplicates = 0
        for row in read_rows(path):
            self._check_resumable(path, row)
            clip_id = str(row["id"])
            if clip_id in self.done:
                duplicates += 1
                continue
            self.done.add(clip_id)
            self.failed_before += bool(row.get("error"))
        return duplicates

    def _check_resumable(self, path: Path, row: dict) -> None:
        if self.format == ".jsonl" and ("mi_probs" in row) != self.probs:
            raise DeramosError(f"cannot resume {path}: it was written {'with' if 'mi_probs' in row else 'without'} "
                               "--probs; use the same --probs setting or --overwrite")
        if row.get("bundle") and row["bundle"] != self.provenance["bundle"]:
            raise DeramosError(f"cannot resume {path}: it was scored with model {row['bundle']}, this run "
                               f"uses {self.provenance['bundle']}; use --overwrite or another --out")

    def _drop_duplicates(self, duplicates: int) -> None:
        """Rewrite the partial file with the first row of each id (two jobs once wrote the same clips)."""
        log.warning("resume: %s held %d rows whose id was already written (two jobs on one output?): kept the "
                    "first row of each id", self.partial, duplicates)
        kept: set[str] = set()

        def first_rows():
            for row in read_rows(self.partial):
                if str(row["id"]) not in kept:
                    kept.add(str(row["id"]))
                    yield row

        write_rows(self.partial, first_rows(), self.columns)

    def write(self, result) -> None:
        record = result_record(result, self.provenance, self.probs)
        try:
            if self._csv is not None:
                self._csv.writerow([cell(record[c]) for c in self.columns])
            else:
                self._file.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        except OSError as exc:
            raise self._write_error(exc) from exc
        self.done.add(result.id)
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise self._write_error(exc) from exc
        self._unflushed = 0

    def finish(self) -> Path:
        """Flush, close and rename the partial file to the final name (atomic)."""
        self.flush()
        try:
            self._file.close()
            os.replace(self.partial, self.out)
        except OSError as exc:
            raise self._write_error(exc) from exc
        return self.out

    def abort(self) -> None:
        """Flush what can be flushed and close, keeping ``OUT.partial`` for a later resume.

        After a failed write the file may end in a torn record; a resume cuts it off.
        """
        if self._file is None or self._file.closed:
            return
        try:
            self._file.flush()
        except OSError as exc:
            log.debug("abort: could not flush %s: %s", self.partial, exc)
        try:
            self._file.close()
        except OSError as exc:  # close flushes again and fails the same way; the descriptor is closed anyway
            log.debug("abort: could not close %s cleanly: %s", self.partial, exc)


# ----------------------------------------------------------------------------------------------- summary


class SystemTally:
    """Streaming per-system sums (memory flat in the number of clips)."""

    def __init__(self):
        self._rows: dict[str, list] = {}

    def add(self, system: str, mi: float | None, ta: float | None, error: str | None) -> None:
        row = self._rows.setdefault(system or "", [0, 0, 0, 0.0, 0, 0.0])
        row[0] += 1
        row[1] += bool(error)
        if mi is not None and math.isfinite(mi):
            row[2] += 1
            row[3] += mi
        if ta is not None and math.isfinite(ta):
            row[4] += 1
            row[5] += ta

    def add_row(self, row: dict) -> None:
        """Add one score-file row (cells as text or numbers)."""
        self.add(str(row.get("system") or ""), number(row.get("mi")), number(row.get("ta")), row.get("error") or None)

    def summary(self) -> dict[str, dict]:
        return {s: {"clips": c, "failed": f, "mi_n": mn, "mi_mean": ms / mn if mn else None,
                    "ta_n": tn, "ta_mean": ts / tn if tn else None}
                for s, (c, f, mn, ms, tn, ts) in self._rows.items()}


def write_summary(rows: Iterable[dict], path: str | Path) -> Path:
    """The per-system summary of score-file rows, written atomically to ``path`` (CSV or JSONL)."""
    tally, provenance = SystemTally(), {}
    for row in rows:
        tally.add_row(row)
        provenance = {k: row.get(k) for k in PROVENANCE}
    records = [{"system": s, **v, **provenance} for s, v in tally.summary().items()]
    path = Path(path)
    write_rows(path, records, SUMMARY_COLUMNS + PROVENANCE)
    return path


def is_summary_file(path: str | Path) -> bool:
    """Whether an existing file is a per-system summary this tool wrote (by its header or first record).

    An empty file counts as one (there is nothing in it to lose); anything else this tool did not write is
    never overwritten.
    """
    path = Path(path)
    with path.open("rb") as f:
        first = f.readline(64 * 1024).decode("utf-8", errors="replace").lstrip("\ufeff").strip()
    if not first:
        return True
    if is_csv(path):
        return tuple(next(csv.reader([first]), ()))[: len(SUMMARY_COLUMNS)] == SUMMARY_COLUMNS
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and tuple(record)[: len(SUMMARY_COLUMNS)] == SUMMARY_COLUMNS


def summarize(out: str | Path) -> Path:
    """Write the per-system summary of a finished score file beside it; returns its path."""
    return write_summary(read_rows(out), summary_path(out))
