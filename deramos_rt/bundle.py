"""The bundle: a self-contained folder that the runtime scores with (no training code, no torch).

``python -m export.build_engine`` writes it; :func:`load_bundle` reads and verifies it. Layout::

    BUNDLE/deramos.json            the manifest (this module's schema)
    BUNDLE/tokenizer.json          the prompt tokenizer (``tokenizers`` format, specials + truncation set)
    BUNDLE/<graph>.<variant>.onnx  graph in {audio, text, ta}, variant in {fp32, int8, fp16}
    BUNDLE/tensorrt/<key>/...      optional TensorRT engines, keyed by TensorRT version + GPU
    BUNDLE/aoti/...                optional AOTInductor packages
    BUNDLE/parity.json             the export's parity report

Manifest fields (``format_version`` 1; 2 for ensembles, see below)::

    format, format_version, created
    model:     head ("distribution" | "scalar"), bins (list | null), backbones, config (the run's ModelConfig)
    audio:     sample_rate, clip_seconds, resampler            -> the audio protocol
    text:      tokenizer (file name), max_tokens, vocab_size, pad_id
    graphs:    {audio|text|ta: {inputs: [{name, dtype, shape}], outputs: [...]}}  (symbolic axes are strings)
    variants:  {fp32|int8|fp16: {files: {audio, text, ta}, device: "any"|"cpu"|"cuda", opset, parity}}
    tensorrt:  [{key, trt_version, compute_capability, precision, files, profiles}]  (may be empty)
    aoti:      {files: {audio, text, ta}, torch_version, device ("cpu"|"cuda"), precision, isa (CPU flags), batch,
                tokens, inductor_configs, gpu ({name, compute_capability}, cuda only), compile_seconds, parity} | null
    files:     {relative path: {bytes, sha256}} for every file but the manifest
    versions:  {torch, onnx, onnxruntime, onnxslim, deramos_rt, ...}
    source:    {run, config_sha256, provenance}

The manifest's own sha256 identifies the bundle (it covers every file's hash): score files record it.

Bundles are shared, so a manifest is read as a stranger's file (``docs/security.md``): it is at most
:data:`MAX_MANIFEST_BYTES` and nested at most :data:`MAX_MANIFEST_DEPTH` levels; every path in it (the
``files`` keys, graphs, tokenizer, engines, packages, provenance) is a plain relative path inside the
bundle and every path the runtime opens is listed in ``files``, so that it is hash-checked and the
identity covers exactly what is loaded; the external data an ONNX graph names must be listed too. A
listed file may be a link leading anywhere (shared caches use them) because its target is hash-checked;
errors about such a target say nothing about it but that it does not match. :meth:`Bundle.path` and
:meth:`Bundle.graph_path` are the only ways to a bundle's files, and they refuse unlisted ones.

Ensemble bundles (``python -m export.build_engine --run R1 --run R2 ...``) have the same files and sections;
what differs is fixed here:

* Still three graphs per precision, so the backend interface is unchanged. Each holds the members' shared
  encoder once plus all M members' heads, and every output gains a member axis at dim 1 (inputs unchanged)::

      audio: waveform (B, N)                                   -> mi_probs (B, M, K) | mi_score (B, M),
                                                                  audio_x (B, M, T, d)
      text:  input_ids, attention_mask (B, L)                  -> text_x (B, M, L, d)
      ta:    audio_x (B, M, T, d), text_x (B, M, L, d),
             text_mask (B, L)                                  -> ta_probs (B, M, K) | ta_score (B, M)

  Member ``m``'s slice is what member ``m``'s own single-model bundle outputs (within 1e-5 in fp32 and int8;
  fp16 rounds a little differently); ``graphs`` records M as a fixed size. A clip's ensemble MI / TA is the expected score of the mean of the members' distributions
  (scalar heads: the mean score) and its spread the members' scores' standard deviation
  (:mod:`deramos_rt.ensemble`).
* ``model.members``: one entry per member, in graph order::

      {name, run, config_sha256, heads_sha256, config (that member's ModelConfig), provenance (file | null)}

  ``model.config`` is the first member's; backbones, head kind, bins, TA width and tokenizer are every
  member's (the build refuses members that differ in them or in their encoder weights or audio protocol).
* ``source``: ``{runs: [member run paths], config_sha256: null, provenance: null}``; each member's
  ``provenance.json`` (imported research checkpoints) is kept as ``provenance/<name>.json``.
* ``parity.json``: every variant is gated on the ensemble's scores and on every member's against that
  member's own torch model (``members`` in each variant's report).

A single-model bundle has no member axis and no ``members`` key (:attr:`Bundle.members` is None).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from deramos_rt.audio import AudioProtocol
from deramos_rt.errors import DeramosError

FORMAT = "deramos-bundle"
FORMAT_VERSION = 1
# Ensemble bundles (a member axis on every graph output) are format 2, so that a deramos_rt that reads only
# format 1 refuses them instead of misreading the member axis; this version reads both.
ENSEMBLE_FORMAT_VERSION = 2
READABLE_VERSIONS = (FORMAT_VERSION, ENSEMBLE_FORMAT_VERSION)
MANIFEST = "deramos.json"
GRAPHS = ("audio", "text", "ta")
PRECISIONS = ("fp32", "int8", "fp16")
# A real manifest is a few kB (a few tens with TensorRT profiles); far larger is not a bundle.
MAX_MANIFEST_BYTES = 4 << 20
# Real manifests nest 5 levels; this bound also keeps json's recursive parser far from Python's stack limit.
MAX_MANIFEST_DEPTH = 32
# Large multilingual tokenizers are ~20 MB as tokenizer.json.
MAX_TOKENIZER_BYTES = 64 << 20
MAX_PATH_CHARS = 1024
# Audio protocol bounds: beyond them one clip window alone would take gigabytes.
MAX_SAMPLE_RATE = 384_000
MAX_CLIP_SECONDS = 300.0
MAX_TOKENS = 8192
_CHUNK = 1 << 22
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DRIVE = re.compile(r"[A-Za-z]:")
_STRUCTURE = re.compile(rb'[\[\]{}"]')
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in chunks (memory flat for GB-sized graphs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def files_sha256(paths) -> str:
    """One sha256 over the contents of several files, in the order given (a missing file counts as empty)."""
    digest = hashlib.sha256()
    for path in paths:
        if Path(path).is_file():
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
    return digest.hexdigest()


def file_table(root: str | Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {bytes, sha256}}`` for every file under ``root`` except the manifest."""
    root = Path(root)
    table = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != MANIFEST:
            table[rel] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    return table


