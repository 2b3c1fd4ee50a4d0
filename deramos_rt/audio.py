"""Audio decoding, resampling and the fixed-length protocol.

This module is the single place where a clip becomes model input, so that training and scoring prepare
clips identically. It needs numpy, soundfile and soxr only.

Protocol (DeRA-MOS): resampled to the encoder's rate, mono by the mean of the channels, then zero-padded
or truncated (from the start) to exactly ``clip_seconds``. Every clip then has the same length, which is
what makes an encoder without a padding mask batch-independent.

The resampler belongs to the protocol because it changes what the encoder hears: ``"soxr"`` (soxr HQ, the
project's default) removes images above the old Nyquist frequency, ``"torchaudio"`` reproduces the
authors' research code (torchaudio's default ``Resample``, per channel, then the channel mean), which
leaves images that models trained with that code learned on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deramos_rt.errors import DeramosError

RESAMPLERS = ("soxr", "torchaudio")


@dataclass(frozen=True)
class AudioProtocol:
    """How a clip is turned into an encoder input.

    Attributes:
        sample_rate: rate the encoder expects, in Hz.
        clip_seconds: every clip is padded or truncated to this many seconds.
        resampler: ``"soxr"`` or ``"torchaudio"`` (see the module docstring).
    """

    sample_rate: int
    clip_seconds: float
    resampler: str = "soxr"

    def __post_init__(self):
        if self.resampler not in RESAMPLERS:
            raise DeramosError(f"unknown resampler {self.resampler!r}; choose one of: {', '.join(RESAMPLERS)}")

    @property
    def num_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))


def read_audio(path: str | Path, mono: bool = True) -> tuple[np.ndarray, int]:
    """Decode a file to a float32 signal at its own rate.

    Args:
        path: any format libsndfile reads (WAV, FLAC, OGG, MP3).
        mono: average the channels (else keep them, shape (frames, channels)).

    Returns:
        (signal of shape (n,) or (n, channels), sample rate).

    Raises:
        DeramosError: the file is missing, unreadable or empty.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise DeramosError(f"audio file not found: {path}")
    try:
        # Never trust the header's frame count (some OGG files overstate it): use what decodes.
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types; all mean "cannot decode"
        raise DeramosError(f"cannot decode audio file {path}: {exc}") from exc
    if data.shape[0] == 0:
        raise DeramosError(f"audio file has no samples: {path}")
    return (to_mono(data) if mono else data), int(rate)


def to_mono(data: np.ndarray) -> np.ndarray:
    """Mean of the channels of a (frames, channels) array, as contiguous float32."""
    if data.ndim == 1:
        return np.ascontiguousarray(data, dtype=np.float32)
    channels = data.shape[1]
    # Summing column by column is much faster than mean(axis=1) over an interleaved array.
    mono = np.array(data[:, 0], dtype=np.float32)
    for c in range(1, channels):
        mono += data[:, c]
    if channels > 1:
        mono /= channels
    return mono


def resample(signal: np.ndarray, rate: int, target_rate: int, resampler: str = "soxr") -> np.ndarray:
    """Resample a mono (n,) or (frames, channels) signal; a no-op when the rates agree.

    ``"soxr"`` uses soxr HQ; ``"torchaudio"`` reproduces torchaudio's default ``Resample`` in numpy
    (``deramos_rt.resample``), channel by channel.
    """
    if rate == target_rate:
        return np.asarray(signal, dtype=np.float32)
    if rate <= 0:
        raise DeramosError(f"invalid sample rate {rate}")
    if resampler == "torchaudio":
        from deramos_rt.resample import torchaudio_resample

        if signal.ndim == 2:  # torchaudio works on (channels, frames)
            return np.ascontiguousarray(torchaudio_resample(signal.T, rate, target_rate).T)
        return torchaudio_resample(signal, rate, target_rate)
    import soxr

    return soxr.resample(signal, rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def fit_length(signal: np.ndarray, num_samples: int) -> np.ndarray:
    """Zero-pad at the end or truncate from the start to exactly ``num_samples``."""
    if signal.shape[0] >= num_samples:
        return np.ascontiguousarray(signal[:num_samples], dtype=np.float32)
    out = np.zeros(num_samples, dtype=np.float32)
    out[: signal.shape[0]] = signal
    return out


def prepare(signal: np.ndarray, rate: int, protocol: AudioProtocol) -> np.ndarray:
    """Apply the protocol to an already decoded signal (mono or (frames, channels))."""
    signal = np.asarray(signal, dtype=np.float32)
    if signal.ndim not in (1, 2):
        raise DeramosError(f"audio array must be 1-D or (frames, channels), got shape {signal.shape}")
    if not np.all(np.isfinite(signal)):
        raise DeramosError("audio contains NaN or infinite samples")
    if signal.ndim == 2 and protocol.resampler == "torchaudio":
        # The authors resample each channel, then average (resampling is linear, so this differs from
        # mean-then-resample only by rounding, but the protocol is theirs to the last bit we can match).
        return fit_length(to_mono(resample(signal, rate, protocol.sample_rate, "torchaudio")), protocol.num_samples)
    if signal.ndim == 2:
        signal = to_mono(signal)
    return fit_length(resample(signal, rate, protocol.sample_rate, protocol.resampler), protocol.num_samples)


def load_clip(path: str | Path, protocol: AudioProtocol) -> np.ndarray:
    """Decode a file and apply the protocol: returns float32 of shape (protocol.num_samples,)."""
    signal, rate = read_audio(path, mono=protocol.resampler == "soxr")
    try:
        return prepare(signal, rate, protocol)
    except DeramosError as exc:
        raise DeramosError(f"{path}: {exc}") from exc
