"""The bundle: a self-contained folder that the runtime scores with (no training code, no torch).

``python -m export.build_engine`` writes it; :func:`load_bundle` reads and verifies it. Layout::

    BUNDLE/deramos.json            the manifest (this module's schema)
    BUNDLE/tokenizer.json          the prompt tokenizer (``tokenizers`` format, specials + truncation set)
    BUNDLE/<graph>.<variant>.onnx  graph in {audio, text, ta}, variant in {fp32, int8, fp16}
    BUNDLE/tensorrt/<key>/...      optional TensorRT engines, keyed by TensorRT version + GPU
    BUNDLE/aoti/...                optional AOTInductor packages
    BUNDLE/parity.json             the export's parity report

Manifest fields (``format_version`` 1)::

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deramos_rt.audio import AudioProtocol
from deramos_rt.errors import DeramosError

FORMAT = "deramos-bundle"
FORMAT_VERSION = 1
MANIFEST = "deramos.json"
GRAPHS = ("audio", "text", "ta")
PRECISIONS = ("fp32", "int8", "fp16")
_CHUNK = 1 << 22


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in chunks (memory flat for GB-sized graphs)."""
    digest = hashlib.sha256()
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
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest, "files": file_table(root)}
    path = root / MANIFEST
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle.

    Attributes:
        root: the bundle folder.
        manifest: the parsed ``deramos.json``.
        sha256: the manifest file's sha256 (the bundle's identity).
    """

    root: Path
    manifest: dict[str, Any] = field(repr=False)
    sha256: str

    @property
    def protocol(self) -> AudioProtocol:
        audio = self.manifest["audio"]
        return AudioProtocol(int(audio["sample_rate"]), float(audio["clip_seconds"]), audio.get("resampler", "soxr"))

    @property
    def head(self) -> str:
        return self.manifest["model"]["head"]

    @property
    def bins(self) -> np.ndarray | None:
        bins = self.manifest["model"].get("bins")
        return None if bins is None else np.asarray(bins, dtype=np.float64)

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
        return int(self.manifest["text"]["max_tokens"])

    def path(self, relative: str) -> Path:
        return self.root / relative

    def graph_path(self, variant: str, graph: str) -> Path:
        """The ONNX file of ``graph`` in precision ``variant``."""
        if variant not in self.variants:
            raise DeramosError(f"bundle {self.root} has no {variant!r} graphs; it has: {', '.join(self.variants) or 'none'}")
        return self.root / self.variants[variant]["files"][graph]

    def tokenizer(self):
        """The bundle's prompt tokenizer (:class:`deramos_rt.text.PromptTokenizer`), vocabulary checked."""
        from deramos_rt.text import load_tokenizer_file

        text = self.manifest["text"]
        return load_tokenizer_file(self.root / text["tokenizer"], int(text["max_tokens"]),
                                   int(text["pad_id"]), text.get("vocab_size"))


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read ``path/deramos.json`` and check the bundle before any work.

    Args:
        path: the bundle folder.
        verify: check every listed file's size and sha256 (off only for trusted, timed paths).

    Raises:
        DeramosError: not a bundle, unknown format version, a file missing, or a file whose size or hash
            does not match the manifest (each named).
    """
    root = Path(path)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise DeramosError(f"{root} is not a deramos_rt bundle: {MANIFEST} is missing "
                           "(build one with: python -m export.build_engine --run RUN_DIR --out BUNDLE_DIR)")
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DeramosError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DeramosError(f"{manifest_path} is not a deramos_rt bundle manifest (format is not {FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DeramosError(f"{manifest_path} has bundle format version {version!r}; this deramos_rt reads version "
                           f"{FORMAT_VERSION} only: rebuild the bundle with this version's export.build_engine")
    for key in ("model", "audio", "text", "graphs", "variants", "files"):
        if key not in manifest:
            raise DeramosError(f"{manifest_path} lacks the {key!r} section")
    if verify:
        _verify_files(root, manifest["files"])
    return Bundle(root.resolve(), manifest, hashlib.sha256(raw).hexdigest())


def _verify_files(root: Path, files: dict[str, dict[str, Any]]) -> None:
    for rel, entry in files.items():
        path = root / rel
        if not path.is_file():
            raise DeramosError(f"bundle {root} is incomplete: {rel} is missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise DeramosError(f"bundle file {path} has {size} bytes, the manifest says {entry['bytes']} "
                               "(truncated or replaced): rebuild or re-copy the bundle")
        if file_sha256(path) != entry["sha256"]:
            raise DeramosError(f"bundle file {path} does not match its sha256 in the manifest (corrupted or "
                               "modified): rebuild or re-copy the bundle")
