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

Each part names its symbolic axes (:meth:`AudioPart.dynamic_axes` ...): ``batch`` on every input and output,
``tokens`` on the text length. An ensemble (``training.ensemble``) has its own three parts with the same
inputs and a member axis at dim 1 of every output; :func:`split_model` returns those for an ensemble.
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


BATCH = {0: "batch"}
BATCH_TOKENS = {0: "batch", 1: "tokens"}


def _head_output(heads, logits: torch.Tensor) -> torch.Tensor:
    if heads.config.head == "scalar":
        return logits.squeeze(-1)
    return torch.softmax(logits, dim=-1)


def audio_outputs(heads, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One set of heads after the audio encoder: (MI head output, ``audio_x``)."""
    mi_logits, audio_x = heads.audio_side(hidden)
    return _head_output(heads, mi_logits), audio_x


def ta_output(heads, audio_x: torch.Tensor, text_x: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """One set of heads' TA output from projected audio and text."""
    return _head_output(heads, heads.ta_logits(audio_x, text_x, text_mask))


class AudioPart(nn.Module):
    """Audio encoder + MI branch + TA key/value projection (model.heads' ``audio_proj``)."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.audio_encoder
        self.heads = model.heads

    def output_names(self) -> tuple[str, str]:
        return head_output_name(self.heads.config.head, "mi"), "audio_x"

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {name: BATCH for name in (*AUDIO_INPUTS, *self.output_names())}

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_hidden(self.encoder(waveform))

    def from_hidden(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The part after the encoder (used on cached encoder outputs too)."""
        return audio_outputs(self.heads, hidden)


class TextPart(nn.Module):
    """Text encoder + TA query projection (model.heads' ``text_proj``)."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.text_encoder
        self.text_proj = model.heads.text_proj

    def output_names(self) -> tuple[str]:
        return ("text_x",)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {name: BATCH_TOKENS for name in (*TEXT_INPUTS, "text_x")}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_proj(self.encoder(input_ids, attention_mask))


class TAPart(nn.Module):
    """Cross-attention (query = text, key/value = audio), LayerNorm, pooling over real tokens, TA head."""

    def __init__(self, model):
        super().__init__()
        self.heads = model.heads

    def output_names(self) -> tuple[str]:
        return (head_output_name(self.heads.config.head, "ta"),)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        (ta_name,) = self.output_names()
        return {"audio_x": BATCH, "text_x": BATCH_TOKENS, "text_mask": BATCH_TOKENS, ta_name: BATCH}

    def forward(self, audio_x: torch.Tensor, text_x: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return ta_output(self.heads, audio_x, text_x, text_mask)


def split_model(model) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The three parts of a :class:`training.model.DeraMos` (sharing its modules; eval mode).

    An ensemble (anything with a ``parts()`` method, i.e. :class:`training.ensemble.Ensemble`) gives its own
    parts, so every caller (ONNX and AOTI export, the parity gate, the torch backend) serves both.
    """
    if hasattr(model, "parts"):
        return model.parts()
    return AudioPart(model).eval(), TextPart(model).eval(), TAPart(model).eval()
