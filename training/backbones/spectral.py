"""A deterministic DSP audio front end: log-mel timbre, chroma and key, onsets and tempo. No learned weights.

``spectral`` maps a waveform (B, N) at 16 kHz to (B, T, 96) frames at ``frame_rate`` (default 5 per
second) from fixed signal processing only, so every number it produces has a meaning:

* per frame (56): 40 log-mel bands (timbre, loudness, band limits, noise floor), 12 chroma values
  (pitch classes), and onset / level statistics of the 50 frames-per-second stream inside the frame
  (mean and peak onset strength, lowest and highest level: dropouts, clicks and bursts show here);
* per clip, repeated on every frame (40): the autocorrelation of the onset envelope pooled into 24
  log-spaced lag bands (tempo: periods from 0.15 to 2 s), the clip's mean chroma, its best correlation
  with a major and with a minor key profile over all 12 keys and their difference (mode, hence mood),
  and the clip's mean onset strength (note density).

Everything is fixed: the Fourier transforms are Hann-windowed DFT matrices applied to frames cut from
the waveform by reshapes and slices (no ``torch.stft``); the pitch-class transform runs on a copy
low-passed and decimated to 4 kHz by a fixed FIR (a strided ``conv1d``); mel, chroma, key-profile and
lag-band maps are matrix products. It exports to ONNX (opset 17) with a dynamic batch axis, and each
clip's output depends on that clip alone. The mel, chroma, key and lag-band matrices are saved with a
run (about 60 KB), so the feature cache, keyed by an encoder's saved tensors, changes when they do.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from deramos_rt.errors import DeramosError
from training.backbones.base import AudioBackbone, AudioContract

N_MELS = 40
N_CHROMA = 12
N_LAGS = 24
FRAME_FEATURES = N_MELS + N_CHROMA + 4
CLIP_FEATURES = N_LAGS + N_CHROMA + 3 + 1
HIDDEN_SIZE = FRAME_FEATURES + CLIP_FEATURES  # 96
FAST_RATE = 50  # frames per second of the log-mel / onset / level stream
# Krumhansl-Kessler key profiles (probe-tone ratings), tonic first.
MAJOR_PROFILE = [6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]
MINOR_PROFILE = [6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17]
LOG_FLOOR = 1e-7  # power floor: digital silence maps to a finite level


def dft_kernels(n_fft: int, first: int, stop: int, windowed: bool = True) -> torch.Tensor:
    """(n_fft, 2 * (stop - first)) cosine and (negative) sine columns for DFT bins first..stop-1.

    With ``windowed`` they carry a Hann window and a 4 / n_fft scale (a full-scale sine then gives a
    power near 1 in its bin whatever n_fft is); without, they are the plain transform.
    """
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(first, stop, dtype=torch.float64).unsqueeze(1)
    if not windowed:
        angle = 2 * math.pi * k * n / n_fft
        return torch.cat([torch.cos(angle), -torch.sin(angle)]).T.contiguous().float()
    window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / n_fft)
    angle = 2 * math.pi * k * n / n_fft
    kernels = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window]) * (4.0 / n_fft)
    return kernels.T.contiguous().float()


def mel_matrix(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) triangular mel filters (HTK mel scale) from 30 Hz to Nyquist, unit area."""
    def to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    edges_mel = np.linspace(to_mel(30.0), to_mel(sample_rate / 2), n_mels + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (freqs[None] - lower) / (centre - lower)
    fall = (upper - freqs[None]) / (upper - centre)
    tri = np.clip(np.minimum(rise, fall), 0.0, None)
    tri /= np.maximum(tri.sum(axis=1, keepdims=True), 1e-12)
    return torch.from_numpy(tri.T.astype(np.float32))


def chroma_matrix(sample_rate: int, n_fft: int, first: int, stop: int) -> torch.Tensor:
    """(stop - first, 12) map from DFT bins to pitch classes (C = 0): a 0.5-semitone Gaussian around each pitch."""
    freqs = np.arange(first, stop) * sample_rate / n_fft
    pitch = 12.0 * np.log2(freqs / 440.0) + 69.0
    dist = (pitch[:, None] - np.arange(N_CHROMA)[None]) % 12.0
    dist = np.minimum(dist, 12.0 - dist)
    return torch.from_numpy(np.exp(-0.5 * (dist / 0.5) ** 2).astype(np.float32))


def lowpass_kernel(cutoff: float, taps: int = 63) -> torch.Tensor:
    """(1, 1, taps) Blackman-windowed sinc low-pass, ``cutoff`` as a fraction of the sample rate, unit DC gain."""
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(taps)
    return torch.from_numpy((h / h.sum()).astype(np.float32)).view(1, 1, -1)


def key_matrix() -> torch.Tensor:
    """(12, 24) z-scored key profiles: columns 0-11 major keys C..B, 12-23 minor keys C..B."""
    cols = []
    for profile in (MAJOR_PROFILE, MINOR_PROFILE):
        p = np.asarray(profile, dtype=np.float64)
        p = (p - p.mean()) / np.linalg.norm(p - p.mean())
        cols += [np.roll(p, tonic) for tonic in range(12)]
    return torch.from_numpy(np.stack(cols, axis=1).astype(np.float32))


def tempo_lags(count: int = N_LAGS, shortest: float = 0.15, longest: float = 2.0) -> np.ndarray:
    """Centres, in fast frames, of ``count`` log-spaced lag bands from ``shortest`` to ``longest`` seconds."""
    return np.geomspace(shortest * FAST_RATE, longest * FAST_RATE, count)


def lag_bands(centres: np.ndarray) -> torch.Tensor:
    """(max lag + 1, bands) triangular weights over integer lags (a mel-like filterbank on log lag), rows sum 1."""
    lags = np.arange(int(np.ceil(centres[-1] * centres[-1] / centres[-2])) + 1, dtype=np.float64)
    edges = np.concatenate([[centres[0] ** 2 / centres[1]], centres, [centres[-1] ** 2 / centres[-2]]])
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    tri = np.clip(np.minimum((lags - lower) / (centre - lower), (upper - lags) / (upper - centre)), 0.0, None)
    tri /= tri.sum(axis=1, keepdims=True)
    return torch.from_numpy(tri.T.astype(np.float32))


def inverse_cosine(length: int, lags: int) -> torch.Tensor:
    """(length // 2 + 1, lags) map from a power spectrum to the circular autocorrelation at lags 0..lags-1."""
    k = np.arange(length // 2 + 1, dtype=np.float64)[:, None]
    weight = np.where((k == 0) | (2 * k == length), 1.0, 2.0)  # bins that stand for their mirror images count twice
    out = weight * np.cos(2 * np.pi * k * np.arange(lags)[None] / length) / length
    return torch.from_numpy(out.astype(np.float32))


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """(1, 1, 2 * ceil(3 sigma) + 1) unit-sum Gaussian smoothing kernel."""
    half = int(math.ceil(3 * sigma))
    x = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return torch.from_numpy((k / k.sum()).astype(np.float32)).view(1, 1, -1)


class SpectralAudio(AudioBackbone):
    """Fixed DSP features (see the module docstring): (B, N) -> (B, T, 96), T = clip frames at ``frame_rate``.

    Args:
        sample_rate: input rate in Hz (16000: the mel and chroma maps are laid out for it).
        clip_seconds: fixed input length.
        frame_rate: output frames per second; must divide 100.
        hidden_size: must be 96 (the stacked feature count); an option so configs state it.
    """

    def __init__(self, sample_rate: int = 16000, clip_seconds: float = 10.0, frame_rate: float = 5.0,
                 hidden_size: int = HIDDEN_SIZE):
        super().__init__()
        if sample_rate % FAST_RATE or hidden_size != HIDDEN_SIZE:
            raise DeramosError(f"spectral backbone needs a sample rate divisible by {FAST_RATE} and "
                               f"hidden_size {HIDDEN_SIZE}; got {sample_rate}, {hidden_size}")
        pool = FAST_RATE / frame_rate
        if pool != int(pool) or pool < 1:
            raise DeramosError(f"spectral frame_rate must divide {FAST_RATE}, got {frame_rate}")
        self.contract = AudioContract(sample_rate, clip_seconds, hidden_size)
        self.pool = int(pool)
        self.fast_hop = sample_rate // FAST_RATE
        self.fast_fft = self.fast_hop  # 20 ms windows at 50 frames/s
        # Pitch classes need fine frequency resolution but only the band below 2 kHz: the waveform is
        # low-passed and decimated by 4 first, which makes the long (160 ms) transform 4 times cheaper.
        self.decimate = 4
        low_rate = sample_rate // self.decimate
        self.slow_hop = self.fast_hop * self.pool // self.decimate
        # A window of at least ~160 ms (a whole number of hops): 6.25 Hz bins or finer.
        self.slow_fft = self.slow_hop * max(1, round(0.16 * low_rate / self.slow_hop))
        first = int(np.ceil(100.0 * self.slow_fft / low_rate))  # pitch content from 100 Hz ...
        stop = int(1900.0 * self.slow_fft / low_rate) + 1  # ... to 1.9 kHz (below the low-pass edge)
        self.frames = int(round(clip_seconds * frame_rate))
        self.fast_frames = self.frames * self.pool
        bands = lag_bands(tempo_lags())
        # The autocorrelation needs at least 1 s of envelope beyond its longest lag (2.24 s).
        if self.fast_frames < bands.shape[0] + FAST_RATE:
            raise DeramosError(f"spectral backbone needs clips of at least 3.3 s, got {clip_seconds} s")
        self.register_buffer("fast_dft", dft_kernels(self.fast_fft, 0, self.fast_fft // 2 + 1), persistent=False)
        self.register_buffer("slow_dft", dft_kernels(self.slow_fft, first, stop), persistent=False)
        self.register_buffer("lowpass", lowpass_kernel(0.45 / self.decimate), persistent=False)
        self.register_buffer("mel", mel_matrix(sample_rate, self.fast_fft, N_MELS))
        self.register_buffer("chroma", chroma_matrix(low_rate, self.slow_fft, first, stop))
        self.register_buffer("keys", key_matrix())
        self.register_buffer("lag_bands", bands)
        # One-hot kernels: conv1d with them lists o[t + lag] for every lag, so the autocorrelation is a product.
        # Autocorrelation as the inverse transform of the power spectrum of the zero-padded envelope:
        # two small matrix products (a direct sum over lags costs ~20 times more).
        acf_len = self.fast_frames + bands.shape[0]
        self.register_buffer("acf_dft", dft_kernels(acf_len, 0, acf_len // 2 + 1, windowed=False), persistent=False)
        self.register_buffer("acf_inverse", inverse_cosine(acf_len, bands.shape[0]), persistent=False)
        self.acf_len = acf_len
        self.register_buffer("smooth", gaussian_kernel(1.0), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2 or waveform.shape[1] != self.contract.num_samples:
            raise DeramosError(f"spectral backbone expects (batch, {self.contract.num_samples}) samples, "
                               f"got {tuple(waveform.shape)}")
        logmel, onset, level = self._fast_stream(waveform)
        chroma = self._chroma(waveform)
        frame = torch.cat([self._pooled(logmel), chroma * 2.0 - 0.5, self._frame_stats(onset, level)], dim=2)
        clip = torch.cat([self._tempo(onset), self._key_features(chroma),
                          onset.mean(1, keepdim=True) * 4.0], dim=1)
        return torch.cat([frame, clip.unsqueeze(1).expand(-1, self.frames, -1)], dim=2)

    def _power(self, waveform: torch.Tensor, kernels: torch.Tensor, n_fft: int, hop: int, frames: int) -> torch.Tensor:
        """(B, frames, bins) power spectrum of centred frames (zero padding of half a window each side).

        The window is a whole number of hops, so frames are built from hop-sized blocks (reshape, shifted
        slices, concatenation) and transformed by one matrix product: the same DFT as a strided conv1d,
        several times faster on a CPU, and plain ONNX ops.
        """
        span = n_fft // hop
        blocks = frames + span - 1
        x = nn.functional.pad(waveform, (n_fft // 2, max(0, blocks * hop - waveform.shape[1] - n_fft // 2)))
        x = x[:, : blocks * hop].reshape(-1, blocks, hop)
        framed = torch.cat([x[:, i : i + frames] for i in range(span)], dim=2)
        real, imag = (framed @ kernels).chunk(2, dim=2)
        return real.square() + imag.square()

    def _fast_stream(self, waveform: torch.Tensor):
        """Scaled log-mel (B, T_f, 40), onset strength (B, T_f) and log level (B, T_f) at 50 frames/s."""
        power = self._power(waveform, self.fast_dft, self.fast_fft, self.fast_hop, self.fast_frames)
        mel = power @ self.mel
        logmel = torch.log10(mel + LOG_FLOOR)
        # Spectral flux: summed rises of the log-mel bands from one frame to the next.
        rise = torch.relu(logmel[:, 1:] - logmel[:, :-1]).mean(2)
        onset = torch.cat([torch.zeros_like(rise[:, :1]), rise], dim=1)
        level = torch.log10(mel.mean(2) + LOG_FLOOR)
        return (logmel + 3.0) / 2.0, onset, level

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Average (B, T_f, C) over groups of ``pool`` fast frames -> (B, T, C)."""
        return nn.functional.avg_pool1d(x.transpose(1, 2), self.pool).transpose(1, 2)

    def _frame_stats(self, onset: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Per output frame: mean and peak onset strength, lowest and highest level (B, T, 4)."""
        o = onset.unsqueeze(1)
        lv = level.unsqueeze(1)
        stats = [nn.functional.avg_pool1d(o, self.pool) * 4.0, nn.functional.max_pool1d(o, self.pool) * 2.0,
                 -nn.functional.max_pool1d(-lv, self.pool), nn.functional.max_pool1d(lv, self.pool)]
        stats[2] = (stats[2] + 3.0) / 2.0
        stats[3] = (stats[3] + 3.0) / 2.0
        return torch.cat(stats, dim=1).transpose(1, 2)

    def _chroma(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, T, 12) pitch-class energy per frame, each frame summing to 1 (0 for silence)."""
        low = nn.functional.conv1d(waveform.unsqueeze(1), self.lowpass, stride=self.decimate,
                                   padding=self.lowpass.shape[-1] // 2).squeeze(1)
        power = self._power(low, self.slow_dft, self.slow_fft, self.slow_hop, self.frames)
        # Square-root compression keeps loud low partials from swamping the melody's pitch classes.
        energy = torch.sqrt(power + LOG_FLOOR) @ self.chroma
        return energy / (energy.sum(2, keepdim=True) + 1e-6)

    def _tempo(self, onset: torch.Tensor) -> torch.Tensor:
        """(B, 24) autocorrelation of the smoothed onset envelope, pooled into log-spaced lag bands.

        Normalised by the lag-0 value, so it measures periodicity, not loudness. Smoothing (20 ms) and
        band pooling keep a beat period that falls between two integer lags from being missed.
        """
        o = onset - onset.mean(1, keepdim=True)
        o = nn.functional.conv1d(o.unsqueeze(1), self.smooth, padding=self.smooth.shape[-1] // 2).squeeze(1)
        o = nn.functional.pad(o, (0, self.acf_len - o.shape[1]))  # zero padding: no wrap-around up to the longest lag
        real, imag = (o @ self.acf_dft).chunk(2, dim=1)
        corr = (real.square() + imag.square()) @ self.acf_inverse  # (B, lags): sum_t o[t] o[t + lag]
        return (corr / (corr[:, :1] + 1e-8)) @ self.lag_bands * 2.0

    def _key_features(self, chroma: torch.Tensor) -> torch.Tensor:
        """(B, 15): mean chroma (12), best major and best minor key correlation, and their difference."""
        mean = chroma.mean(1)
        centred = mean - mean.mean(1, keepdim=True)
        unit = centred / (centred.square().sum(1, keepdim=True).sqrt() + 1e-6)
        corr = unit @ self.keys
        major = corr[:, :12].max(1, keepdim=True).values
        minor = corr[:, 12:].max(1, keepdim=True).values
        return torch.cat([mean * 12.0 - 1.0, major, minor, (major - minor) * 4.0], dim=1)


def build_audio(name: str = "spectral", **options) -> SpectralAudio:
    return SpectralAudio(**options)


def load_weights(backbone: nn.Module, path: str) -> None:
    """The spectral front end has no learned weights; its fixed maps are rebuilt from code (strict load check)."""
    from training.checkpoint import load_safetensors_strict

    load_safetensors_strict(backbone, path)
