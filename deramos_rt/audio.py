"""Audio decoding, resampling and the fixed-length protocol.

This module is the single place where a clip becomes model input, so that training and scoring prepare
clips identically. It needs numpy, soundfile and soxr only. Where the inference device resamples
(``deramos_rt.device_resample``), :func:`read_native` hands it the clip at its own rate and the helpers
below (:func:`resampled_length`, :func:`window_weights`) give the same lengths and weights the host path has.
A long file in ``windows`` mode is decoded as a stream of pieces of a few windows (:func:`stream_windows`),
equal to the whole-file path's windows, so that no file is ever held whole.

Protocol (DeRA-MOS): resampled to the encoder's rate, mono by the mean of the channels, then zero-padded
or truncated (from the start) to exactly ``clip_seconds``. Every clip then has the same length, which is
what makes an encoder without a padding mask batch-independent.

The resampler belongs to the protocol because it changes what the encoder hears: ``"soxr"`` (soxr HQ, the
project's default) removes images above the old Nyquist frequency, ``"torchaudio"`` reproduces the
authors' research code (torchaudio's default ``Resample``, per channel, then the channel mean), which
leaves images that models trained with that code learned on.
"""

from __future__ import annotations

import collections
import contextlib
import math
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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
    with _opened(path) as f:
        rate = int(f.samplerate)
        frames = -1 if max_seconds is None else decode_frames(max_seconds, rate)
        with _decoding(path):
            # Never trust the header's frame count (some OGG files overstate it): use what decodes.
            data = f.read(frames=frames, dtype=_decoded_type(f, native), always_2d=True)
    if data.shape[0] == 0:
        raise DeramosError(f"audio file has no samples: {path}")
    return data, rate