def write_manifest(root: str | Path, manifest: dict[str, Any]) -> Path:
    """Fill in format, version and the file table, then write ``root/deramos.json``."""
    root = Path(root)
    version = ENSEMBLE_FORMAT_VERSION if (manifest.get("model") or {}).get("members") else FORMAT_VERSION
    data = {"format": FORMAT, "format_version": version, **manifest, "files": file_table(root)}
    path = root / MANIFEST
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle.

    Attributes:
        root: the bundle folder.
        manifest: the parsed ``deramos.json``.
        sha256: the manifest file's sha256 (the bundle's identity).
        verified: every listed file was hash-checked when it was loaded (``load_bundle(verify=True)``);
            only a verified bundle can be trusted with native code (:mod:`deramos_rt.trust`).
    """

    root: Path
    manifest: dict[str, Any] = field(repr=False)
    sha256: str
    verified: bool = False
    kind: ClassVar[str] = "bundle"

    @property
    def identity(self) -> str:
        """The bundle's id in score files: the first 16 hex characters of the manifest's sha256."""
        return self.sha256[:16]

    @property
    def protocol(self) -> AudioProtocol:
        audio = self.manifest["audio"]
        rate = _int_field(self, audio, "audio.sample_rate", 1000, MAX_SAMPLE_RATE)
        seconds = audio.get("clip_seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_CLIP_SECONDS:
            raise DeramosError(f"bundle {self.root}: manifest field audio.clip_seconds must be a number of seconds "
                               f"in (0, {MAX_CLIP_SECONDS:g}], got {_show(seconds)}")
        return AudioProtocol(rate, float(seconds), audio.get("resampler", "soxr"))

    @property
    def head(self) -> str:
        head = self.manifest["model"].get("head")
        if head not in ("distribution", "scalar"):
            raise DeramosError(f"bundle {self.root}: manifest field model.head must be 'distribution' or 'scalar', "
                               f"got {_show(head)}")
        return head

    @property
    def bins(self) -> np.ndarray | None:
        bins = self.manifest["model"].get("bins")
        if bins is None:
            return None
        if (not isinstance(bins, list) or not 2 <= len(bins) <= 1000
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bins)):
            raise DeramosError(f"bundle {self.root}: manifest field model.bins must be a list of 2 to 1000 finite "
                               "numbers (the bin centres)")
        return np.asarray(bins, dtype=np.float64)

    @property
    def variants(self) -> dict[str, dict[str, Any]]:
        return self.manifest.get("variants", {})

    @property
    def members(self) -> list[dict[str, Any]] | None:
        """The ensemble's member entries (``model.members``, in graph order); None for a single model."""
        members = self.manifest["model"].get("members")
        return list(members) if members else None

    @property
    def max_tokens(self) -> int:
        return _int_field(self, self.manifest["text"], "text.max_tokens", 1, MAX_TOKENS)

    def path(self, relative: str) -> Path:
        """The bundle file ``relative``: only a file listed in the manifest's ``files`` (so hash-checked).

        Raises:
            DeramosError: ``relative`` is not listed.
        """
        if not isinstance(relative, str) or relative not in self.manifest.get("files", {}):
            raise DeramosError(f"bundle {self.root}: {_show(relative)} is not a file listed in its manifest; the "
                               "runtime opens only listed, hash-checked bundle files")
        return self.root / relative

    def graph_path(self, variant: str, graph: str) -> Path:
        """The ONNX file of ``graph`` in precision ``variant``."""
        if variant not in self.variants:
            raise DeramosError(f"bundle {self.root} has no {variant!r} graphs; it has: {', '.join(self.variants) or 'none'}")
        files = self.variants[variant]["files"]
        if graph not in files:
            raise DeramosError(f"bundle {self.root}'s {variant} variant has no {graph!r} graph")
        return self.path(files[graph])

    def tokenizer(self):
        """The bundle's prompt tokenizer (:class:`deramos_rt.text.PromptTokenizer`), vocabulary checked
        against ``text.vocab_size`` and a plausible minimum."""
        from deramos_rt.text import load_tokenizer_file

        text = self.manifest["text"]
        vocab = _int_field(self, text, "text.vocab_size", 1, 1 << 31)
        pad_id = _int_field(self, text, "text.pad_id", 0, vocab - 1)
        path = self.path(text.get("tokenizer"))
        if self.manifest["files"][text["tokenizer"]]["bytes"] > MAX_TOKENIZER_BYTES:
            raise DeramosError(f"bundle {self.root}: tokenizer {text['tokenizer']} is larger than "
                               f"{MAX_TOKENIZER_BYTES >> 20} MB, which no prompt tokenizer needs; refusing to read it")
        return load_tokenizer_file(path, self.max_tokens, pad_id, vocab)


