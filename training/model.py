"""DeRA-MOS: frozen audio and text encoders, an MI branch and a decoupled TA branch.

Construction only; losses live in ``losses.py``, training in ``train.py``.

The heads (:class:`DeraMosHeads`) run on encoder outputs, so they can be trained from cached features,
exported to ONNX on their own, and shared by imported research checkpoints. Differences from the
authors' research code, on purpose:

* The TA attentive pooling masks the padding. The research code passes it an inverted mask (it pools
  over the padding tokens), so there a clip's TA score depends on which prompts share its batch; here a
  clip's scores never depend on its batch mates.
* The positional encoding is added at every batch size. In the research code the table's shape makes
  the addition fire only at batch size 1 (its evaluation setting), so its checkpoints were trained
  without it; ``positional_encoding=False`` reproduces how they were trained.

The audio a model hears is fixed by :func:`audio_protocol`: the audio encoder's rate and clip length plus
the config's resampler. Every place that prepares clips for a model uses it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deramos_rt.audio import AudioProtocol
from deramos_rt.errors import DeramosError
from training.config import BackboneConfig, ModelConfig


def audio_protocol(config: ModelConfig, contract) -> AudioProtocol:
    """The audio protocol of a model: its audio encoder's rate and clip length + the config's resampler.

    Args:
        config: the model config (``resampler``).
        contract: the audio backbone's :class:`training.backbones.base.AudioContract`.

    Returns:
        The :class:`deramos_rt.audio.AudioProtocol` every clip for this model is prepared with.
    """
    return AudioProtocol(contract.sample_rate, contract.clip_seconds, config.resampler)


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """The Transformer positional table: row t = [sin(t w_0), cos(t w_0), sin(t w_1), ...]."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return table


