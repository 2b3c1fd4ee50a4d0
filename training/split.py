"""The model cut into the three parts that a bundle's graphs hold, so each piece of work is done once.

* :class:`AudioPart`: waveform (B, N) -> the MI head's output and the projected TA key/value sequence
  ``audio_x`` (B, T, d). Every clip's audio is encoded once.
* :class:`TextPart`: token ids + mask (B, L) -> ``text_x`` = ``text_proj(text encoder)`` (B, L, d). Every
  distinct prompt is encoded once and reused for all its clips.
* :class:`TAPart`: ``audio_x``, ``text_x``, mask -> the TA head's output.

The MI / TA outputs are ``*_probs`` (B, K) for distribution heads and ``*_score`` (B,) for scalar heads;
expected scores (``probs @ bins``) are computed by the runtime. Composed, the three parts compute exactly
what ``DeraMosHeads.forward`` computes (tested); ONNX export (``export.graphs``), the AOTInductor packages
and the runtime's torch backend all run these modules, so there is one definition of the split.
"""

from __future__ import annotations

import torch
from torch import nn

AUDIO_INPUTS = ("waveform",)
TEXT_INPUTS = ("input_ids", "attention_mask")
TA_INPUTS = ("audio_x", "text_x", "text_mask")


def head_output_name(head: str, dim: str) -> str:
    """``mi_probs`` / ``ta_probs`` for distribution heads, ``mi_score`` / ``ta_score`` for scalar heads."""
    return f"{dim}_probs" if head == "distribution" else f"{dim}_score"


def _head_output(heads, logits: torch.Tensor) -> torch.Tensor:
    if heads.config.head == "scalar":
        return logits.squeeze(-1)
    return torch.softmax(logits, dim=-1)


class AudioPart(nn.Module):
    """Audio encoder + MI branch + TA key/value projection (model.heads' ``audio_proj``)."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.audio_encoder
        self.heads = model.heads

    def output_names(self) -> tuple[str, str]:
        return head_output_name(self.heads.config.head, "mi"), "audio_x"

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_hidden(self.encoder(waveform))

    def from_hidden(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The part after the encoder (used on cached encoder outputs too)."""
        mi_logits, audio_x = self.heads.audio_side(hidden)
        return _head_output(self.heads, mi_logits), audio_x


class TextPart(nn.Module):
    """Text encoder + TA query projection (model.heads' ``text_proj``)."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.text_encoder
        self.text_proj = model.heads.text_proj

    def output_names(self) -> tuple[str]:
        return ("text_x",)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_proj(self.encoder(input_ids, attention_mask))


class TAPart(nn.Module):
    """Cross-attention (query = text, key/value = audio), LayerNorm, pooling over real tokens, TA head."""

    def __init__(self, model):
        super().__init__()
        self.heads = model.heads

    def output_names(self) -> tuple[str]:
        return (head_output_name(self.heads.config.head, "ta"),)

    def forward(self, audio_x: torch.Tensor, text_x: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return _head_output(self.heads, self.heads.ta_logits(audio_x, text_x, text_mask))


def split_model(model) -> tuple[AudioPart, TextPart, TAPart]:
    """The three parts of a :class:`training.model.DeraMos` (sharing its modules; eval mode)."""
    return AudioPart(model).eval(), TextPart(model).eval(), TAPart(model).eval()
