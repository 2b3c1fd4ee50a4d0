"""Score a folder as users keep it: every audio file under it, its system from its folder, its prompt from a table.

``deramos-rt score DIR [--prompts TABLE] --out OUT`` (Python: :func:`list_folder`, then
:func:`deramos_rt.jobs.folder_job`) takes every file under ``DIR`` whose extension is one of the formats
libsndfile reads (:func:`audio_extensions`), recursively, sorted by path. Nothing is skipped without a word:
the other files, links to folders (not followed) and unreadable folders are listed in one log line each,
with a count. A clip's

* ``id`` is its path relative to ``DIR`` without the extension, with ``/`` separators (``S001/p001``), so
  the usual layout of generated music, ``<system>/<prompt-id>.wav`` with the same names in every system's
  folder, needs no manifest; two files that differ only by extension are refused, naming both;
* ``system`` is its first-level folder under ``DIR``; a file directly in ``DIR`` takes the ``S###`` part of
  its name (MusicEval's ``...-S002_P044``), else none;
* ``prompt`` comes from the table, looked up by the clip's id, else its file stem, else the ``P###`` at the
  end of the stem (MusicEval's ``prompt_info.txt`` is keyed by ``P###``). Files without a prompt are listed
  (count and the first few) and scored for MI only. Without a table the whole job is MI only on purpose.

Prompt tables (by extension): ``.csv`` with a header naming an id column (``id`` or MusicCaps' ``ytid``) and
a prompt column (``prompt``, ``caption`` or ``text``); ``.tsv`` / ``.txt``, tab-separated, with such a
header or without one (``id<TAB>text``, MusicEval's ``prompt_info.txt``); ``.jsonl`` with one object per
line holding such fields. An id listed twice with different prompts is refused, naming both lines.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from deramos_rt.errors import DeramosError
from deramos_rt.pipeline import ClipRequest, default_system
from deramos_rt.scorefile import allow_long_csv_fields, jsonl_objects

log = logging.getLogger(__name__)

# libsndfile's major formats and the extensions their files carry. Left out on purpose: RAW (header-less,
# cannot be decoded without being told its layout), MAT4 / MAT5 (.mat is nearly always other Matlab data)
# and MPC2K (.mpc is nearly always Musepack, which libsndfile does not read); such files are listed as
# skipped, never dropped without a word.
FORMAT_EXTENSIONS = {
    "WAV": (".wav", ".wave"), "WAVEX": (".wav",), "RF64": (".rf64",), "W64": (".w64",), "FLAC": (".flac",),
    "OGG": (".ogg", ".oga", ".opus"), "MP3": (".mp3",), "AIFF": (".aiff", ".aif", ".aifc"), "AU": (".au", ".snd"),
    "CAF": (".caf",), "NIST": (".nist", ".sph"), "IRCAM": (".sf",), "VOC": (".voc",), "SVX": (".svx", ".8svx"),
    "PAF": (".paf",), "PVF": (".pvf",), "XI": (".xi",), "HTK": (".htk",), "SDS": (".sds",), "AVR": (".avr",),
    "SD2": (".sd2",), "WVE": (".wve",),
}
ID_COLUMNS = ("id", "ytid")
PROMPT_COLUMNS = ("prompt", "caption", "text")
TABLE_FORMATS = (".csv", ".tsv", ".txt", ".jsonl")
SHOWN = 5  # names shown in a log line before "(+N more)"
_PROMPT_ID = re.compile(r"_(P\d+)$")


def audio_extensions() -> frozenset[str]:
    """The extensions of the formats the bundled libsndfile reads (lower case, with the dot)."""
    import soundfile as sf

    readable = set(sf.available_formats())
    return frozenset(ext for name, exts in FORMAT_EXTENSIONS.items() if name in readable for ext in exts)


def shown(names: list[str]) -> str:
    """The first few names and how many more: ``a, b, c (+12 more)``."""
    more = f" (+{len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


# ------------------------------------------------------------------------------------------ prompt tables


def read_prompts(path: str | Path) -> dict[str, str]:
    """Read a prompt table (see the module docstring) into ``{id: prompt}``; ids lose any audio extension.

    Raises:
        DeramosError: missing, another extension, not UTF-8, no id / prompt column, a bad line, an id listed
            twice with different prompts, or no prompts at all.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise DeramosError(f"prompt table {path} must be .csv, .tsv or .txt (tab-separated) or .jsonl, got "
                           f"{suffix or 'no extension'!r}")
    if not path.is_file():
        raise DeramosError(f"prompt table not found: {path}")
    rows = _jsonl_prompts(path) if suffix == ".jsonl" else _delimited_prompts(path, "," if suffix == ".csv" else "\t")
    try:
        return _collect(path, rows)
    except UnicodeDecodeError as exc:
        raise DeramosError(f"prompt table {path} is not UTF-8 text: {exc}") from exc
    except csv.Error as exc:
        raise DeramosError(f"prompt table {path} is not valid {'CSV' if suffix == '.csv' else 'TSV'}: {exc}") from exc


