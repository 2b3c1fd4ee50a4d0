"""Frozen-encoder outputs for training and evaluation, computed live or once into an on-disk cache.

Encoders are frozen, so a clip's encoder output never changes: with a cache each clip and each prompt
is encoded once, stored as ``.npy`` keyed by (content hash, encoder identity), and reused across epochs
and runs. Training from the cache and training live feed the heads the same tensors, in the same order.

Default place: ``~/.cache/deramos_rt/features`` (:data:`DEFAULT_CACHE`); deleting that folder is always
safe (entries are recomputed). Layout: ``CACHE/{audio,text}/<encoder id>/<content sha256>.npy``; audio entries are (T, D), text entries
are the real tokens only (L_i, D) and are zero-padded per batch (padding never reaches a pooled vector).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from deramos_rt.audio import load_clip
from training.data import Clip

DEFAULT_CACHE = Path.home() / ".cache" / "deramos_rt" / "features"

log = logging.getLogger(__name__)


def encoder_identity(kind: str, model, extra: dict) -> str:
    """A hash of what determines an encoder's outputs: its config, its weights and the input protocol.

    For audio, ``extra`` holds the model's whole audio protocol, resampler included: a different
    resampler gives the encoder different input samples, hence different features.
    """
    cfg = getattr(model.config, kind)
    encoder = model.audio_encoder if kind == "audio" else model.text_encoder
    h = hashlib.sha256(json.dumps({"cfg": dataclasses.asdict(cfg), **extra}, sort_keys=True).encode())
    _hash_state(h, encoder.state_dict())
    return h.hexdigest()[:20]


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (see :func:`state_sha256`)."""
    return state_sha256(module.state_dict())


def state_sha256(state) -> str:
    """sha256 over a state dict's names and tensor bytes, sorted by name: equal iff the weights are.

    Ensembles compare their members' frozen encoders with it, whatever file each member's weights came from.
    """
    h = hashlib.sha256()
    _hash_state(h, state)
    return h.hexdigest()


def _hash_state(h, state) -> None:
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def text_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


class Features:
    """Supplies heads inputs ``(audio (B,T,D), text (B,L,D), mask (B,L))`` for a list of clips.

    Args:
        model: a :class:`training.model.DeraMos` with both encoders.
        tokenizer: the model's prompt tokenizer.
        cache_dir: folder for cached outputs; None computes the encoders for every batch.
        encode_batch: batch size used when filling the cache.
    """

    def __init__(self, model, tokenizer, cache_dir: str | Path | None = None, encode_batch: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        self.protocol = model.audio_protocol  # rate, length and resampler: part of the audio cache key
        self.encode_batch = encode_batch
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._audio: dict[Path, np.ndarray] = {}
        self._text: dict[str, np.ndarray] = {}
        if self.cache_dir:
            proto = dataclasses.asdict(self.protocol)
            self._audio_dir = self.cache_dir / "audio" / encoder_identity("audio", model, {"protocol": proto})
            self._text_dir = self.cache_dir / "text" / encoder_identity(
                "text", model, {"max_tokens": tokenizer.max_tokens, "vocab": tokenizer.vocab_size})

    @property
    def device(self) -> torch.device:
        return next(self.model.heads.parameters()).device

    def prepare(self, clips: list[Clip]) -> dict[str, int]:
        """Fill the cache for these clips (no-op without a cache). Returns counts of hits and misses."""
        if not self.cache_dir:
            return {"cached": 0, "encoded": 0}
        a = self._prepare_audio(clips)
        t = self._prepare_text(sorted({c.prompt for c in clips}))
        return {"cached": a[0] + t[0], "encoded": a[1] + t[1]}

    def batch(self, clips: list[Clip]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.cache_dir:
            return self._live(clips)
        missing = [c for c in clips if c.path not in self._audio or c.prompt not in self._text]
        if missing:
            self.prepare(missing)
        audio = torch.from_numpy(np.stack([self._audio[c.path] for c in clips]))
        text, mask = pad_sequences([self._text[c.prompt] for c in clips])
        return audio.to(self.device), text.to(self.device), mask.to(self.device)

    def _live(self, clips: list[Clip]):
        wave = torch.from_numpy(np.stack([load_clip(c.path, self.protocol) for c in clips])).to(self.device)
        tokens = self.tokenizer([c.prompt for c in clips])
        ids = torch.from_numpy(tokens.input_ids).to(self.device)
        mask = torch.from_numpy(tokens.attention_mask).to(self.device)
        return self.model.encode_audio(wave), self.model.encode_text(ids, mask), mask

    def _prepare_audio(self, clips: list[Clip]) -> tuple[int, int]:
        self._audio_dir.mkdir(parents=True, exist_ok=True)
        todo, hits = [], 0
        for clip in dict.fromkeys(c for c in clips if c.path not in self._audio):
            entry = self._audio_dir / f"{file_sha256(clip.path)}.npy"
            if entry.is_file():
                self._audio[clip.path] = np.load(entry, mmap_mode="r")
                hits += 1
            else:
                todo.append((clip, entry))
        for start in range(0, len(todo), self.encode_batch):
            chunk = todo[start : start + self.encode_batch]
            wave = np.stack([load_clip(c.path, self.protocol) for c, _ in chunk])
            hidden = self.model.encode_audio(torch.from_numpy(wave).to(self.device)).cpu().numpy()
            for (clip, entry), h in zip(chunk, hidden):
                _save(entry, h)
                self._audio[clip.path] = np.load(entry, mmap_mode="r")
        return hits, len(todo)

    def _prepare_text(self, prompts: list[str]) -> tuple[int, int]:
        self._text_dir.mkdir(parents=True, exist_ok=True)
        todo, hits = [], 0
        for prompt in prompts:
            if prompt in self._text:
                continue
            entry = self._text_dir / f"{text_sha256(prompt)}.npy"
            if entry.is_file():
                self._text[prompt] = np.load(entry)
                hits += 1
            else:
                todo.append((prompt, entry))
        for start in range(0, len(todo), self.encode_batch):
            chunk = todo[start : start + self.encode_batch]
            tokens = self.tokenizer([p for p, _ in chunk])
            ids = torch.from_numpy(tokens.input_ids).to(self.device)
            mask = torch.from_numpy(tokens.attention_mask).to(self.device)
            hidden = self.model.encode_text(ids, mask).cpu().numpy()
            for (prompt, entry), h, m in zip(chunk, hidden, tokens.attention_mask):
                _save(entry, h[: int(m.sum())])
                self._text[prompt] = np.load(entry)
        return hits, len(todo)


def pad_sequences(seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (L_i, D) arrays to (B, max L, D) with a mask (1 = real), as torch tensors."""
    from deramos_rt.text import pad_sequences as pad

    out, mask = pad(seqs)
    return torch.from_numpy(out), torch.from_numpy(mask)


def _save(path: Path, array: np.ndarray) -> None:
    # Write then rename, so an interrupted run never leaves a truncated entry behind.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, np.ascontiguousarray(array, dtype=np.float32))
    os.replace(tmp, path)
