"""Audio decoding, resampling and the fixed-length protocol.

This module is the single place where a clip becomes model input, so that training and scoring prepare
clips identically. It needs numpy, soundfile and soxr only. Where the inference device resamples
(``deramos_rt.device_resample``), :func:`read_native` hands it the clip at its own rate and the helpers
below (:func:`resampled_length`, :func:`window_weights`) give the same lengths and weights the host path has.

Protocol (DeRA-MOS): resampled to the encoder's rate, mono by the mean of the channels, then zero-padded
or truncated (from the start) to exactly ``clip_seconds``. Every clip then has the same length, which is
what makes an encoder without a padding mask batch-independent.

The resampler belongs to the protocol because it changes what the encoder hears: ``"soxr"`` (soxr HQ, the
project's default) removes images above the old Nyquist frequency, ``"torchaudio"`` reproduces the
authors' research code (torchaudio's default ``Resample``, per channel, then the channel mean), which
leaves images that models trained with that code learned on.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deramos_rt.errors import DeramosError

RESAMPLERS = ("soxr", "torchaudio")
LONG_AUDIO = ("truncate", "windows")
# More channels than this is not music for a stereo-or-mono model (and a sign of a wrong file).
MAX_CHANNELS = 8
# Input decoded past the clip end so that the resampler's filter sees the same neighbours as with the whole
# file (soxr HQ and torchaudio's kernel reach a few ms; 0.1 s leaves a wide margin).
DECODE_MARGIN_SECONDS = 0.1
# Subtypes whose samples int16 holds exactly (see read_native) and the scale libsndfile maps them to [-1, 1) with.
INT16_SUBTYPES = ("PCM_16", "PCM_S8", "PCM_U8")
INT16_SCALE = 32768.0


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
        if not self.sample_rate > 0 or not self.clip_seconds > 0:
            raise DeramosError(f"audio protocol needs a positive rate and clip length, got {self.sample_rate} Hz, "
                               f"{self.clip_seconds} s")
        if self.resampler not in RESAMPLERS:
            raise DeramosError(f"unknown resampler {self.resampler!r}; choose one of: {', '.join(RESAMPLERS)}")

    @property
    def num_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))


def read_audio(path: str | Path, mono: bool = True, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode a file to a float32 signal at its own rate.

    Args:
        path: any format libsndfile reads (WAV, FLAC, OGG, MP3).
        mono: average the channels (else keep them, shape (frames, channels)).
        max_seconds: decode only this many seconds from the start plus a resampling margin
            (:data:`DECODE_MARGIN_SECONDS`), not the whole file; None decodes everything.

    Returns:
        (signal of shape (n,) or (n, channels), sample rate).

    Raises:
        DeramosError: the file is missing, unreadable, empty or has more than :data:`MAX_CHANNELS` channels.
    """
    data, rate = _read(path, max_seconds, native=False)
    return (to_mono(data) if mono else data), rate


def read_native(path: str | Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode a file at its own rate, channels kept, for a resampler on the inference device.

    8- and 16-bit PCM files come back as int16 (half the bytes of float32 to hand over and copy to a
    device; ``int16 / 32768`` is exactly the float32 that :func:`read_audio` decodes), others as float32.

    Returns:
        (signal (frames, channels) int16 or float32, sample rate).

    Raises:
        DeramosError: as :func:`read_audio`.
    """
    return _read(path, max_seconds, native=True)


def _read(path: str | Path, max_seconds: float | None, native: bool) -> tuple[np.ndarray, int]:
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise DeramosError(_not_a_file(path))
    try:
        with sf.SoundFile(str(path)) as f:
            rate, channels = int(f.samplerate), int(f.channels)
            if channels > MAX_CHANNELS:
                raise DeramosError(f"audio file has {channels} channels (at most {MAX_CHANNELS} are read): {path}")
            frames = -1 if max_seconds is None else decode_frames(max_seconds, rate)
            dtype = "int16" if native and f.subtype in INT16_SUBTYPES else "float32"
            # Never trust the header's frame count (some OGG files overstate it): use what decodes.
            data = f.read(frames=frames, dtype=dtype, always_2d=True)
    except DeramosError:
        raise
    except Exception as exc:  # soundfile raises several types; all mean "cannot decode"
        raise DeramosError(f"cannot decode audio file {path}: {exc}") from exc
    if data.shape[0] == 0:
        raise DeramosError(f"audio file has no samples: {path}")
    return data, rate


def decode_frames(seconds: float, rate: int) -> int:
    """Frames decoded for the first ``seconds`` of a clip: those plus :data:`DECODE_MARGIN_SECONDS`."""
    return int(np.ceil((seconds + DECODE_MARGIN_SECONDS) * rate))


def as_float(signal: np.ndarray) -> np.ndarray:
    """float32 samples of a :func:`read_native` signal (int16 scaled by 1 / 32768, as libsndfile does)."""
    if signal.dtype == np.int16:
        return signal.astype(np.float32) / np.float32(INT16_SCALE)
    return np.asarray(signal, dtype=np.float32)


def _not_a_file(path: Path) -> str:
    """Why ``path`` cannot be decoded as a file: missing, or what it is instead (never opened: a FIFO blocks)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"audio file not found: {path}"
    except OSError as exc:
        return f"cannot read audio file {path}: {exc.strerror or exc}"
    kinds = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))
    kind = next((name for test, name in kinds if test(mode)), "special file")
    return f"not a regular file: {kind} {path}"


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
    if rate <= 0 or target_rate <= 0:
        raise DeramosError(f"invalid sample rates {rate} Hz -> {target_rate} Hz")
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


