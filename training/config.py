"""Configurations as data: the model, the losses and the training protocol.

A run directory's ``config.json`` holds all three; :class:`ModelConfig` alone fully rebuilds a model
(backbones, their options and weight sources, head sizes, bins, the tokenizer). Named recipes live in
``training/configs/*.json`` and are overridden field by field from the command line.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deramos_rt.audio import RESAMPLERS
from deramos_rt.errors import DeramosError

CONFIG_DIR = Path(__file__).parent / "configs"
LOSS_KINDS = ("distribution", "pairwise", "l1", "pamr")


@dataclass
class BackboneConfig:
    """One frozen encoder.

    Attributes:
        name: registered backbone name (``training.backbones.list_backbones``).
        options: builder options, e.g. ``{"size": "tiny"}``.
        weights: local file/folder with real weights; None = random init (then the weights are saved
            inside the run's ``model.safetensors`` so the run can be rebuilt).
        tokenizer: text only: ``"tiny"`` or a local tokenizer folder; None = the weights folder.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    tokenizer: str | None = None


@dataclass
class ModelConfig:
    """DeRA-MOS heads on two frozen encoders. Defaults are the paper's settings.

    Attributes:
        audio, text: the encoders.
        num_bins, bin_min, bin_max: score distribution support, centres linspace(bin_min, bin_max, num_bins).
        mi_heads, mi_ff, dropout: MI transformer layer (d_model = audio hidden size).
        mi_mlp: hidden sizes of the MI head MLP (paper 512, 256).
        ta_dim, ta_heads: TA cross-attention width (paper 768 = RoBERTa width; None = text hidden size).
        ta_mlp: hidden sizes of the TA head MLP (paper 384, 192).
        positional_encoding: add the sinusoidal table before the MI transformer.
        pe_max_len: rows of the positional table.
        ta_pooling: ``"attentive"`` (learned, masked to real tokens) or ``"mean"`` (masked mean; what the
            authors' research code computes at batch size 1).
        ta_kv_source: ``"audio"`` (DeRA-MOS: the projected raw encoder sequence) or ``"mi"``
            (ASTAR-NTU: the MI transformer output).
        max_tokens: tokenizer truncation length.
        head: ``"distribution"`` (K-bin softmax, expected score) or ``"scalar"`` (regression baselines).
        resampler: how clips are brought to the audio encoder's rate, part of the model's audio protocol:
            ``"soxr"`` (soxr HQ; the default, and what a config without the field means) or
            ``"torchaudio"`` (torchaudio's default ``Resample``, per channel, then the channel mean: the
            authors' research data path, so models trained with it hear what they were trained on).
        audio_dim, text_dim: encoder widths; filled in when the model is built, recorded so the heads
            can be rebuilt without the encoders.
    """

    audio: BackboneConfig = field(default_factory=lambda: BackboneConfig("muq"))
    text: BackboneConfig = field(default_factory=lambda: BackboneConfig("roberta"))
    num_bins: int = 20
    bin_min: float = 1.0
    bin_max: float = 5.0
    mi_heads: int = 4
    mi_ff: int = 2048
    mi_mlp: list[int] = field(default_factory=lambda: [512, 256])
    dropout: float = 0.3
    ta_dim: int | None = 768
    ta_heads: int = 4
    ta_mlp: list[int] = field(default_factory=lambda: [384, 192])
    positional_encoding: bool = True
    pe_max_len: int = 5000
    ta_pooling: str = "attentive"
    ta_kv_source: str = "audio"
    max_tokens: int = 128
    head: str = "distribution"
    resampler: str = "soxr"
    audio_dim: int | None = None
    text_dim: int | None = None

    def validate(self) -> None:
        if self.head not in ("distribution", "scalar"):
            raise DeramosError(f"head must be 'distribution' or 'scalar', got {self.head!r}")
        if self.ta_pooling not in ("attentive", "mean"):
            raise DeramosError(f"ta_pooling must be 'attentive' or 'mean', got {self.ta_pooling!r}")
        if self.ta_kv_source not in ("audio", "mi"):
            raise DeramosError(f"ta_kv_source must be 'audio' or 'mi', got {self.ta_kv_source!r}")
        if self.resampler not in RESAMPLERS:
            raise DeramosError(f"resampler must be one of {', '.join(RESAMPLERS)}, got {self.resampler!r}")
        if self.num_bins < 2 or not self.bin_min < self.bin_max:
            raise DeramosError("need num_bins >= 2 and bin_min < bin_max")


@dataclass
class LossConfig:
    """Which losses and with what weights.

    Attributes:
        kind: ``"distribution"`` (CE-Gauss on 20-bin heads, the DeRA-MOS family), ``"pairwise"`` (the
            authors' ranking ablation: as ``distribution`` with BALR replaced by a margin-0 pairwise
            ranking loss on the expected MI scores, weighted by ``lambda_balr``), ``"l1"`` (AudioMOS
            baseline: L1 on the expected score), or ``"pamr"`` (QAMRO pairwise ranking + L1).
        sigma: CE-Gauss soft-label width.
        lambda_balr, lambda_sama: weights of the ranking (BALR, or the pairwise loss for kind
            ``"pairwise"``) and alignment losses (0 disables).
        temperature: BALR temperature.
        sama_map_cos_to_unit: map the cosine to [0, 1] before SAMA (third-party digest of the paper).
        pamr_gamma, pamr_margin: PAMR weight gamma and margin scale.
    """

    kind: str = "distribution"
    sigma: float = 0.25
    lambda_balr: float = 0.01
    lambda_sama: float = 0.2
    temperature: float = 1.0
    sama_map_cos_to_unit: bool = False
    pamr_gamma: float = 7.0
    pamr_margin: float = 0.2

    def validate(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise DeramosError(f"loss kind must be one of {', '.join(LOSS_KINDS)}; got {self.kind!r}")


@dataclass
class TrainConfig:
    """The training protocol (paper defaults)."""

    lr: float = 5e-5
    weight_decay: float = 0.01
    batch_size: int = 24
    epochs: int = 100
    patience: int = 15
    seed: int = 1984
    device: str = "cpu"


@dataclass
class RunConfig:
    """Everything a run directory records."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        unknown = sorted(k for k in data if k not in ("model", "loss", "train") and not k.startswith("_"))
        if unknown:
            raise DeramosError(f"unknown section(s) in config: {', '.join(unknown)}; allowed: model, loss, train")
        return cls(
            model=model_config_from_dict(data.get("model", {})),
            loss=_build(LossConfig, data.get("loss", {}), "loss"),
            train=_build(TrainConfig, data.get("train", {}), "train"),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DeramosError(f"cannot read config {path}: {exc}") from exc
        return cls.from_dict(data)


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    data = dict(data)
    for key in ("audio", "text"):
        if key in data and isinstance(data[key], dict):
            data[key] = _build(BackboneConfig, data[key], f"model.{key}")
    cfg = _build(ModelConfig, data, "model")
    cfg.validate()
    return cfg


def _build(cls, data: dict[str, Any], where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise DeramosError(f"unknown field(s) in {where} config: {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    return cls(**data)


def list_recipes() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_recipe(name_or_path: str) -> RunConfig:
    """A named recipe from ``training/configs`` or a path to a JSON file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise DeramosError(f"unknown recipe {name_or_path!r}; choose one of: {', '.join(list_recipes())}")
    return RunConfig.from_json(path)
