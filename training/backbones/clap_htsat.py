"""LAION-CLAP's audio tower (HTSAT) as a frozen DeRA-MOS audio backbone.

The AudioMOS baseline and QAMRO score music with LAION-CLAP's music checkpoint
(``music_audioset_epoch_15_esc_90.14.pt``: HTSAT-base, patch embedding 128, depths 2-2-12-2, final width
1024, no feature fusion). transformers' :class:`~transformers.ClapAudioModel` implements the same network,
so this module wraps it instead of the ``laion-clap`` package (which cannot be installed here, see
``environment.md``) and adds two things transformers does not give us:

* A mel front end in plain torch ops that exports to ONNX with either exporter: the STFT is a strided
  ``conv1d`` with Hann-windowed DFT kernels (``torch.stft`` exports only with the dynamo exporter). It
  reproduces ``ClapFeatureExtractor(truncation="rand_trunc")`` for a clip of exactly 10 s, which is what
  the fixed-length protocol (``deramos_rt.audio``) always delivers: no random crop, no repeat-padding.
  Its defaults (Slaney mel scale and norm, 50-14000 Hz, 10 log10 power with a 1e-10 floor) are those of
  LAION's own in-model front end (torchlibrosa) and of the published Hugging Face preprocessor configs
  (``frequency_min`` 50; note that ``ClapFeatureExtractor()``'s own default is 0 Hz).
* Weight loading from local files: an original LAION ``.pt`` checkpoint (converted by
  :func:`convert_laion_audio_state`) or a Hugging Face folder (``config.json`` + safetensors).

The output is a time sequence (B, 32, D): see :class:`ClapHtsatBackbone`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deramos_rt.errors import DeramosError
from training.backbones.base import AudioBackbone, AudioContract

SAMPLE_RATE = 48_000
CLIP_SECONDS = 10.0
N_FFT = 1024
HOP = 480
N_MELS = 64
FMIN = 50.0
FMAX = 14_000.0
AMIN = 1e-10  # power floor before the log (-100 dB), as in torchlibrosa and ClapFeatureExtractor

# HTSAT settings shared by every size (LAION's create_htsat_model): a 256 x 256 "image" made of the 64 mel
# bins x 1024 frames folded in 4, cut into 4 x 4 patches, attended in 8 x 8 windows.
_COMMON = dict(spec_size=256, patch_size=4, patch_stride=[4, 4], window_size=8, num_mel_bins=N_MELS,
               mlp_ratio=4.0, qkv_bias=True, enable_fusion=False, fusion_type=None,
               # A frozen encoder must be deterministic even if a caller leaves it in train mode.
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0)
SIZES: dict[str, dict] = {
    # LAION HTSAT-base (the music checkpoint): 67.8 M parameters in ClapAudioModel.
    "base": dict(patch_embeds_hidden_size=128, depths=[2, 2, 12, 2], num_attention_heads=[4, 8, 16, 32]),
    # Same structure (4 stages, shifted windows, patch merging), tiny widths: for tests.
    "tiny": dict(patch_embeds_hidden_size=8, depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 4, 8]),
}
# Structural ClapAudioConfig fields a weights folder must agree on.
_STRUCTURE = ("patch_embeds_hidden_size", "depths", "num_attention_heads", "spec_size", "patch_size",
              "patch_stride", "window_size", "num_mel_bins", "mlp_ratio", "qkv_bias", "enable_fusion")


def clap_audio_config(size: str = "base"):
    """The :class:`~transformers.ClapAudioConfig` of an HTSAT size (``"base"`` or ``"tiny"``)."""
    from transformers import ClapAudioConfig

    if size not in SIZES:
        raise DeramosError(f"unknown clap-htsat size {size!r}; choose one of: {', '.join(SIZES)}")
    fields = {**_COMMON, **SIZES[size]}
    width = fields["patch_embeds_hidden_size"] * 2 ** (len(fields["depths"]) - 1)
    return ClapAudioConfig(hidden_size=width, **fields)


# ----------------------------------------------------------------------------------------------------
# Front end
# ----------------------------------------------------------------------------------------------------


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above (27 mel per ln 6.4)."""
    hz = np.asarray(hz, dtype=np.float64)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) * 27.0 / math.log(6.4)
    return np.where(hz >= 1000.0, log_part, 3.0 * hz / 200.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp(math.log(6.4) / 27.0 * (mel - 15.0)), 200.0 * mel / 3.0)


