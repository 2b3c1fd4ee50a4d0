"""Manifests: the list of clips a job scores, read and checked completely before any work.

A manifest is CSV (header) or JSONL with ``path`` and ``prompt``, optional ``id`` and ``system``; relative
paths are relative to the manifest's folder. A missing column, a bad line or an id listed twice is refused
before any work, naming it.

Defaults are unique by construction, so the usual layout of generated music (``<system>/<prompt-id>.wav``,
the same file names in every system's folder) needs no ``id`` column: the default ``id`` is the clip's path
relative to the manifest's folder without its extension, with ``/`` separators (``S001/p001``); a file
outside that folder keeps its whole normalised path (``../other/p001``, ``/data/p001``). The default
``system`` is the ``S###`` part of the file name where there is one (MusicEval's ``...-S002_P044``), else
the first folder under the manifest's folder, else the ``S###`` part of a path outside it, else empty.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path, PurePosixPath
from typing import Iterator

from deramos_rt.errors import DeramosError
from deramos_rt.pipeline import ClipRequest, default_system, make_request
from deramos_rt.scorefile import allow_long_csv_fields, file_format, jsonl_objects

REQUIRED = ("path", "prompt")


def default_id(audio: str, folder: Path) -> str:
    """A clip's default id: its path relative to the manifest's ``folder``, without extension (see above).

    Args:
        audio: the ``path`` cell as written in the manifest.
        folder: the manifest's folder.
    """
    path = os.path.normpath(audio)
    if os.path.isabs(path):
        base = os.path.normpath(os.path.abspath(folder))
        if os.path.commonpath([path, base]) == base:
            path = os.path.relpath(path, base)
    return PurePosixPath(os.path.splitext(path)[0].replace(os.sep, "/")).as_posix()


def default_clip_system(clip_id: str) -> str:
    """A clip's default system from its default id (see the module docstring)."""
    parts = PurePosixPath(clip_id).parts
    inside = not (PurePosixPath(clip_id).is_absolute() or parts[0] == "..")
    return (default_system(parts[-1]) or (parts[0] if inside and len(parts) > 1 else "")
            or ("" if inside else default_system(clip_id)))


def _csv_records(path: Path) -> Iterator[tuple[int, dict]]:
    allow_long_csv_fields()
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
    clip_id, system = record.get("id"), record.get("system")
    if clip_id in (None, "") or system in (None, ""):
        own_id = default_id(audio, path.parent)
        clip_id = own_id if clip_id in (None, "") else clip_id
        system = default_clip_system(own_id) if system in (None, "") else system
    fields = {"path": str(audio_path), "prompt": prompt or "", "id": clip_id, "system": system}
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