def _int_field(bundle: Bundle, section: dict, name: str, low: int, high: int) -> int:
    value = section.get(name.rsplit(".", 1)[1])
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DeramosError(f"bundle {bundle.root}: manifest field {name} must be an integer from {low} to {high}, "
                           f"got {_show(value)}")
    return value


def _key(value: Any) -> str:
    """A manifest key inside a field name: as it is when plain, else quoted."""
    return value if isinstance(value, str) and re.fullmatch(r"[\w.+-]{1,64}", value) else _show(value)


def _show(value: Any, limit: int = 80) -> str:
    """A value for a one-line message: repr (escapes newlines and NULs), cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def building_view(root: str | Path, manifest: dict[str, Any], label: str) -> Bundle:
    """A :class:`Bundle` over a folder the exporter is still writing (its manifest has no ``files`` table yet).

    Only ``export`` uses it, on its own work folder: every file there is listed (by size, not hashed), so the
    runtime's backends can run the graphs for parity, int8 tuning and calibration before the manifest is
    written. Bundles from anywhere else go through :func:`load_bundle`.
    """
    root = Path(root).resolve()
    files = {p.relative_to(root).as_posix(): {"bytes": p.stat().st_size}
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}
    return Bundle(root, {**manifest, "files": files}, label)


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read ``path/deramos.json`` and check the bundle before any work.

    Args:
        path: the bundle folder.
        verify: check every listed file's size and sha256 and the external data its ONNX graphs name (off
            only for trusted, timed paths; an unverified bundle cannot be trusted with native code).

    Raises:
        DeramosError: not a bundle, a manifest too large or too deeply nested, unknown format version, a
            path that is not a plain relative path inside the bundle, a path the runtime would open that is
            not listed in ``files``, a file missing, or a file whose size or hash does not match (each named).
    """
    root = Path(path)
    manifest_path = root / MANIFEST
    inside = _inside(root, manifest_path)
    raw = _read_manifest(manifest_path, inside)
    manifest = _parse_manifest(raw, manifest_path, inside)
    _check_format(manifest, manifest_path)
    files = _check_file_table(root, manifest["files"])
    for where, value in _manifest_paths(root, manifest):
        _check_listed(root, where, value, files)
    _check_graph_specs(root, manifest)
    if verify:
        _verify_files(root, files)
        _check_external_data(root, manifest, files)
    else:
        _refuse_outside_links(root, files)
    return Bundle(root.resolve(), manifest, hashlib.sha256(raw).hexdigest(), verified=verify)


