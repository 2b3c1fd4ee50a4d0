"""MuQ-large-msd-iter, the paper's frozen audio encoder, built from torch + transformers alone.

MuQ (Zhu et al. 2025, github.com/tencent-ailab/MuQ, package ``muq`` 0.1.0) = a mel front end, a 2-D
convolutional subsampling (``model.conv``) and transformers' ``Wav2Vec2ConformerEncoder``
(``model.conformer``). The ``muq`` package itself is not used: it needs torchaudio (no CPU build here) and
the model hub, and its encoder config breaks under transformers 5. Hyper-parameters of the published
``config.json`` of OpenMuQ/MuQ-large-msd-iter (the encoder sizes are read from a folder's own
``config.json`` when one is loaded, see :func:`dims_from_config`):

* mel: 24 kHz, n_fft 2048 (periodic Hann window of 2048), hop 240, centred with reflect padding, 128 HTK
  mel bands from 0 to 12 kHz without filter normalisation, power 2; dB = 10 log10(max(x, 1e-10)) (no top
  dB); the last frame dropped; then (x - mean) / std with config ``stat`` (6.768444971712967,
  18.417922652295623). 100 frames per second.
* conv: two residual blocks relu(bn2(conv2(relu(bn1(conv1(x))))) + bn3(conv3(x))), 3x3 kernels, padding 1,
  conv1 and conv3 with stride 2; channels 1 -> 512 -> 512; flattened channel-major to 512 x 32 = 16384
  features; Linear(16384, 1024). 25 frames per second.
* conformer: ``encoder_depth`` 12 and ``encoder_dim`` 1024 override the file's 24 layers; 16 heads, FFN 4096,
  swish, depthwise kernel 31, rotary positions (base 10000), layer-norm eps 1e-5, no feature projection.
  ``last_hidden_state`` (after the encoder's final layer norm) is the output: (B, 750, 1024) for 30 s.

The STFT is a strided ``conv1d`` with windowed DFT kernels, so the whole encoder exports to ONNX with the
legacy exporter (``torch.stft`` only exports with the dynamo exporter).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deramos_rt.errors import DeramosError
from training.backbones.base import AudioBackbone, AudioContract
from training.weights import load_state_file, load_strict

SAMPLE_RATE = 24_000
N_FFT = 2048
HOP = 240
N_MELS = 128
STAT_MEAN = 6.768444971712967
STAT_STD = 18.417922652295623
SIZES = {
    "large": dict(conv_dim=512, encoder_dim=1024, encoder_depth=12, heads=16, ffn=4096),
    "tiny": dict(conv_dim=8, encoder_dim=32, encoder_depth=2, heads=4, ffn=64),
}
DIM_KEYS = ("conv_dim", "encoder_dim", "encoder_depth", "heads", "ffn")
# Published keys that feature extraction does not use (pre-training heads, unused modules, counters).
IGNORED_PREFIXES = ("model.linear.", "model.rvq.", "model.cls_token", "model.conformer.pos_conv_embed.")
IGNORED_SUFFIXES = ("num_batches_tracked", "embed_positions.inv_freq")


def htk_mel_filters(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None) -> np.ndarray:
    """Triangular HTK-scale mel filters without area normalisation, shape (n_freqs, n_mels) (torchaudio's formula)."""
    f_max = f_max if f_max is not None else sample_rate / 2
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    f_pts = 700.0 * (10 ** (np.linspace(mel(f_min), mel(f_max), n_mels + 2) / 2595.0) - 1.0)
    freqs = np.linspace(0, sample_rate // 2, n_freqs)
    slopes = f_pts[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / np.diff(f_pts)[:-1]
    up = slopes[:, 2:] / np.diff(f_pts)[1:]
    return np.maximum(0.0, np.minimum(down, up))


class MuQMelFrontEnd(nn.Module):
    """Waveform (B, N) at 24 kHz -> normalised log-mel (B, 1, 128, N // 240) with no learned parameters."""

    def __init__(self, mean: float = STAT_MEAN, std: float = STAT_STD):
        super().__init__()
        n = torch.arange(N_FFT, dtype=torch.float64)
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / N_FFT)  # periodic Hann
        k = torch.arange(N_FFT // 2 + 1, dtype=torch.float64).unsqueeze(1)
        angle = 2 * math.pi * k * n / N_FFT
        kernels = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window]).unsqueeze(1)
        self.register_buffer("dft", kernels.float(), persistent=False)
        mel = torch.from_numpy(htk_mel_filters(N_FFT // 2 + 1, N_MELS, SAMPLE_RATE)).float()
        self.register_buffer("mel", mel.T.contiguous(), persistent=False)
        self.mean, self.std = float(mean), float(std)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = F.pad(waveform.unsqueeze(1), (N_FFT // 2, N_FFT // 2), mode="reflect")
        real, imag = F.conv1d(x, self.dft, stride=HOP).chunk(2, dim=1)
        power = real.square() + imag.square()  # (B, 1025, frames)
        mel = torch.matmul(self.mel, power)  # (B, 128, frames)
        db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
        db = db[..., :-1]  # MuQ drops the last (centred, half-padded) frame
        return ((db - self.mean) / self.std).unsqueeze(1)


class ResBlock2d(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + bn3(conv3(x))), halving both axes."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv3 = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.bn3 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.bn3(self.conv3(x)))


class Conv2dSubsampling(nn.Module):
    """(B, 1, 128, T) -> (B, T / 4, dim): two residual blocks, channel-major flatten, linear projection."""

    def __init__(self, conv_dim: int, dim: int):
        super().__init__()
        self.conv = nn.ModuleList([ResBlock2d(1, conv_dim), ResBlock2d(conv_dim, conv_dim)])
        self.linear = nn.Linear(conv_dim * (N_MELS // 4), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.conv:
            x = block(x)
        b, c, f, t = x.shape
        return self.linear(x.permute(0, 3, 1, 2).reshape(b, t, c * f))


def _sizes(s: str | Mapping[str, int]) -> Mapping[str, int]:
    """A named size (:data:`SIZES`) or explicit sizes (:data:`DIM_KEYS`)."""
    if isinstance(s, str):
        if s not in SIZES:
            raise DeramosError(f"unknown muq size {s!r}; choose one of: {', '.join(SIZES)}")
        return SIZES[s]
    return s


def conformer_config(s: str | Mapping[str, int]):
    """The ``Wav2Vec2ConformerConfig`` of a MuQ size or sizes ``s`` (eager attention: exact and exportable)."""
    from transformers import Wav2Vec2ConformerConfig

    s = _sizes(s)

    cfg = Wav2Vec2ConformerConfig(
        hidden_size=s["encoder_dim"], num_hidden_layers=s["encoder_depth"], num_attention_heads=s["heads"],
        intermediate_size=s["ffn"], hidden_act="swish", conv_depthwise_kernel_size=31, layer_norm_eps=1e-5,
        position_embeddings_type="rotary", rotary_embedding_base=10000, max_source_positions=5000,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, conformer_conv_dropout=0.0,
        layerdrop=0.0, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16)
    cfg._attn_implementation = "eager"
    return cfg


class MuQModel(nn.Module):
    """The ``model.*`` part of the published checkpoint that feature extraction uses."""

    def __init__(self, s: str | Mapping[str, int]):
        super().__init__()
        from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import Wav2Vec2ConformerEncoder

        s = _sizes(s)
        self.conv = Conv2dSubsampling(s["conv_dim"], s["encoder_dim"])
        self.conformer = Wav2Vec2ConformerEncoder(conformer_config(s))
        self.conformer.pos_conv_embed = None  # built by transformers, never used by MuQ's forward


class MuQBackbone(AudioBackbone):
    """MuQ as a frozen DeRA-MOS audio encoder: waveform (B, N) at 24 kHz -> (B, N / 960, 1024).

    Args:
        size: ``"large"`` (MuQ-large-msd-iter) or ``"tiny"`` (same structure and key names, for tests).
        clip_seconds: the fixed clip length (the paper uses 30 s).
        mean, std: the checkpoint's mel statistics (config ``stat``).
        dims: explicit sizes (:data:`DIM_KEYS`) instead of a named size; loading a published folder sets
            them from its ``config.json`` (:func:`dims_from_config`).
    """

    def __init__(self, size: str = "large", clip_seconds: float = 30.0, mean: float = STAT_MEAN, std: float = STAT_STD,
                 dims: Mapping[str, int] | None = None):
        super().__init__()
        if dims is None and size not in SIZES:
            raise DeramosError(f"unknown muq size {size!r}; choose one of: {', '.join(SIZES)}")
        self.clip_seconds = clip_seconds
        self.frontend = MuQMelFrontEnd(mean, std)
        self.resize(dict(SIZES[size]) if dims is None else dict(dims))

    def resize(self, dims: dict[str, int]) -> None:
        """(Re)build the conv subsampling and conformer for ``dims`` (random weights until loaded)."""
        missing = [k for k in DIM_KEYS if k not in dims]
        if missing:
            raise DeramosError(f"muq sizes lack {', '.join(missing)}; need all of: {', '.join(DIM_KEYS)}")
        if dims["encoder_dim"] % dims["heads"]:
            raise DeramosError(f"muq encoder_dim {dims['encoder_dim']} is not divisible by {dims['heads']} heads")
        self.dims = {k: int(dims[k]) for k in DIM_KEYS}
        self.size = next((name for name, preset in SIZES.items() if preset == self.dims), "custom")
        self.contract = AudioContract(SAMPLE_RATE, self.clip_seconds, self.dims["encoder_dim"])
        self.model = MuQModel(self.dims)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return unpadded_conformer(self.model.conformer, self.model.conv(self.frontend(waveform)))


def unpadded_conformer(encoder, hidden: torch.Tensor) -> torch.Tensor:
    """``Wav2Vec2ConformerEncoder``'s forward for unpadded clips (MuQ's fixed length): its layers without a mask.

    transformers builds an all-zero attention mask here when it sees tracing or CUDA graph capture, in some
    versions from a CPU scalar, which capture refuses (the H200 run of 2026-11-27); adding zeros changes
    nothing. Dropout and layer drop are off in eval mode (the encoder is frozen).
    """
    positions = encoder.embed_positions(hidden) if encoder.embed_positions is not None else None
    for layer in encoder.layers:
        hidden = layer(hidden, attention_mask=None, relative_position_embeddings=positions)
    return encoder.layer_norm(hidden)


def build_audio(name: str = "muq", size: str = "large", clip_seconds: float = 30.0,
                mean: float = STAT_MEAN, std: float = STAT_STD, dims: Mapping[str, int] | None = None) -> MuQBackbone:
    return MuQBackbone(size, clip_seconds, mean, std, dims)


def dims_from_config(cfg: Mapping, source: str = "config.json") -> dict[str, int]:
    """MuQ sizes from a published ``config.json``: ``conv_dim``, ``encoder_dim``, ``encoder_depth`` at the top
    level (they override the conformer config's own width and depth, as MuQ's code does) and the heads and
    FFN width from ``w2v2_config`` (``num_attention_heads``, ``intermediate_size``)."""
    w2v2 = cfg.get("w2v2_config") or {}
    found = {"conv_dim": cfg.get("conv_dim"), "encoder_dim": cfg.get("encoder_dim"),
             "encoder_depth": cfg.get("encoder_depth"), "heads": w2v2.get("num_attention_heads"),
             "ffn": w2v2.get("intermediate_size")}
    names = {"heads": "w2v2_config.num_attention_heads", "ffn": "w2v2_config.intermediate_size"}
    bad = [names.get(k, k) for k, v in found.items() if not isinstance(v, int) or isinstance(v, bool) or v <= 0]
    if bad:
        raise DeramosError(f"{source} lacks valid MuQ sizes: {', '.join(bad)} (expected positive integers)")
    return found


def _is_ignored(key: str) -> bool:
    return key.startswith(IGNORED_PREFIXES) or key.endswith(IGNORED_SUFFIXES)


def load_muq_state(backbone: MuQBackbone, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load a state dict in the published layout (``model.conv.*``, ``model.conformer.*``, ...).

    Keys that feature extraction does not use are skipped (:data:`IGNORED_PREFIXES`); every other missing,
    unexpected or mis-shaped key is an error naming it. The backbone ends in eval mode.
    """
    used = {k: v for k, v in state.items() if not _is_ignored(k)}
    load_strict(backbone, used, source, ignore_missing=tuple(k for k in backbone.state_dict() if _is_ignored(k)))
    backbone.eval()


def load_audio_weights(backbone: MuQBackbone, path: str | Path) -> None:
    """Load MuQ weights from a local Hugging Face folder (``config.json`` + ``model.safetensors``) or a file."""
    path = Path(path)
    if path.is_dir():
        _check_config(backbone, path)
        weights = path / "model.safetensors"
        if not weights.is_file():
            weights = path / "pytorch_model.bin"
        path = weights
    load_muq_state(backbone, load_state_file(path), str(path))


def _check_config(backbone: MuQBackbone, folder: Path) -> None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise DeramosError(f"no config.json in {folder}: expected a local copy of OpenMuQ/MuQ-large-msd-iter")
    try:
        cfg = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DeramosError(f"cannot read {config_path}: {exc}") from exc
    for key, ours in (("n_mels", N_MELS), ("hop_length", HOP)):
        if key in cfg and cfg[key] != ours:
            raise DeramosError(f"{config_path}: {key}={cfg[key]}, but MuQ's front end is fixed at {key}={ours}")
    dims = dims_from_config(cfg, str(config_path))
    if dims != backbone.dims:  # the folder's config decides the encoder's sizes, not a size table
        backbone.resize(dims)
    stat = cfg.get("stat", {})
    mean, std = stat.get("melspec_2048_mean"), stat.get("melspec_2048_std")
    if mean is not None and std is not None:
        backbone.frontend.mean, backbone.frontend.std = float(mean), float(std)


build = build_audio
load_weights = load_audio_weights