def _collect(path: Path, rows: Iterator[tuple[int, str, str]]) -> dict[str, str]:
    table: dict[str, str] = {}
    first: dict[str, int] = {}
    extensions = audio_extensions()
    for line, key, text in rows:
        key = key.strip()
        stem, ext = os.path.splitext(key)
        key = stem if ext.lower() in extensions else key
        if not key:
            raise DeramosError(f"prompt table {path} line {line}: empty id")
        if key in table and table[key] != text:
            raise DeramosError(f"prompt table {path} line {line}: id {key!r} is listed twice with different "
                               f"prompts (first at line {first[key]}); which one applies is ambiguous")
        table.setdefault(key, text)
        first.setdefault(key, line)
    if not table:
        raise DeramosError(f"prompt table {path} lists no prompts")
    return table


def _columns(header: list[str]) -> tuple[int, int] | None:
    """Indexes of the id and prompt columns of a header row, or None when it names neither."""
    names = [h.strip().lstrip("\ufeff").lower() for h in header]
    id_col = next((names.index(c) for c in ID_COLUMNS if c in names), None)
    text_col = next((names.index(c) for c in PROMPT_COLUMNS if c in names), None)
    return None if id_col is None or text_col is None else (id_col, text_col)


def _delimited_prompts(path: Path, delimiter: str) -> Iterator[tuple[int, str, str]]:
    allow_long_csv_fields()  # a prompt may be longer than csv's default 128 KiB cell
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE  # TSV prompts keep their quotes
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        cols = _columns(header) if header else None
        if cols is None and (delimiter == "," or not header):
            raise DeramosError(f"prompt table {path} needs a header with an id column ({' or '.join(ID_COLUMNS)}) "
                               f"and a prompt column ({', '.join(PROMPT_COLUMNS)}); its first line: "
                               f"{delimiter.join(header or [])[:80]!r}")
        if cols is None:  # a tab-separated table without a header: id<TAB>text from the first line
            yield from _headerless(path, [(1, header)])
            yield from _headerless(path, ((reader.line_num, row) for row in reader))
            return
        for row in reader:
            if not "".join(row).strip():
                continue
            if len(row) <= max(cols):
                raise DeramosError(f"prompt table {path} line {reader.line_num}: {len(row)} cells, expected the "
                                   f"id and prompt columns of the header")
            yield reader.line_num, row[cols[0]], row[cols[1]].strip()


def _headerless(path: Path, rows) -> Iterator[tuple[int, str, str]]:
    for line, row in rows:
        if not "".join(row).strip():
            continue
        if len(row) < 2:
            raise DeramosError(f"prompt table {path} line {line}: expected 'id<TAB>text', got {row[0][:60]!r}")
        yield line, row[0], "\t".join(row[1:]).strip()


def _jsonl_prompts(path: Path) -> Iterator[tuple[int, str, str]]:
    for line, record in jsonl_objects(path, "prompt table"):
        key = next((record[c] for c in ID_COLUMNS if c in record), None)
        text = next((record[c] for c in PROMPT_COLUMNS if c in record), None)
        if not isinstance(key, (str, int)) or not isinstance(text, str):
            raise DeramosError(f"prompt table {path} line {line}: needs a text id ({' or '.join(ID_COLUMNS)}) and a "
                               f"text prompt ({', '.join(PROMPT_COLUMNS)})")
        yield line, str(key), text.strip()


