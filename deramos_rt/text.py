"""Prompt tokenisation with the ``tokenizers`` library (no transformers, no torch, no model hub).

A tokenizer comes from a local folder (``tokenizer.json``, or RoBERTa's ``vocab.json`` + ``merges.txt``,
or BERT's ``vocab.txt``), from a bundle's ``tokenizer.json``, or is the built-in ``tiny`` one used by tests
and demos. Every loaded tokenizer is checked (:func:`check_vocabulary`): at least a plausible vocabulary
(transformers 5 offline silently returns a 5-token tokenizer, and a wrong vocabulary gives garbage scores
without any error), the size the model expects, and no token id it can produce past that size. Token ids
are checked again before they reach a text graph (:func:`check_token_ids`), and
:func:`check_text_graph` proves once that the graph's embedding takes the largest of them: an id past the
embedding table would otherwise end a job in the middle with the inference library's traceback.
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

    def max_token_id(self) -> int:
        """The largest id this tokenizer can produce: its vocabulary's and the special tokens' its
        post-processor adds (those ids are written in the template, not looked up in the vocabulary).

        Raises:
            DeramosError: the tokenizer fails on a plain prompt.
        """
        ids = list(self._tok.get_vocab(with_added_tokens=True).values())
        try:
            # Unknown characters too: a WordPiece model without its [UNK] token fails on them.
            for probe in ("", "A calm piano piece, 120 BPM \u266a \u03a9\u03bc\u03ad\u03b3\u03b1"):
                ids += self._tok.encode(probe).ids
        except Exception as exc:  # tokenizers raises its own Exception subclass (e.g. a missing [UNK])
            raise DeramosError(f"the tokenizer fails on a plain prompt: {exc}") from exc
        return max(ids, default=-1)

    def __call__(self, prompts: list[str]) -> TokenBatch:
        if isinstance(prompts, str):
            prompts = [prompts]
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise DeramosError(f"prompt #{i} must be a string, got {type(p).__name__}")
        try:
            encodings = self._tok.encode_batch(list(prompts))
        except Exception as exc:  # tokenizers' own exception type; a prompt must not end a job with a traceback
            raise DeramosError(f"the tokenizer failed on a prompt batch: {exc}") from exc
        length = max(len(e.ids) for e in encodings) if encodings else 0
        ids = np.full((len(encodings), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), length), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        check_token_ids(ids, self.vocab_size, "the tokenizer's vocabulary")
        return TokenBatch(ids, mask, tuple(bool(enc.overflowing) for enc in encodings))


def check_token_ids(input_ids: np.ndarray, vocab_size: int, what: str = "the model's vocabulary") -> None:
    """Refuse token ids outside ``[0, vocab_size)`` before they reach a text graph's embedding.

    Raises:
        DeramosError: an id is out of range (the first one is named).
    """
    if input_ids.size and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        bad = int(input_ids[(input_ids < 0) | (input_ids >= vocab_size)][0])
        raise DeramosError(f"token id {bad} is outside {what} (0 to {vocab_size - 1}): the tokenizer does not "
                           "belong to this model's text graph")


def check_text_graph(run_text, vocab_size: int, source) -> None:
    """Run a text graph once on the largest valid token id, ``vocab_size - 1``.

    A graph whose embedding table is smaller than the vocabulary the manifest claims fails here, in one
    line before any work, instead of on the first prompt that uses a high id. (CPU kernels raise on an
    out-of-range gather; GPU kernels may not, so the manifest's ``vocab_size`` stays the limit there.)

    Args:
        run_text: the backend's ``run_text(input_ids, attention_mask)``.
        vocab_size: the tokenizer's vocabulary, already checked against the model's.
        source: the bundle or run directory, for the message.

    Raises:
        DeramosError: the graph rejects the id.
    """
    ids = np.full((1, 1), vocab_size - 1, dtype=np.int64)
    try:
        run_text(ids, np.ones_like(ids))
    except Exception as exc:  # each inference library raises its own types (ONNX Runtime's as DeramosError)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DeramosError(f"the text graph of {source} rejects token id {vocab_size - 1} ({first}): its embedding "
                           f"is smaller than the tokenizer's vocabulary of {vocab_size}, so the model's vocab_size "
                           "is wrong") from exc


def pad_sequences(seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad (..., L_i, D) float arrays to (B, ..., max L, D) float32 with a mask (B, max L) int64 (1 = real).

    The token axis is second to last: one model's ``text_x`` is (L, D) per prompt, an ensemble's (M, L, D).
    """
    length = max(s.shape[-2] for s in seqs)
    lead = seqs[0].shape[:-2]
    out = np.zeros((len(seqs), *lead, length, seqs[0].shape[-1]), dtype=np.float32)
    mask = np.zeros((len(seqs), length), dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, ..., : s.shape[-2], :] = s
        mask[i, : s.shape[-2]] = 1
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
    check_vocabulary(out, f"from {spec}", expected_vocab_size,
                     " (the transformers offline fallback?). Point to a folder with tokenizer.json or vocab files.")
    return out


def check_vocabulary(tokenizer: PromptTokenizer, name: str, expected_vocab_size: int | None = None,
                     hint: str = "") -> None:
    """A loaded tokenizer's vocabulary is plausible, the size the model expects, and covers every id it
    can produce.

    Args:
        tokenizer: the tokenizer to check.
        name: how to name it in a message (``"from DIR"``, a file).
        expected_vocab_size: the vocabulary (embedding rows) of the model's text graph, when known.
        hint: appended to the message about an implausibly small vocabulary.

    Raises:
        DeramosError: fewer than :data:`MIN_PLAUSIBLE_VOCAB` tokens, a size other than the expected one, or a
            token id (special tokens included) at or past its vocabulary size.
    """
    size = tokenizer.vocab_size
    if size < MIN_PLAUSIBLE_VOCAB:
        raise DeramosError(f"tokenizer {name} has only {size} tokens; this is not a real vocabulary{hint}")
    if expected_vocab_size is not None and size != expected_vocab_size:
        raise DeramosError(f"tokenizer {name} has {size} tokens but the model expects {expected_vocab_size}")
    top = tokenizer.max_token_id()
    if top >= size:
        raise DeramosError(f"tokenizer {name} can produce token id {top}, past its vocabulary of {size} tokens "
                           "(the text graph's embedding rows): not a tokenizer for this model")


def load_tokenizer_file(path: str | Path, max_tokens: int, pad_id: int,
                        expected_vocab_size: int | None = None) -> PromptTokenizer:
    """Load a bundle's ``tokenizer.json`` (written by :meth:`PromptTokenizer.save`), vocabulary checked
    like :func:`load_tokenizer`'s (:func:`check_vocabulary`)."""
    from tokenizers import Tokenizer

    path = Path(path)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own Exception subclass for any unreadable file
        raise DeramosError(f"cannot read tokenizer file {path}: {exc}") from exc
    out = PromptTokenizer(tok, max_tokens, pad_id)
    check_vocabulary(out, str(path), expected_vocab_size, ": rebuild the bundle with its model's real tokenizer")
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