# ------------------------------------------------------------------------------------------ the manifest


def _read_manifest(path: Path, inside: bool) -> bytes:
    """The manifest's bytes, refused unread when it is not a regular file or is over the size limit."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO named deramos.json must not block
    except FileNotFoundError:
        raise DeramosError(f"{path.parent} is not a deramos_rt bundle: {MANIFEST} is missing (build one with: "
                           "python -m export.build_engine --run RUN_DIR --out BUNDLE_DIR)") from None
    except OSError as exc:
        raise DeramosError(f"cannot read {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise DeramosError(f"{path} is not a regular file")
        raw = b"" if info.st_size > MAX_MANIFEST_BYTES else f.read(MAX_MANIFEST_BYTES + 1)
    if info.st_size > MAX_MANIFEST_BYTES or len(raw) > MAX_MANIFEST_BYTES:
        size = f" ({info.st_size} bytes)" if inside else ""
        raise DeramosError(f"{path} is larger than the {MAX_MANIFEST_BYTES >> 20} MB a bundle manifest may have"
                           f"{size}: not a bundle manifest (refused unread)")
    return raw


def _parse_manifest(raw: bytes, path: Path, inside: bool) -> dict[str, Any]:
    if not _depth_within(raw, MAX_MANIFEST_DEPTH):
        raise DeramosError(f"{path} nests deeper than {MAX_MANIFEST_DEPTH} levels: not a bundle manifest")
    try:
        manifest = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
        # The position of a parse error describes the file; say nothing of a file outside the bundle.
        detail = f": {str(exc).splitlines()[0]}" if inside else ""
        raise DeramosError(f"{path} is not valid JSON{detail}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DeramosError(f"{path} is not a deramos_rt bundle manifest (format is not {FORMAT!r})")
    return manifest


def _depth_within(raw: bytes, limit: int) -> bool:
    """Whether the JSON text ``raw`` nests at most ``limit`` arrays / objects (brackets inside strings
    do not count); one linear pass that stops at the first level past the limit."""
    depth, pos = 0, 0
    while match := _STRUCTURE.search(raw, pos):
        char = raw[match.start()]
        if char == 0x22:  # a string: skip to its closing quote
            rest = _STRING_REST.match(raw, match.end())
            if rest is None:
                return True  # unterminated: json.loads reports it
            pos = rest.end()
            continue
        depth += 1 if char in b"[{" else -1
        if depth > limit:
            return False
        pos = match.end()
    return True


def _check_format(manifest: dict[str, Any], path: Path) -> None:
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise DeramosError(f"{path} has bundle format version {_show(version)}; this deramos_rt reads versions "
                           f"{', '.join(map(str, READABLE_VERSIONS))} only: rebuild the bundle with this version's "
                           "export.build_engine")
    for key in ("model", "audio", "text", "graphs", "variants", "files"):
        if key not in manifest:
            raise DeramosError(f"{path} lacks the {key!r} section")
        if not isinstance(manifest[key], dict):
            raise DeramosError(f"{path}: the {key!r} section is not a JSON object")
    ensemble = bool(manifest["model"].get("members"))
    if ensemble != (version == ENSEMBLE_FORMAT_VERSION):
        raise DeramosError(f"{path}: format version {version} " + ("must list model.members (an ensemble)" if not ensemble
                           else f"cannot hold an ensemble (model.members): ensembles are format {ENSEMBLE_FORMAT_VERSION}"))


# --------------------------------------------------------------------------------------- paths in it


def _path_problem(value: Any) -> str | None:
    """Why ``value`` is not a plain, normalised relative path (None when it is one)."""
    if not isinstance(value, str) or not value:
        return "is not a non-empty string"
    if len(value) > MAX_PATH_CHARS:
        return f"is longer than {MAX_PATH_CHARS} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "contains a control character"
    if "\\" in value:
        return "contains a backslash"
    if value.startswith("/") or _DRIVE.match(value):
        return "is an absolute path"
    if any(part in ("", ".", "..") for part in value.split("/")):
        return "is not a normalised path (an empty, '.' or '..' part)"
    if value == MANIFEST:
        return "names the manifest itself"
    return None


def _check_path(root: Path, where: str, value: Any) -> str:
    problem = _path_problem(value)
    if problem:
        raise DeramosError(f"bundle {root}: manifest entry {where} = {_show(value)} {problem}; every path in a "
                           "bundle must be a plain relative path inside it (refusing the bundle)")
    return value


def _check_file_table(root: Path, files: dict[str, Any]) -> dict[str, dict[str, Any]]:
    for rel, entry in files.items():
        _check_path(root, f"files[{_show(rel)}]", rel)
        size = entry.get("bytes") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or not isinstance(digest, str) \
                or not _SHA256.fullmatch(digest):
            raise DeramosError(f"bundle {root}: manifest entry files[{_show(rel)}] must be {{bytes: a size, sha256: "
                               "64 lowercase hex digits}")
    return files


def _manifest_paths(root: Path, manifest: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(field, value)`` of every file path in a manifest outside its ``files`` table: the tokenizer, each
    variant's graphs (and ``files_all``), TensorRT engines, AOTInductor packages and the provenance file.

    Raises:
        DeramosError: a section that holds paths has the wrong shape (named).
    """
    out = []
    if "tokenizer" in manifest["text"]:
        out.append(("text.tokenizer", manifest["text"]["tokenizer"]))
    for name, variant in manifest["variants"].items():
        where = f"variants.{_key(name)}"
        section = _section(root, variant, where)
        out += _graph_files(root, section.get("files"), f"{where}.files")
        listed = section.get("files_all", [])
        if not isinstance(listed, list):
            raise DeramosError(f"bundle {root}: manifest entry {where}.files_all is not a list")
        out += [(f"{where}.files_all[{i}]", rel) for i, rel in enumerate(listed)]
    engines = manifest.get("tensorrt") or []
    if not isinstance(engines, list):
        raise DeramosError(f"bundle {root}: manifest entry tensorrt is not a list")
    for i, entry in enumerate(engines):
        out += _graph_files(root, _section(root, entry, f"tensorrt[{i}]").get("files"), f"tensorrt[{i}].files")
    if manifest.get("aoti") is not None:
        out += _graph_files(root, _section(root, manifest["aoti"], "aoti").get("files"), "aoti.files")
    source = manifest.get("source")
    if isinstance(source, dict) and source.get("provenance") is not None:
        out.append(("source.provenance", source["provenance"]))
    return out


