"""Prompt tokenisation with the ``tokenizers`` library (no transformers, no torch, no model hub).

A tokenizer comes from a local folder (``tokenizer.json``, or RoBERTa's ``vocab.json`` + ``merges.txt``,
or BERT's ``vocab.txt``) or is the built-in ``tiny`` one used by tests and demos. Every loaded tokenizer
is checked against the vocabulary size the model expects: transformers 5 offline silently returns a
5-token tokenizer, and a wrong vocabulary gives garbage scores without any error.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deramos_rt.errors import DeramosError

TINY = "tiny"
# Anything smaller than this cannot be a real sub-word vocabulary.
MIN_PLAUSIBLE_VOCAB = 100

_TINY_WORDS = (
    "music song piece track melody rhythm beat tempo slow fast calm energetic happy sad dark bright "
    "piano guitar violin cello flute drums bass organ strings choir trumpet synth harp clarinet "
    "classical jazz rock pop folk ambient electronic orchestral with and a the of in for low high loud "
    "soft major minor mood style dance solo noise clean quiet gentle lively upbeat relaxing tone sine"
).split()


def tiny_vocab() -> list[str]:
    """The built-in WordPiece vocabulary: specials, characters, continuation pieces and music words."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = specials + chars + ["##" + c for c in string.ascii_lowercase + string.digits] + list(_TINY_WORDS)
    return list(dict.fromkeys(tokens))  # drop repeats ("a" is a character and a word), keep order


@dataclass(frozen=True)
class TokenBatch:
    """Token ids and attention mask (1 = real token), both int64 of shape (B, L); ``truncated`` says which
    prompts were cut at the tokenizer's limit."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    truncated: tuple[bool, ...] = ()


class PromptTokenizer:
    """Tokenises prompts, truncated to ``max_tokens`` and padded to the longest in the batch.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` with its post-processor (special tokens) set.
        max_tokens: truncation length, special tokens included.
        pad_id: id used for padding.
    """

    def __init__(self, tokenizer, max_tokens: int, pad_id: int):
        self._tok = tokenizer
        self.max_tokens = max_tokens
        self.pad_id = pad_id
        self._tok.enable_truncation(max_length=max_tokens)
        self._tok.no_padding()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as one ``tokenizer.json`` (specials and truncation included)."""
        self._tok.save(str(path))
        return Path(path)

    def __call__(self, prompts: list[str]) -> TokenBatch:
        if isinstance(prompts, str):
            prompts = [prompts]
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise DeramosError(f"prompt #{i} must be a string, got {type(p).__name__}")
        encodings = self._tok.encode_batch(list(prompts))
        length = max(len(e.ids) for e in encodings) if encodings else 0
        ids = np.full((len(encodings), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), length), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        return TokenBatch(ids, mask, tuple(bool(enc.overflowing) for enc in encodings))


def pad_sequences(seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad (L_i, D) float arrays to (B, max L, D) float32 with a mask (B, max L) int64 (1 = real)."""
    length = max(s.shape[0] for s in seqs)
    out = np.zeros((len(seqs), length, seqs[0].shape[1]), dtype=np.float32)
    mask = np.zeros((len(seqs), length), dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
    return out, mask


def load_tokenizer(spec: str | Path, max_tokens: int, expected_vocab_size: int | None = None) -> PromptTokenizer:
    """Load a tokenizer from a local folder, or the built-in one when ``spec == "tiny"``.

    Args:
        spec: ``"tiny"`` or a folder with tokenizer files.
        max_tokens: truncation length.
        expected_vocab_size: the size the model was trained with; a mismatch is an error.

    Raises:
        DeramosError: no usable files, or an implausible / unexpected vocabulary size.
    """
    tok, pad_id = _tiny() if str(spec) == TINY else _from_folder(Path(spec))
    out = PromptTokenizer(tok, max_tokens, pad_id)
    if out.vocab_size < MIN_PLAUSIBLE_VOCAB:
        raise DeramosError(
            f"tokenizer from {spec} has only {out.vocab_size} tokens; this is not a real vocabulary "
            "(the transformers offline fallback?). Point to a folder with tokenizer.json or vocab files."
        )
    if expected_vocab_size is not None and out.vocab_size != expected_vocab_size:
        raise DeramosError(
            f"tokenizer from {spec} has {out.vocab_size} tokens but the model expects {expected_vocab_size}"
        )
    return out


def load_tokenizer_file(path: str | Path, max_tokens: int, pad_id: int,
                        expected_vocab_size: int | None = None) -> PromptTokenizer:
    """Load a bundle's ``tokenizer.json`` (written by :meth:`PromptTokenizer.save`), vocabulary checked."""
    from tokenizers import Tokenizer

    path = Path(path)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own Exception subclass for any unreadable file
        raise DeramosError(f"cannot read tokenizer file {path}: {exc}") from exc
    out = PromptTokenizer(tok, max_tokens, pad_id)
    if expected_vocab_size is not None and out.vocab_size != expected_vocab_size:
        raise DeramosError(f"tokenizer {path} has {out.vocab_size} tokens but the model expects {expected_vocab_size}")
    return out


def _tiny():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(tiny_vocab())}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return tok, vocab["[PAD]"]


def _from_folder(folder: Path):
    from tokenizers import Tokenizer

    if not folder.is_dir():
        raise DeramosError(f"tokenizer folder not found: {folder}")
    if (folder / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok.no_truncation()
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        tok = _roberta_from_files(folder)
    elif (folder / "vocab.txt").is_file():
        tok = _bert_from_vocab(folder)
    else:
        raise DeramosError(
            f"no tokenizer files in {folder}: expected tokenizer.json, vocab.json + merges.txt, or vocab.txt"
        )
    return tok, _pad_id(tok, folder)


def _pad_id(tok, folder: Path) -> int:
    for name in ("<pad>", "[PAD]"):
        idx = tok.token_to_id(name)
        if idx is not None:
            return idx
    config = folder / "tokenizer_config.json"
    if config.is_file():
        pad = json.loads(config.read_text()).get("pad_token")
        if isinstance(pad, str) and tok.token_to_id(pad) is not None:
            return tok.token_to_id(pad)
    raise DeramosError(f"tokenizer in {folder} defines no padding token")


def _roberta_from_files(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    bpe = models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    missing = [t for t in ("<s>", "</s>") if tok.token_to_id(t) is None]
    if missing:
        raise DeramosError(f"RoBERTa vocabulary {folder / 'vocab.json'} lacks the special token(s) {', '.join(missing)}")
    # Specials already in the vocabulary: registering them keeps a literal "</s>" in a prompt one token
    # (as transformers does) without changing the vocabulary size.
    tok.add_special_tokens([t for t in ("<s>", "</s>", "<pad>", "<unk>", "<mask>") if tok.token_to_id(t) is not None])
    # tokenizers 0.23 takes sep and cls positionally only (the keyword form raises TypeError).
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), trim_offsets=True, add_prefix_space=False
    )
    return tok


def _bert_from_vocab(folder: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    lowercase = True
    config = folder / "tokenizer_config.json"
    if config.is_file():
        lowercase = bool(json.loads(config.read_text()).get("do_lower_case", True))
    vocab = models.WordPiece.read_file(str(folder / "vocab.txt"))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return tok