@contextlib.contextmanager
def _opened(path: str | Path):
    """The file open for decoding (a regular file with at most :data:`MAX_CHANNELS` channels), then closed."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise DeramosError(_not_a_file(path))
    with _decoding(path):
        f = sf.SoundFile(str(path))
    with f:
        if f.channels > MAX_CHANNELS:
            raise DeramosError(f"audio file has {f.channels} channels (at most {MAX_CHANNELS} are read): {path}")
        yield f


@contextlib.contextmanager
def _decoding(path):
    """Any decoder failure as one DeramosError naming the file."""
    try:
        yield
    except DeramosError:
        raise
    except Exception as exc:  # soundfile raises several types; all mean "cannot decode"
        raise DeramosError(f"cannot decode audio file {path}: {exc}") from exc


def _decoded_type(f, native: bool) -> str:
    """int16 for a native hand-over of 8- / 16-bit PCM (see :func:`read_native`), else float32."""
    return "int16" if native and f.subtype in INT16_SUBTYPES else "float32"


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
    """Decode a whole file and cut it into protocol-length windows (see :func:`split_windows`).

    The pieces of :func:`stream_windows` joined: the file at its own rate is never held whole.
    """
    pieces = list(stream_windows(path, protocol))
    return np.concatenate([p.windows for p in pieces]), np.concatenate([p.weights for p in pieces])


# ------------------------------------------------------------------------------------------------ streaming

# Audio one streamed piece of a long file covers (whole windows, at least one): what one decode worker holds.
PIECE_SECONDS = 10.0
# Frames per decoder call when streaming, at least (tiny windows would otherwise mean tiny reads).
MIN_BLOCK_FRAMES = 4096


@dataclass(frozen=True)
class WindowPiece:
    """Consecutive windows of one file, as :func:`stream_windows` decodes them.

    Attributes:
        first: index in the file of the piece's first window.
        weights: (k,) each window's share of real audio (1 for all but the file's last window).
        last: no windows of the file follow.
        rate: the file's sample rate.
        windows: (k, num_samples) float32 model input, or None for a native piece.
        signal: a native piece's audio: (frames, channels) int16 / float32 at ``rate``, the part of the file
            its windows are resampled from, with the resampler's reach on both sides.
        offset: native: samples of ``signal``'s resampled output before the piece's first window.
        length: native: samples ``signal`` resamples to (:func:`resampled_length`).
    """

    first: int
    weights: np.ndarray
    last: bool
    rate: int
    windows: np.ndarray | None = None
    signal: np.ndarray | None = None
    offset: int = 0
    length: int = 0

    @property
    def count(self) -> int:
        """Windows in the piece."""
        return len(self.weights)


def default_piece_windows(protocol: AudioProtocol) -> int:
    """Windows per streamed piece: :data:`PIECE_SECONDS` of audio, at least one window."""
    return max(1, int(round(PIECE_SECONDS / protocol.clip_seconds)))


def stream_windows(path: str | Path, protocol: AudioProtocol, native: bool = False,
                   piece_windows: int | None = None) -> Iterator[WindowPiece]:
    """A file's windows (see :func:`split_windows`), decoded and resampled a piece at a time.

    What is held at once is a piece's worth of audio plus the resampler's reach, however long the file;
    joined, the pieces are the whole-file path's windows and weights: soxr resamples the file as one stream
    (``soxr.ResampleStream`` gives the samples one call gives), the torchaudio protocol in chunks that hold
    every input an output sample's kernel reaches (so each sample has the whole-file resampling's inputs).
    The stream ends where decoding ends (the header's frame count is never used).

    Args:
        path: the audio file.
        protocol: the model's audio protocol.
        native: where the protocol lets the inference device resample (:func:`resamples_anywhere`), give
            pieces at the file's own rate (``signal``) instead of model input (``windows``).
        piece_windows: windows per piece (None: :func:`default_piece_windows`).

    Raises:
        DeramosError: the file cannot be opened or decoded, is empty, or holds NaN / Inf samples (possibly
            after earlier pieces were given).
    """
    count = int(piece_windows or default_piece_windows(protocol))
    with _opened(path) as f:
        rate = int(f.samplerate)
        if native and resamples_anywhere(rate, protocol):
            yield from _native_pieces(f, path, rate, protocol, count)
        else:
            yield from _host_pieces(f, path, rate, protocol, count)


def _block_frames(count: int, rate: int, protocol: AudioProtocol) -> int:
    """Frames per read: about ``count`` windows' worth of input."""
    return max(MIN_BLOCK_FRAMES, math.ceil(count * protocol.num_samples * rate / protocol.sample_rate))


def _blocks(f, path, frames: int, dtype: str) -> Iterator[np.ndarray]:
    """(k, channels) blocks until the decoder gives no more (the header's frame count is never read).

    Each block is a view of one reused buffer: the caller copies what it keeps.
    """
    buffer = np.empty((frames, f.channels), dtype=dtype)
    while True:
        with _decoding(path):
            # With ``out`` soundfile reads what decodes, not what the header announces.
            block = f.read(frames, dtype=dtype, always_2d=True, out=buffer)
        if block.shape[0] == 0:
            return
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            raise DeramosError(f"{path}: audio contains NaN or infinite samples")
        yield block


def _host_pieces(f, path, rate: int, protocol: AudioProtocol, count: int) -> Iterator[WindowPiece]:
    """Model input pieces: each block resampled here as part of one stream, then cut into windows."""
    resampler = _stream_resampler(rate, protocol)
    cutter = _WindowCutter(protocol.num_samples, count, rate)
    frames = 0
    for block in _blocks(f, path, _block_frames(count, rate, protocol), "float32"):
        frames += block.shape[0]
        yield from cutter.add(resampler.feed(block))
    if frames == 0:
        raise DeramosError(f"audio file has no samples: {path}")
    yield from cutter.add(resampler.end(), end=True)


class _WindowCutter:
    """Cuts a stream of model-rate samples into pieces of ``count`` windows of ``size`` samples.

    A piece is given only when more samples than it holds are in, so the file's last piece (the one with the
    zero-padded window) is never empty; joined, the pieces are :func:`split_windows` of the whole stream.
    """

    def __init__(self, size: int, count: int, rate: int):
        self.size, self.count, self.rate = size, count, rate
        self.held: collections.deque[np.ndarray] = collections.deque()
        self.samples = 0
        self.first = 0

    def add(self, samples: np.ndarray, end: bool = False) -> Iterator[WindowPiece]:
        if samples.size:
            self.held.append(samples)
            self.samples += samples.size
        while self.samples > self.count * self.size:
            yield self._piece(np.ones(self.count), last=False)
        if end:
            weights = window_weights(self.first * self.size + self.samples, self.size)
            while self.first < len(weights):
                stop = min(len(weights), self.first + self.count)
                yield self._piece(weights[self.first:stop], last=stop == len(weights))

    def _piece(self, weights: np.ndarray, last: bool) -> WindowPiece:
        windows = np.zeros((len(weights), self.size), dtype=np.float32)
        flat, filled = windows.reshape(-1), 0
        while self.held and filled < flat.size:
            head = self.held[0]
            take = min(head.size, flat.size - filled)
            flat[filled:filled + take] = head[:take]
            filled += take
            if take == head.size:
                self.held.popleft()
            else:
                self.held[0] = head[take:]
        self.samples -= filled
        piece = WindowPiece(self.first, weights, last, self.rate, windows=windows)
        self.first += len(weights)
        return piece


def _stream_resampler(rate: int, protocol: AudioProtocol):
    """The protocol's resampling (channel mean included) as a stream: ``feed(block)``, then ``end()``."""
    if rate == protocol.sample_rate:
        return _SameRate()
    if protocol.resampler == "torchaudio":
        return _TorchaudioStream(rate, protocol.sample_rate)
    return _SoxrStream(rate, protocol.sample_rate)


class _SameRate:
    """No resampling: the channel mean of each block."""

    def feed(self, block: np.ndarray) -> np.ndarray:
        return to_mono(block)

    def end(self) -> np.ndarray:
        return np.zeros(0, dtype=np.float32)


class _SoxrStream:
    """soxr HQ over the channel mean, as one stream (the samples :func:`resample` gives for the whole)."""

    def __init__(self, rate: int, target_rate: int):
        import soxr

        self._stream = soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality="HQ")

    def feed(self, block: np.ndarray) -> np.ndarray:
        return self._stream.resample_chunk(to_mono(block))

    def end(self) -> np.ndarray:
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