class AttentivePooling(nn.Module):
    """Softmax-weighted sum over time with a learned score ``Linear(d, 1)``; masked steps get weight 0."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.score(x).squeeze(-1)
        if mask is not None:
            scores = scores.masked_fill(mask == 0, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=1)
        return torch.einsum("bt,btd->bd", weights, x)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real time steps (mask 1 = real)."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1e-9)


def _mlp(dims: list[int], dropout: float) -> nn.Sequential:
    """Linear-ReLU-Dropout-Linear-ReLU-Linear: dropout after the first ReLU only (paper / research code)."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
            if i == 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class DeraMosHeads(nn.Module):
    """Everything after the frozen encoders.

    Args:
        config: model config; ``audio_dim`` and ``text_dim`` must be set.

    ``forward(audio_hidden (B, T_a, D_a), text_hidden (B, T_t, D_t), text_mask (B, T_t))`` returns a dict
    with ``mi`` and ``ta`` (expected scores, (B,)), and for distribution heads ``mi_probs`` and
    ``ta_probs`` ((B, K)). With ``return_alignment=True`` it adds ``audio_vec`` and ``text_vec`` (the
    training-only SAMA inputs, taken before cross-attention).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not config.audio_dim or not config.text_dim:
            raise DeramosError("ModelConfig.audio_dim and text_dim must be set to build the heads")
        self.config = config
        d_a, d_t = config.audio_dim, config.text_dim
        d_x = config.ta_dim or d_t
        out = config.num_bins if config.head == "distribution" else 1
        self.register_buffer("bin_centers", torch.linspace(config.bin_min, config.bin_max, config.num_bins), persistent=False)
        self.register_buffer("pe", sinusoidal_table(config.pe_max_len, d_a), persistent=False)
        self.pe_dropout = nn.Dropout(config.dropout)
        self.mi_encoder = nn.TransformerEncoderLayer(
            d_a, config.mi_heads, config.mi_ff, config.dropout, activation="relu", batch_first=True
        )
        self.mi_pool = AttentivePooling(d_a)
        self.mi_mlp = _mlp([d_a, *config.mi_mlp, out], config.dropout)
        self.audio_proj = nn.Linear(d_a, d_x)
        self.text_proj = nn.Linear(d_t, d_x)
        self.cross_attn = nn.MultiheadAttention(d_x, config.ta_heads, dropout=config.dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(d_x)
        self.ta_pool = AttentivePooling(d_x)
        self.ta_mlp = _mlp([d_x, *config.ta_mlp, out], config.dropout)
        self.align_audio_pool = AttentivePooling(d_x)  # training-only (SAMA)

    def forward(
        self,
        audio_hidden: torch.Tensor,
        text_hidden: torch.Tensor,
        text_mask: torch.Tensor,
        return_alignment: bool = False,
    ) -> dict[str, torch.Tensor]:
        mi_logits, audio_x = self.audio_side(audio_hidden)
        text_x = self.text_proj(text_hidden)
        out = {**self._scores("mi", mi_logits), **self._scores("ta", self.ta_logits(audio_x, text_x, text_mask))}
        if return_alignment:
            out["audio_vec"] = self.align_audio_pool(audio_x)
            out["text_vec"] = masked_mean(text_x, text_mask)
        return out

    def audio_side(self, audio_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MI logits and the projected TA key/value sequence ``audio_x`` (what a bundle's audio graph holds)."""
        mi_seq = self.mi_branch(audio_hidden)
        kv_source = audio_hidden if self.config.ta_kv_source == "audio" else mi_seq
        return self.mi_mlp(self.mi_pool(mi_seq)), self.audio_proj(kv_source)

    def ta_logits(self, audio_x: torch.Tensor, text_x: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """TA logits from projected audio and text (what a bundle's TA graph holds).

        Query = text, key/value = audio. Audio has no padding (fixed-length protocol), so no key mask; rows
        for padded text positions are computed but never pooled.
        """
        fused, _ = self.cross_attn(text_x, audio_x, audio_x, need_weights=False)
        fused = self.cross_norm(fused)
        if self.config.ta_pooling == "attentive":
            return self.ta_mlp(self.ta_pool(fused, text_mask))
        return self.ta_mlp(masked_mean(fused, text_mask))

    def mi_branch(self, audio_hidden: torch.Tensor) -> torch.Tensor:
        """PE (optional) + dropout + one post-LN transformer layer: (B, T, D_a) -> (B, T, D_a)."""
        x = audio_hidden
        if self.config.positional_encoding:
            steps = x.shape[1]
            if steps > self.pe.shape[0]:
                raise DeramosError(f"audio sequence of {steps} frames exceeds the positional table ({self.pe.shape[0]})")
            x = x + self.pe[:steps].unsqueeze(0)
        return self.mi_encoder(self.pe_dropout(x))

    def _scores(self, name: str, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.config.head == "scalar":
            return {name: logits.squeeze(-1)}
        probs = torch.softmax(logits, dim=-1)
        return {name: probs @ self.bin_centers, f"{name}_probs": probs}


class DeraMos(nn.Module):
    """Frozen encoders + :class:`DeraMosHeads`. Either encoder may be None (heads-only models).

    ``forward(waveform (B, N), input_ids (B, L), attention_mask (B, L))`` -> the heads' dict.
    """

    def __init__(self, config: ModelConfig, audio_encoder: nn.Module | None, text_encoder: nn.Module | None):
        super().__init__()
        self.config = config
        self.audio_encoder = audio_encoder
        self.text_encoder = text_encoder
        self.heads = DeraMosHeads(config)

    @property
    def audio_protocol(self) -> AudioProtocol:
        """How clips are prepared for this model (see :func:`audio_protocol`)."""
        if self.audio_encoder is None:
            raise DeramosError("this model has no audio encoder (heads only), so it has no audio protocol")
        return audio_protocol(self.config, self.audio_encoder.contract)

    def train(self, mode: bool = True) -> "DeraMos":
        super().train(mode)
        for enc in (self.audio_encoder, self.text_encoder):
            if enc is not None:
                enc.eval()  # frozen encoders always run in eval mode
        return self

    @torch.no_grad()
    def encode_audio(self, waveform: torch.Tensor) -> torch.Tensor:
        if self.audio_encoder is None:
            raise DeramosError("this model has no audio encoder (heads only); give encoder outputs to model.heads")
        return self.audio_encoder(waveform)

    @torch.no_grad()
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.text_encoder is None:
            raise DeramosError("this model has no text encoder (heads only); give encoder outputs to model.heads")
        return self.text_encoder(input_ids, attention_mask)

    def forward(
        self, waveform: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_alignment: bool = False
    ) -> dict[str, torch.Tensor]:
        audio = self.encode_audio(waveform)
        text = self.encode_text(input_ids, attention_mask)
        return self.heads(audio, text, attention_mask, return_alignment=return_alignment)


def build_encoder(kind: str, cfg: BackboneConfig, load_weights: bool = True) -> nn.Module:
    """Create a frozen backbone; load its weights from ``cfg.weights`` when given and asked for."""
    from training.backbones import create_backbone, freeze, load_backbone_weights

    encoder = create_backbone(kind, cfg.name, **cfg.options)
    if load_weights and cfg.weights:
        load_backbone_weights(kind, cfg.name, encoder, cfg.weights)
    return freeze(encoder)


def build_model(config: ModelConfig, load_weights: bool = True, encoders: bool = True) -> DeraMos:
    """Build a DeRA-MOS model from its config (the factory every entry point uses).

    Args:
        config: the model config; ``audio_dim`` / ``text_dim`` are filled in from the encoders.
        load_weights: load encoder weights named in the config (False for tests and for run directories
            whose ``model.safetensors`` carries the encoder weights).
        encoders: False builds the heads only (scoring from cached encoder outputs).
    """
    config.validate()
    audio = text = None
    if encoders:
        audio = build_encoder("audio", config.audio, load_weights)
        text = build_encoder("text", config.text, load_weights)
        _check_dim(config, "audio_dim", audio.contract.hidden_size)
        _check_dim(config, "text_dim", text.contract.hidden_size)
    return DeraMos(config, audio, text)


def _check_dim(config: ModelConfig, field: str, actual: int) -> None:
    recorded = getattr(config, field)
    if recorded is not None and recorded != actual:
        raise DeramosError(f"config {field}={recorded} but the encoder produces {actual}")
    setattr(config, field, actual)


def build_tokenizer(model: DeraMos):
    """The prompt tokenizer that goes with the model's text encoder (checked against its vocabulary)."""
    from deramos_rt.text import load_tokenizer

    cfg = model.config.text
    enc = model.text_encoder
    spec = cfg.tokenizer or (enc.tokenizer_dir if enc is not None else None) or cfg.weights
    if spec is None or (spec != "tiny" and not Path(spec).is_dir()):
        raise DeramosError(f"no tokenizer folder known for text backbone {cfg.name!r} (weights {cfg.weights!r} are "
                           "not a folder with tokenizer files); set model.text.tokenizer / --tokenizer to a local "
                           "tokenizer folder, e.g. roberta-base's (vocab.json + merges.txt)")
    vocab = enc.contract.vocab_size if enc is not None else None
    return load_tokenizer(str(Path(spec)) if spec != "tiny" else spec, model.config.max_tokens, vocab)