def _check_graph_specs(root: Path, manifest: dict[str, Any]) -> None:
    """ONNX variants need the ``graphs`` section the backends read: named inputs and outputs per graph."""
    if not manifest["variants"]:
        return
    for graph in GRAPHS:
        spec = manifest["graphs"].get(graph)
        for side in ("inputs", "outputs"):
            items = spec.get(side) if isinstance(spec, dict) else None
            if not isinstance(items, list) or not items or not all(
                    isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
                raise DeramosError(f"bundle {root}: manifest entry graphs.{graph}.{side} must be a list of "
                                   "{name, dtype, shape} objects")


def _section(root, value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DeramosError(f"bundle {root}: manifest entry {where} is not a JSON object")
    return value


def _graph_files(root, files: Any, where: str) -> list[tuple[str, Any]]:
    """The paths of a ``{audio, text, ta}`` files map, which must name all three graphs."""
    missing = [g for g in GRAPHS if not isinstance(files, dict) or g not in files]
    if missing:
        raise DeramosError(f"bundle {root}: manifest entry {where} does not name the {', '.join(missing)} graph file")
    return [(f"{where}.{_key(key)}", rel) for key, rel in files.items()]


def _check_listed(root: Path, where: str, value: Any, files: dict[str, Any]) -> None:
    _check_path(root, where, value)
    if value not in files:
        raise DeramosError(f"bundle {root}: manifest entry {where} = {_show(value)} is not listed in the manifest's "
                           "files table, so it could not be hash-checked (refusing the bundle)")


# -------------------------------------------------------------------------------- files and their hashes


def _inside(root: Path, path: Path) -> bool:
    """Whether ``path`` resolves (links followed) inside ``root``."""
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


def _digest(path: Path, size: int) -> tuple[str | None, str | None]:
    """(sha256, None) of a regular file of exactly ``size`` bytes, else (None, what is wrong)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO or device must not block or stream forever
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, f"unreadable ({exc.strerror})"
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None, "not a regular file"
        if info.st_size != size:
            return None, f"{info.st_size} bytes"
        digest = hashlib.sha256()
        while chunk := f.read(min(_CHUNK, size - f.tell())):
            digest.update(chunk)
    return digest.hexdigest(), None


def _verify_files(root: Path, files: dict[str, dict[str, Any]]) -> None:
    for rel, entry in files.items():
        path = root / rel
        digest, problem = _digest(path, entry["bytes"])
        if digest == entry["sha256"]:
            continue
        if not _inside(root, path):
            # Its target is not part of the bundle: say nothing about it (size, existence) but the mismatch.
            raise DeramosError(f"bundle file {rel} of {root} is a link leading outside the bundle to something "
                               "that does not match its size and sha256 in the manifest: refusing the bundle")
        if problem == "missing":
            raise DeramosError(f"bundle {root} is incomplete: {rel} is missing")
        if problem and problem.endswith(" bytes"):
            raise DeramosError(f"bundle file {path} has {problem}, the manifest says {entry['bytes']} "
                               "(truncated or replaced): rebuild or re-copy the bundle")
        if problem:
            raise DeramosError(f"bundle file {path} is {problem}: rebuild or re-copy the bundle")
        raise DeramosError(f"bundle file {path} does not match its sha256 in the manifest (corrupted or "
                           "modified): rebuild or re-copy the bundle")


def _refuse_outside_links(root: Path, files: dict[str, Any]) -> None:
    """Without hash checks, a listed file must at least stay inside the bundle."""
    for rel in files:
        if not _inside(root, root / rel):
            raise DeramosError(f"bundle file {rel} of {root} is a link leading outside the bundle, which is accepted "
                               "only when its target is hash-checked (load the bundle with verify)")


def _check_external_data(root: Path, manifest: dict[str, Any], files: dict[str, Any]) -> None:
    """Every external data file an ONNX graph of the bundle names is one of its listed files."""
    from deramos_rt.onnx_external import external_locations

    graphs = sorted({rel for variant in manifest["variants"].values() for rel in variant["files"].values()})
    for rel in graphs:
        for location in sorted(external_locations(root / rel)):
            if _path_problem(location):
                raise DeramosError(f"bundle {root}: graph {rel} names external data {_show(location)}, which is not a "
                                   "plain relative path inside the bundle (refusing the bundle)")
            target = posixpath.join(posixpath.dirname(rel), location)
            if target not in files:
                raise DeramosError(f"bundle {root}: graph {rel} loads external data {_show(location)}, which is not "
                                   "listed in the manifest's files table, so not hash-checked (refusing the bundle)")