def mel_filter_bank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                    fmin: float = FMIN, fmax: float = FMAX) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised triangular filters (librosa's default ``filters.mel``).

    Returns:
        float64 tensor (n_fft // 2 + 1, n_mels): power spectrum (..., bins) @ filters = mel power.
    """
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)[:, None]
    rising = (freqs - edges[None, :-2]) / np.diff(edges)[None, :-1]
    falling = (edges[None, 2:] - freqs) / np.diff(edges)[None, 1:]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Area normalisation: each filter has the same total weight per Hz ("slaney" norm).
    weights *= 2.0 / (edges[2:] - edges[:-2])[None, :]
    return torch.from_numpy(weights)


def dft_kernels(n_fft: int = N_FFT) -> torch.Tensor:
    """(2 (n_fft // 2 + 1), 1, n_fft) float64: periodic-Hann-windowed cos rows, then -sin rows.

    Row k of the first half is torchlibrosa's ``conv_real`` filter for bin k, of the second half its
    ``conv_imag`` filter (the real and imaginary parts of the windowed ``exp(-2 pi i k n / n_fft)``).
    """
    n = np.arange(n_fft, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)
    # k * n can reach 5e5: reduce it modulo n_fft in integers so the angle stays exact.
    phase = np.outer(np.arange(n_fft // 2 + 1), np.arange(n_fft)) % n_fft
    angle = 2.0 * np.pi * phase / n_fft
    kernels = np.concatenate([np.cos(angle) * window, -np.sin(angle) * window])
    return torch.from_numpy(kernels).unsqueeze(1)


class ClapMelFrontEnd(nn.Module):
    """Waveform (B, N) -> log-mel (B, 1, N // hop + 1, n_mels), the ``input_features`` of ClapAudioModel.

    Centered frames (reflect padding of n_fft / 2 each side), periodic Hann window, power spectrum,
    Slaney mel filters, ``10 log10(max(mel, 1e-10))``. For 480,000 samples at 48 kHz: (B, 1, 1001, 64).

    Args:
        sample_rate, n_fft, hop, n_mels, fmin, fmax: spectrogram settings (defaults: LAION HTSAT).
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, hop: int = HOP,
                 n_mels: int = N_MELS, fmin: float = FMIN, fmax: float = FMAX):
        super().__init__()
        self.sample_rate, self.n_fft, self.hop, self.n_mels = sample_rate, n_fft, hop, n_mels
        self.fmin, self.fmax = float(fmin), float(fmax)
        # Fixed, derived from the settings: not part of the state dict (nothing to load or save).
        self.register_buffer("dft", dft_kernels(n_fft).float(), persistent=False)
        self.register_buffer("mel", mel_filter_bank(sample_rate, n_fft, n_mels, fmin, fmax).float(),
                             persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        half = self.n_fft // 2
        x = F.pad(waveform.unsqueeze(1), (half, half), mode="reflect")
        spec = F.conv1d(x, self.dft, stride=self.hop)  # (B, 2 * bins, frames)
        bins = self.n_fft // 2 + 1
        power = spec[:, :bins].square() + spec[:, bins:].square()
        mel = torch.matmul(power.transpose(1, 2), self.mel)  # (B, frames, n_mels)
        return (10.0 * torch.log10(torch.clamp(mel, min=AMIN))).unsqueeze(1)


# ----------------------------------------------------------------------------------------------------
# Backbone
# ----------------------------------------------------------------------------------------------------


class ClapHtsatBackbone(AudioBackbone):
    """LAION-CLAP HTSAT audio tower: 10 s of 48 kHz mono -> (B, 32, D) time sequence.

    Why this sequence: HTSAT's last stage is an 8 x 8 token grid over a 256 x 256 image in which the
    1024 (resampled) frames are folded into 4 rows of 256. transformers' ``last_hidden_state`` already
    unfolds it to (B, D, 2, 32): 2 frequency groups x 32 time steps in time order, each step covering
    1024 / 32 = 32 frames (10 s / 32 = 0.3125 s). Averaging the 2 frequency groups gives 32 time-ordered
    tokens, which is exactly LAION's own ``fine_grained_embedding`` (before its 32x frame repetition),
    and their mean over time is CLAP's clip embedding (``pooler_output``). A time-ordered sequence is what
    the DeRA-MOS heads expect (positional encoding, then a transformer layer); flattening the grid instead
    would interleave frequency and time.

    Args:
        size: ``"base"`` (the music checkpoint's HTSAT-base, D = 1024) or ``"tiny"`` (tests, D = 64).
        fmin, fmax: mel range of the front end in Hz (LAION HTSAT: 50 and 14000).

    ``forward(waveform (B, 480000) float32) -> (B, 32, D)``; :meth:`features` gives the (B, 1, 1001, 64)
    model input and :meth:`encode` maps it to the sequence.
    """

    def __init__(self, size: str = "base", fmin: float = FMIN, fmax: float = FMAX):
        super().__init__()
        from transformers import ClapAudioModel

        config = clap_audio_config(size)
        self.size = size
        self.front_end = ClapMelFrontEnd(fmin=fmin, fmax=fmax)
        self.audio_model = ClapAudioModel(config).eval()
        self._fix_windows()
        self.contract = AudioContract(SAMPLE_RATE, CLIP_SECONDS, config.hidden_size)

    def _fix_windows(self) -> None:
        """Settle each Swin block's window and shift once, eagerly, as plain ints.

        transformers re-derives these on every forward (a stage no larger than one window gets no
        shift), writing them into the module, and under ``torch.jit`` tracing (legacy ONNX export) it
        writes tensors, a side effect that outlives the export. Settling them here and calling the encoder
        with ``always_partition=True`` (which skips that per-call update) keeps the forward side-effect
        free; the numbers are the same.
        """
        for stage in self.audio_model.audio_encoder.layers:
            for block in stage.blocks:
                block.set_shift_and_window_size(block.input_resolution)

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, N) waveform -> (B, 1, frames, 64) log-mel input of the HTSAT."""
        return self.front_end(waveform)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1001, 64) log-mel -> (B, 32, D): final-stage tokens averaged over frequency."""
        grid = self.audio_model(input_features=features, always_partition=True).last_hidden_state  # (B, D, 2, 32)
        return grid.mean(dim=2).transpose(1, 2)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        expected = self.contract.num_samples
        # Skipped while tracing (legacy ONNX export): the traced shape is fixed by the example anyway.
        if not torch.jit.is_tracing() and (waveform.dim() != 2 or waveform.shape[-1] != expected):
            raise DeramosError(
                f"clap-htsat expects a (batch, {expected}) waveform ({CLIP_SECONDS:g} s at {SAMPLE_RATE} Hz), "
                f"got shape {tuple(waveform.shape)}; prepare clips with the fixed-length audio protocol"
            )
        return self.encode(self.features(waveform))


def build_audio(name: str = "clap-htsat", size: str = "base", fmin: float = FMIN,
                fmax: float = FMAX) -> ClapHtsatBackbone:
    """Registry builder: a :class:`ClapHtsatBackbone` with random weights (see :func:`load_audio_weights`)."""
    if name != "clap-htsat":
        raise DeramosError(f"training.backbones.clap_htsat builds 'clap-htsat', not {name!r}")
    return ClapHtsatBackbone(size=size, fmin=fmin, fmax=fmax)


# ----------------------------------------------------------------------------------------------------
# Weights: LAION checkpoints and Hugging Face folders
# ----------------------------------------------------------------------------------------------------

# LAION tensors that ClapAudioModel has no place for: the in-model front end (replaced by ClapMelFrontEnd,
# checked against it instead), the AudioSet tagging head, and the shifted-window masks (recomputed).
_LAION_FRONT_END = {
    "spectrogram_extractor.stft.conv_real.weight": "real",
    "spectrogram_extractor.stft.conv_imag.weight": "imag",
    "logmel_extractor.melW": "mel",
}
_LAION_DROPPED = ("spectrogram_extractor.", "logmel_extractor.", "tscam_conv.", "head.")
# Module paths inside a Swin block: LAION (timm-style) -> transformers.
_BLOCK_MODULES = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn": "attention.self",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_BLOCK_KEY = re.compile(r"^(layers\.\d+\.blocks\.\d+)\.(.+)\.([^.]+)$")
_QKV = re.compile(r"^(layers\.\d+\.blocks\.\d+)\.attn\.qkv\.(weight|bias)$")
# Deterministic buffers a file may leave out; taken from the freshly built model when absent.
_OPTIONAL_BUFFERS = ("relative_position_index", "num_batches_tracked")


def laion_audio_branch(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The audio tower of a LAION-CLAP state dict, with ``module.`` and ``audio_branch.`` removed.

    Accepts a whole CLAP state dict (text tower and projections are ignored) or an audio branch alone.

    Raises:
        DeramosError: no HTSAT tensors found.
    """
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    audio = {k[len("audio_branch."):]: v for k, v in state.items() if k.startswith("audio_branch.")}
    if not audio and any(k.startswith(("patch_embed.", "layers.")) for k in state):
        audio = dict(state)
    if not audio:
        raise DeramosError(
            "no LAION-CLAP audio tower in this checkpoint: expected keys 'audio_branch.*' "
            f"(or 'module.audio_branch.*'); first keys: {', '.join(list(state)[:5])}"
        )
    return audio


def convert_laion_audio_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a LAION-CLAP HTSAT state dict to transformers' :class:`~transformers.ClapAudioModel` names.

    The mapping (LAION -> transformers): ``bn0`` -> ``audio_encoder.batch_norm``; in every Swin block
    ``norm1``/``norm2`` -> ``layernorm_before``/``layernorm_after``, ``attn.qkv`` (rows q, k, v) -> three
    ``attention.self.{query,key,value}`` tensors, ``attn.relative_position_*`` -> ``attention.self.*``,
    ``attn.proj`` -> ``attention.output.dense``, ``mlp.fc1``/``mlp.fc2`` -> ``intermediate.dense``/
    ``output.dense``; ``patch_embed.*``, ``layers.N.downsample.*`` and ``norm.*`` keep their names under
    ``audio_encoder.``. Dropped: the torchlibrosa front end, ``tscam_conv``/``head`` (AudioSet tagging)
    and ``attn_mask`` buffers. Unknown keys are renamed by the same rules and passed on, so that a strict
    load names them.

    Args:
        state: a LAION CLAP state dict (``audio_branch.*`` keys, optional ``module.`` prefix) or its
            audio branch alone.

    Returns:
        ``{ClapAudioModel key: tensor}``.
    """
    converted: dict[str, torch.Tensor] = {}
    for name, tensor in laion_audio_branch(state).items():
        if name.startswith(_LAION_DROPPED) or name.endswith(".attn_mask"):
            continue
        qkv = _QKV.match(name)
        if qkv:
            block, param = qkv.groups()
            for part, chunk in zip(("query", "key", "value"), _split_qkv(tensor)):
                converted[f"audio_encoder.{block}.attention.self.{part}.{param}"] = chunk
            continue
        converted["audio_encoder." + _rename_laion_key(name)] = tensor
    return converted


def _split_qkv(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # LAION reshapes the qkv output to (..., 3, heads, head_dim): rows [0, d) are q, [d, 2d) k, [2d, 3d) v.
    if tensor.shape[0] % 3:
        return (tensor,) * 3  # a malformed tensor: keep it whole so the strict load reports its shape
    return tuple(t.contiguous() for t in tensor.chunk(3, dim=0))


def _rename_laion_key(name: str) -> str:
    if name.startswith("bn0."):
        return "batch_norm." + name[len("bn0."):]
    block = _BLOCK_KEY.match(name)
    if not block:
        return name
    prefix, module, param = block.groups()  # e.g. "layers.2.blocks.5", "attn.proj", "weight"
    return f"{prefix}.{_BLOCK_MODULES.get(module, module)}.{param}"


def load_audio_weights(backbone: ClapHtsatBackbone, path: str | Path) -> None:
    """Load real HTSAT weights from a local file or folder into ``backbone`` (strict).

    Accepted sources:

    * an original LAION-CLAP checkpoint (``.pt``/``.ckpt``, read with ``torch.load(weights_only=True)``;
      the state dict may sit under ``state_dict`` and carry a ``module.`` prefix). Its audio tower is
      converted with :func:`convert_laion_audio_state`; its torchlibrosa front end must equal this
      backbone's (same mel range), which catches a checkpoint trained with other spectrogram settings.
    * a Hugging Face folder (``config.json`` + ``model.safetensors``, a sharded index, or
      ``pytorch_model.bin``) of a ``ClapModel`` (e.g. ``laion/larger_clap_music``; its ``audio_model.*``
      part is used) or of a ``ClapAudioModel``; its audio config must describe the same HTSAT.
    * a single safetensors file holding such Hugging Face keys.

    Raises:
        DeramosError: missing file, pickled code, a different architecture or front end, or any missing,
            unexpected or mis-shaped key (all of them named).
    """
    from training.weights import load_state_file

    if not isinstance(backbone, ClapHtsatBackbone):
        raise DeramosError(f"load_audio_weights expects a ClapHtsatBackbone, got {type(backbone).__name__}")
    path = Path(path)
    if path.is_dir():
        state = _read_hf_folder(backbone, path)
    else:
        raw = load_state_file(path)
        if any(k.startswith(("audio_model.audio_encoder.", "audio_encoder.")) for k in raw):
            state = _hf_audio_part(raw, path)
        else:
            audio = laion_audio_branch(raw)
            _check_laion_front_end(backbone, audio, path)
            state = convert_laion_audio_state(audio)
    _load_into(backbone, state, str(path))


def _check_laion_front_end(backbone: ClapHtsatBackbone, audio: Mapping[str, torch.Tensor], source) -> None:
    front = backbone.front_end
    bins = front.n_fft // 2 + 1
    ours = {"real": front.dft[:bins], "imag": front.dft[bins:], "mel": front.mel}
    for key, part in _LAION_FRONT_END.items():
        if key not in audio:
            continue
        theirs, mine = audio[key].float().cpu(), ours[part].cpu()
        if theirs.shape != mine.shape or (theirs - mine).abs().max() > 1e-4 * mine.abs().max():
            raise DeramosError(
                f"{source}: its front-end tensor audio_branch.{key} {tuple(theirs.shape)} differs from this "
                f"backbone's (n_fft {front.n_fft}, {front.n_mels} Slaney mel bins, {front.fmin:g}-{front.fmax:g} Hz); "
                "build clap-htsat with the checkpoint's spectrogram settings (options fmin / fmax)"
            )


def _read_hf_folder(backbone: ClapHtsatBackbone, folder: Path) -> dict[str, torch.Tensor]:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise DeramosError(f"{folder} is not a Hugging Face model folder: config.json is missing")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise DeramosError(f"cannot read {config_file}: {exc}") from exc
    audio_config = config.get("audio_config") if "audio_config" in config else config
    _check_structure(backbone, audio_config or {}, config_file)
    _check_preprocessor(backbone, folder / "preprocessor_config.json")
    return _hf_audio_part(_read_folder_tensors(folder), folder)


def _as_pair(value):
    return [value, value] if isinstance(value, int) else list(value)


def _check_structure(backbone: ClapHtsatBackbone, audio_config: Mapping, source: Path) -> None:
    """The folder's structural fields must equal the backbone's.

    An absent field means ClapAudioConfig's default, as transformers reads it (``save_pretrained`` leaves
    out the values equal to the defaults).
    """
    from transformers import ClapAudioConfig

    ours, defaults = backbone.audio_model.config, ClapAudioConfig()
    bad = []
    for field in _STRUCTURE:
        theirs, mine = audio_config.get(field, getattr(defaults, field)), getattr(ours, field)
        if field in ("patch_size", "patch_stride"):
            theirs, mine = _as_pair(theirs), _as_pair(mine)
        elif isinstance(mine, (list, tuple)):
            theirs, mine = list(theirs or []), list(mine)
        if theirs != mine:
            bad.append(f"{field} {theirs} (backbone: {mine})")
    if bad:
        raise DeramosError(
            f"{source} describes a different HTSAT than clap-htsat size={backbone.size!r}: {'; '.join(bad)}. "
            "Use the music checkpoint's HTSAT-base without feature fusion (e.g. laion/larger_clap_music), "
            "or the matching size option"
        )


def _check_preprocessor(backbone: ClapHtsatBackbone, path: Path) -> None:
    """A folder's preprocessor_config.json, when present, must describe this front end."""
    if not path.is_file():
        return
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DeramosError(f"cannot read {path}: {exc}") from exc
    front = backbone.front_end
    ours = {"sampling_rate": front.sample_rate, "fft_window_size": front.n_fft, "hop_length": front.hop,
            "feature_size": front.n_mels, "frequency_min": front.fmin, "frequency_max": front.fmax}
    bad = [f"{k} {settings[k]} (backbone: {v:g})" for k, v in ours.items() if k in settings and float(settings[k]) != v]
    if bad:
        raise DeramosError(
            f"{path} describes another front end: {'; '.join(bad)}; build clap-htsat with matching "
            "options (fmin / fmax) or fix the file"
        )


def _read_folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from training.weights import load_state_file

    if (folder / "model.safetensors").is_file():
        return load_state_file(folder / "model.safetensors")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_state_file(folder / shard))
        return state
    if (folder / "pytorch_model.bin").is_file():
        return load_state_file(folder / "pytorch_model.bin")
    raise DeramosError(
        f"{folder} has no weights: expected model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def _hf_audio_part(state: Mapping[str, torch.Tensor], source) -> dict[str, torch.Tensor]:
    """``audio_encoder.*`` tensors of a ClapModel (``audio_model.`` prefix) or ClapAudioModel state dict."""
    if any(k.startswith("audio_model.") for k in state):
        state = {k[len("audio_model."):]: v for k, v in state.items() if k.startswith("audio_model.")}
    audio = {k: v for k, v in state.items() if k.startswith("audio_encoder.")}
    if not audio:
        raise DeramosError(
            f"{source} holds no CLAP audio tower: expected keys 'audio_model.audio_encoder.*' (ClapModel) "
            "or 'audio_encoder.*' (ClapAudioModel)"
        )
    stray = [k for k in state if k not in audio]
    if stray:  # inside the audio model everything must load; keep them so the strict load names them
        audio.update({k: state[k] for k in stray})
    return audio


def _load_into(backbone: ClapHtsatBackbone, state: dict[str, torch.Tensor], source: str) -> None:
    from training.weights import load_strict

    own = backbone.audio_model.state_dict()
    for key, value in own.items():
        if key not in state and key.endswith(_OPTIONAL_BUFFERS):
            state[key] = value
    load_strict(backbone.audio_model, state, f"{source} (clap-htsat size={backbone.size!r})")
    backbone.audio_model.eval()