@dataclass(frozen=True)
class _Reach:
    """Which inputs torchaudio's resampler needs for which outputs, for rates reduced to ``orig -> new``.

    Output frame ``f`` (samples ``f * new .. f * new + new - 1``) is computed from inputs
    ``f * orig - width .. f * orig + orig + width - 1`` (zeros outside the signal).
    """

    orig: int
    new: int
    width: int
    align: int  # chunks start at a multiple of this many frames

    @classmethod
    def of(cls, rate: int, target_rate: int, aligned: bool) -> "_Reach":
        if rate == target_rate:
            return cls(1, 1, 0, 1)
        from deramos_rt.resample import _plan

        gcd = math.gcd(rate, target_rate)
        plan = _plan(rate // gcd, target_rate // gcd)
        # Aligned to the numpy resampler's rows of frames, a chunk's matrix products see the same rows as
        # the whole signal's.
        return cls(plan.orig, plan.new, plan.width, plan.group if aligned else 1)

    def start_frame(self, sample: int) -> int:
        """The first input frame of a chunk whose outputs from ``sample`` on have all their inputs."""
        frame = max(0, sample // self.new - math.ceil(self.width / self.orig))
        return frame // self.align * self.align

    def end_input(self, sample: int) -> int:
        """Inputs needed (exclusive end) for every output before ``sample``."""
        return -(-sample // self.new) * self.orig + self.width

    def ready(self, inputs: int) -> int:
        """Output frames whose inputs are all among the first ``inputs``."""
        return max(0, (inputs - self.width) // self.orig)


class _TorchaudioStream:
    """torchaudio's resampler (per channel, then the channel mean) over a signal given a block at a time.

    Each call resamples a chunk that starts early enough for its first new output's kernel and gives only
    the outputs whose inputs are all in; the input no later output needs is dropped.
    """

    def __init__(self, rate: int, target_rate: int):
        self.rate, self.target_rate = rate, target_rate
        self.reach = _Reach.of(rate, target_rate, aligned=True)
        self.buffer: np.ndarray | None = None  # inputs from frame ``start`` * orig on, (frames, channels)
        self.start = 0
        self.frames = 0  # inputs fed
        self.given = 0  # output samples given

    def feed(self, block: np.ndarray) -> np.ndarray:
        self.buffer = block.copy() if self.buffer is None else np.concatenate([self.buffer, block])
        self.frames += block.shape[0]
        return self._output(self.reach.ready(self.frames) * self.reach.new)

    def end(self) -> np.ndarray:
        return self._output(resampled_length(self.frames, self.rate, self.target_rate))

    def _output(self, stop: int) -> np.ndarray:
        """Output samples ``given .. stop - 1``, then the inputs before the next chunk's start dropped."""
        if stop <= self.given:
            return np.zeros(0, dtype=np.float32)
        from deramos_rt.resample import torchaudio_resample

        local = self.start * self.reach.new  # the chunk's output 0 is this output sample
        out = torchaudio_resample(self.buffer.T, self.rate, self.target_rate)
        mono = to_mono(out[:, self.given - local:stop - local].T)
        self.given = stop
        start = self.reach.start_frame(stop)
        self.buffer = self.buffer[(start - self.start) * self.reach.orig:]
        self.start = start
        return mono


def _native_pieces(f, path, rate: int, protocol: AudioProtocol, count: int) -> Iterator[WindowPiece]:
    """Pieces at the file's own rate, each holding every input its windows' resampled samples need."""
    size, target = protocol.num_samples, protocol.sample_rate
    reach = _Reach.of(rate, target, aligned=False)  # a device convolution computes each output on its own
    inputs = _Inputs(_blocks(f, path, _block_frames(count, rate, protocol), _decoded_type(f, native=True)))
    first = 0
    while True:
        start = reach.start_frame(first * size)
        stop = reach.end_input((first + count) * size)
        inputs.drop_before(start * reach.orig)
        inputs.read_past(stop)
        if inputs.end == 0:
            raise DeramosError(f"audio file has no samples: {path}")
        weights, last = np.ones(count), False
        if inputs.ended:  # the file's length is known: its last windows, the very last one zero-padded
            every = window_weights(resampled_length(inputs.end, rate, target), size)
            weights, last = every[first:first + count], first + count >= len(every)
        chunk = inputs.copy(stop)
        yield WindowPiece(first, weights, last, rate, signal=chunk, offset=first * size - start * reach.new,
                          length=resampled_length(chunk.shape[0], rate, target))
        if last:
            return
        first += count


class _Inputs:
    """A file's input frames from ``start`` on, read block by block only as far as asked."""

    def __init__(self, blocks: Iterator[np.ndarray]):
        self._blocks = blocks
        self.data: np.ndarray | None = None
        self.start = 0
        self.ended = False

    @property
    def end(self) -> int:
        """One past the last frame read."""
        return self.start + (0 if self.data is None else self.data.shape[0])

    def drop_before(self, frame: int) -> None:
        if self.data is not None:
            self.data = self.data[frame - self.start:]
        self.start = frame

    def read_past(self, frame: int) -> None:
        """Read until more than ``frame`` frames are in (one more tells that more windows follow) or the end."""
        while not self.ended and self.end <= frame:
            block = next(self._blocks, None)
            self.ended = block is None
            if block is not None:
                self.data = block.copy() if self.data is None else np.concatenate([self.data, block])

    def copy(self, stop: int) -> np.ndarray:
        """Frames ``start .. stop - 1`` (as far as read), as a new array (a piece must not keep others alive)."""
        return self.data[:stop - self.start].copy()