def check_signal(signal: np.ndarray) -> None:
    """Refuse what is not audio: not 1-D or (frames, channels), empty, too many channels, NaN / Inf."""
    if signal.ndim not in (1, 2):
        raise DeramosError(f"audio array must be 1-D or (frames, channels), got shape {signal.shape}")
    if signal.shape[0] == 0:
        raise DeramosError("audio has no samples")
    if signal.ndim == 2 and signal.shape[1] > MAX_CHANNELS:
        hint = (" (arrays are (frames, channels): transpose a (channels, frames) array)"
                if signal.shape[0] <= MAX_CHANNELS else "")
        raise DeramosError(f"audio has {signal.shape[1]} channels (at most {MAX_CHANNELS} are read){hint}")
    if signal.dtype.kind == "f" and not np.all(np.isfinite(signal)):
        raise DeramosError("audio contains NaN or infinite samples")


def protocol_signal(signal: np.ndarray, rate: int, protocol: AudioProtocol) -> np.ndarray:
    """Mono float32 at the protocol's rate, whole length (no padding or truncation yet)."""
    signal = np.asarray(signal, dtype=np.float32)
    check_signal(signal)
    if signal.ndim == 2 and protocol.resampler == "torchaudio":
        # The authors resample each channel, then average (resampling is linear, so this differs from
        # mean-then-resample only by rounding, but the protocol is theirs to the last bit we can match).
        return to_mono(resample(signal, rate, protocol.sample_rate, "torchaudio"))
    if signal.ndim == 2:
        signal = to_mono(signal)
    return resample(signal, rate, protocol.sample_rate, protocol.resampler)


def resamples_anywhere(rate: int, protocol: AudioProtocol) -> bool:
    """True when a clip at ``rate`` can be prepared off the host: no resampling, or the torchaudio
    resampler (a fixed convolution; soxr runs on the CPU only)."""
    return rate == protocol.sample_rate or protocol.resampler == "torchaudio"


def resampled_length(frames: int, rate: int, target_rate: int) -> int:
    """Samples a torchaudio-protocol resample of ``frames`` gives: ``ceil(target * frames / rate)``."""
    return frames if rate == target_rate else -(-target_rate * frames // rate)


def prepare(signal: np.ndarray, rate: int, protocol: AudioProtocol) -> np.ndarray:
    """Apply the protocol to an already decoded signal (mono or (frames, channels))."""
    return fit_length(protocol_signal(signal, rate, protocol), protocol.num_samples)


def window_weights(length: int, num_samples: int) -> np.ndarray:
    """Each window's share of real audio when ``length`` samples are cut into windows of ``num_samples``
    (at least one window; the last one zero-padded)."""
    count = max(1, -(-length // num_samples))
    starts = np.arange(count) * num_samples
    return np.minimum(num_samples, length - starts).astype(np.float64) / num_samples


def split_windows(signal: np.ndarray, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive windows of ``num_samples`` (the last zero-padded) and each window's share of real audio.

    Returns:
        (windows (W, num_samples) float32, weights (W,) float64 in (0, 1]).
    """
    weights = window_weights(signal.shape[0], num_samples)
    windows = np.zeros((len(weights), num_samples), dtype=np.float32)
    windows.reshape(-1)[: signal.shape[0]] = signal
    return windows, weights


def _decode(path: str | Path, protocol: AudioProtocol, max_seconds: float | None) -> np.ndarray:
    signal, rate = read_audio(path, mono=protocol.resampler == "soxr", max_seconds=max_seconds)
    try:
        return protocol_signal(signal, rate, protocol)
    except DeramosError as exc:
        raise DeramosError(f"{path}: {exc}") from exc


def load_clip(path: str | Path, protocol: AudioProtocol) -> np.ndarray:
    """Decode a file and apply the protocol: returns float32 of shape (protocol.num_samples,).

    Only the used part of the file (plus a resampling margin) is decoded.
    """
    return fit_length(_decode(path, protocol, protocol.clip_seconds), protocol.num_samples)


def load_windows(path: str | Path, protocol: AudioProtocol) -> tuple[np.ndarray, np.ndarray]:
    """Decode a whole file and cut it into protocol-length windows (see :func:`split_windows`)."""
    return split_windows(_decode(path, protocol, None), protocol.num_samples)
