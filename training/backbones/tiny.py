"""Tiny random encoders for tests and demos: real structure (spectral front end / embeddings +
one transformer layer), a few thousand parameters, milliseconds per batch on a CPU.

The audio front end is a fixed DFT done as a strided conv1d (exportable to ONNX, no ``torch.stft``),
so its features still reflect loudness, noise and pitch even with random projections on top.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from deramos_rt.text import tiny_vocab
from training.backbones.base import AudioBackbone, AudioContract, TextBackbone, TextContract


def _dft_kernels(n_fft: int) -> torch.Tensor:
    """(2 * (n_fft // 2 + 1), 1, n_fft) Hann-windowed cosine and sine kernels."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64).unsqueeze(1)
    window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / n_fft)
    angle = 2 * math.pi * k * n / n_fft
    kernels = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])
    return kernels.unsqueeze(1).float()


class TinyAudio(AudioBackbone):
    """Log power spectrum (conv DFT) -> Linear -> GELU -> 1 transformer layer: (B, N) -> (B, T, hidden)."""

    def __init__(self, sample_rate: int = 16000, clip_seconds: float = 2.0, hidden_size: int = 32,
                 n_fft: int = 256, hop: int = 128, heads: int = 4):
        super().__init__()
        self.contract = AudioContract(sample_rate, clip_seconds, hidden_size)
        self.hop = hop
        self.register_buffer("dft", _dft_kernels(n_fft), persistent=False)
        self.proj = nn.Linear(n_fft // 2 + 1, hidden_size)
        self.layer = nn.TransformerEncoderLayer(hidden_size, heads, hidden_size * 2, 0.0, batch_first=True)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spec = nn.functional.conv1d(waveform.unsqueeze(1), self.dft, stride=self.hop)
        real, imag = spec.chunk(2, dim=1)
        logpow = torch.log10(real.square() + imag.square() + 1e-8).transpose(1, 2)
        return self.layer(nn.functional.gelu(self.proj(logpow)))


class TinyText(TextBackbone):
    """Embeddings (tokens + positions) -> 1 transformer layer, using the built-in tiny tokenizer."""

    tokenizer_dir = "tiny"

    def __init__(self, hidden_size: int = 32, max_tokens: int = 64, heads: int = 4):
        super().__init__()
        vocab = len(tiny_vocab())
        self.contract = TextContract(hidden_size, max_tokens, vocab)
        self.tokens = nn.Embedding(vocab, hidden_size)
        self.positions = nn.Embedding(max_tokens, hidden_size)
        self.layer = nn.TransformerEncoderLayer(hidden_size, heads, hidden_size * 2, 0.0, batch_first=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(pos).unsqueeze(0)
        return self.layer(x, src_key_padding_mask=attention_mask == 0)


def build_audio(name: str = "tiny", **options) -> TinyAudio:
    return TinyAudio(**options)


def build_text(name: str = "tiny", **options) -> TinyText:
    return TinyText(**options)


def load_weights(backbone: nn.Module, path: str) -> None:
    """Load a safetensors file saved from a tiny backbone (strict)."""
    from training.weights import load_safetensors_strict

    load_safetensors_strict(backbone, path)