def prompt_for(table: dict[str, str], clip_id: str) -> str | None:
    """A clip's prompt: by its id, else its file stem, else the ``P###`` at the end of the stem."""
    stem = PurePosixPath(clip_id).name
    match = _PROMPT_ID.search(stem)
    for key in (clip_id, stem, match.group(1) if match else None):
        if key is not None and table.get(key, "").strip():
            return table[key]
    return None


# ------------------------------------------------------------------------------------------------- folder


@dataclass
class FolderListing:
    """The audio files under a folder, their prompts, and what was left out.

    Attributes:
        folder: the folder.
        files: ``(id, path)`` of every audio file, sorted by id.
        skipped: what was not taken, each as ``relative path`` or ``relative path (why)``.
        prompts: the prompt table, or None (MI only).
        without_prompt: ids of files the table has no prompt for.
    """

    folder: Path
    files: list[tuple[str, Path]]
    skipped: list[str]
    prompts: dict[str, str] | None
    without_prompt: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def requests(self) -> Iterator[ClipRequest]:
        """The clip requests, in order (a fresh iterator each call)."""
        for clip_id, path in self.files:
            prompt = "" if self.prompts is None else (prompt_for(self.prompts, clip_id) or "")
            yield ClipRequest(clip_id, str(path), folder_system(clip_id), prompt)


def folder_system(clip_id: str) -> str:
    """A folder clip's system: its first-level folder, else the ``S###`` part of its name, else ``""``."""
    parts = PurePosixPath(clip_id).parts
    return parts[0] if len(parts) > 1 else default_system(clip_id)


def walk_folder(folder: Path, extensions: frozenset[str]) -> tuple[list[tuple[str, Path]], list[str]]:
    """``(audio files as (relative posix path, path), everything else as 'relative path (why)')``."""
    found, skipped = [], []

    def unreadable(exc: OSError) -> None:
        skipped.append(f"{_relative(folder, Path(exc.filename))}/ (unreadable folder: {exc.strerror})")

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        base = Path(root)
        for name in [d for d in dirs if (base / d).is_symlink()]:
            skipped.append(f"{_relative(folder, base / name)}/ (link to a folder, not followed)")
        for name in files:
            path = base / name
            if os.path.splitext(name)[1].lower() in extensions:
                found.append((_relative(folder, path), path))
            else:
                skipped.append(_relative(folder, path))
    return sorted(found), sorted(skipped)


def _relative(folder: Path, path: Path) -> str:
    return Path(os.path.relpath(path, folder)).as_posix()


def _clip_ids(folder: Path, found: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """``(id, path)`` with the extension dropped; two files that would share an id are refused."""
    files, seen = [], {}
    for relative, path in found:
        clip_id = os.path.splitext(relative)[0]
        if clip_id in seen:
            raise DeramosError(f"folder {folder}: {seen[clip_id]} and {relative} would both have the id {clip_id!r} "
                               "(a clip's id is its path without the extension): keep one, or score them from a "
                               "manifest with an 'id' column")
        seen[clip_id] = relative
        files.append((clip_id, path))
    return sorted(files)


def list_folder(folder: str | Path, prompts: str | Path | None = None) -> FolderListing:
    """List the audio files under ``folder`` and look up their prompts; logs what is left out.

    Args:
        folder: the folder (searched recursively).
        prompts: a prompt table, or None to score MI only.

    Raises:
        DeramosError: the folder is missing or holds no audio file, two files would share an id, or a bad
            prompt table.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DeramosError(f"folder not found: {folder}")
    table = None if prompts is None else read_prompts(prompts)
    extensions = audio_extensions()
    found, skipped = walk_folder(folder, extensions)
    if skipped:
        log.warning("folder %s: %d entries not scored (not audio by extension, or not followed): %s", folder,
                    len(skipped), shown(skipped))
    if not found:
        raise DeramosError(f"folder {folder} holds no audio files (extensions read: {', '.join(sorted(extensions))})")
    files = _clip_ids(folder, found)
    missing = [] if table is None else [i for i, _ in files if prompt_for(table, i) is None]
    if table is None:
        log.info("folder %s: no prompt table (--prompts), so MI only on purpose: the TA columns stay empty", folder)
    elif missing:
        log.warning("folder %s: %d of %d files have no prompt in %s and are scored for MI only: %s", folder,
                    len(missing), len(files), prompts, shown(missing))
    return FolderListing(folder, files, skipped, table, missing)
