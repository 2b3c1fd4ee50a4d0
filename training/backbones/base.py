"""The backbone interface: frozen encoders that turn a waveform or tokens into a frame sequence.

Every audio backbone maps a batch of fixed-length waveforms at its own sample rate, (B, N), to a
sequence (B, T, D). Every text backbone maps token ids and an attention mask, (B, L), to (B, L, D).
The input contract (rates, lengths, sizes, tokenizer) travels with the backbone so that data loading,
caching, export and the runtime all read the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deramos_rt.audio import AudioProtocol


@dataclass(frozen=True)
class AudioContract:
    """What an audio backbone expects and returns.

    Attributes:
        sample_rate: input rate in Hz.
        clip_seconds: fixed input length; clips are padded / truncated to it.
        hidden_size: D of the output sequence.
    """

    sample_rate: int
    clip_seconds: float
    hidden_size: int

    # No ``protocol`` here on purpose: the resampler belongs to the model config, so the one way to get a
    # model's audio protocol is ``training.model.audio_protocol(config, contract)``.

    @property
    def num_samples(self) -> int:
        return AudioProtocol(self.sample_rate, self.clip_seconds).num_samples


@dataclass(frozen=True)
class TextContract:
    """What a text backbone expects and returns.

    Attributes:
        hidden_size: D of the output sequence.
        max_tokens: tokenizer truncation length (prompts are padded to the longest in a batch).
        vocab_size: the vocabulary size the tokenizer must have (guards against the transformers 5
            offline trap that silently yields a 5-token tokenizer).
    """

    hidden_size: int
    max_tokens: int
    vocab_size: int


class AudioBackbone(nn.Module):
    """Base class: ``forward(waveform (B, N) float32) -> (B, T, D)``."""

    contract: AudioContract

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class TextBackbone(nn.Module):
    """Base class: ``forward(input_ids (B, L) int64, attention_mask (B, L)) -> (B, L, D)``.

    ``tokenizer_dir`` names the local folder whose tokenizer files go with the weights
    (None for built-in tokenizers such as the tiny one).
    """

    contract: TextContract
    tokenizer_dir: str | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def freeze(module: nn.Module) -> nn.Module:
    """Freeze an encoder: no gradients, eval mode (dropout and batch-norm statistics off)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()
