"""torchaudio's default ``Resample`` reproduced in numpy (no torch at run time).

The authors' research code resamples with ``torchaudio.transforms.Resample(orig, new)`` and its defaults
(``sinc_interp_hann``, ``lowpass_filter_width=6``, ``rolloff=0.99``). A model trained on that data learned
on what this filter leaves (it keeps images of near-Nyquist content that soxr removes), so scoring such a
model faithfully needs the same filter. This module follows torchaudio's documented algorithm:

* the rates are divided by their gcd, giving ``orig`` input samples -> ``new`` output samples per frame;
* output phase ``j`` (0 <= j < new) of every frame uses a Hann-windowed sinc kernel of
  ``2 * width + orig`` taps, ``width = ceil(6 * orig / (0.99 * min(orig, new)))``, computed in float64
  (the phase offsets ``j / new`` in float32, as torch computes them) and stored as float32;
* the signal is zero-padded by ``width`` on the left and ``width + orig`` on the right, every frame is the
  dot product of the padded signal from ``frame * orig`` with each phase's kernel, in float32;
* the output has ``ceil(new * n / orig)`` samples.

The kernel is a dense ``(2 * width + orig, new)`` matrix in torchaudio, but each phase is non-zero on
only about ``2 * width`` taps. A small kernel is used whole, as one strided matrix product over the padded
signal; when the reduced output rate is small (16 -> 24 kHz is 2 -> 3) several frames share one row of
that product, so that BLAS gets a proper matrix. A large kernel (12345 -> 24000, coprime rates) is split
into blocks of consecutive phases whose taps overlap, one product each: the same float32 kernel values
without most of the zeros, so such rates stay fast and small. Results differ from torchaudio only by the
float32 summation order (~1e-7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from deramos_rt.errors import DeramosError

LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99
# A dense kernel up to this many entries is used as is (one block): it is cheap and one product is fastest.
_DENSE_KERNEL_MAX = 1 << 16
# Output columns aimed for per product when the reduced output rate is small (see _dense_plan).
_GROUP_COLUMNS = 64
# Entries of the materialised (rows, taps) window matrix per product: bounds memory for long signals.
_CHUNK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class _Block:
    """Consecutive output phases ``first .. first + kernel.shape[1] - 1`` sharing one tap range."""

    first: int
    start: int  # first tap (offset into each frame of the padded signal)
    kernel: np.ndarray  # (taps, phases) float32


@dataclass(frozen=True)
class _Plan:
    orig: int  # reduced input rate: input samples per frame
    new: int  # reduced output rate: output samples per frame
    width: int
    group: int  # frames computed per row of the matrix product (columns: group * new)
    blocks: tuple[_Block, ...]


def torchaudio_resample(signal: np.ndarray, orig_freq: int, new_freq: int) -> np.ndarray:
    """Resample like ``torchaudio.transforms.Resample(orig_freq, new_freq)`` with its defaults.

    Args:
        signal: (n,) or (channels, n) samples, channels first as in torchaudio; computed in float32.
        orig_freq: the signal's sample rate in Hz (a positive integer).
        new_freq: the wanted sample rate in Hz (a positive integer).

    Returns:
        float32 array of shape (m,) or (channels, m), ``m = ceil(new_freq * n / orig_freq)``; the signal
        itself (as float32) when the rates are equal.

    Raises:
        DeramosError: a rate is not a positive integer, or the signal is not 1-D or 2-D.
    """
    orig_freq, new_freq = _check_rates(orig_freq, new_freq)
    signal = np.asarray(signal, dtype=np.float32)
    if signal.ndim not in (1, 2):
        raise DeramosError(f"signal to resample must be (n,) or (channels, n), got shape {signal.shape}")
    if orig_freq == new_freq:
        return signal
    gcd = math.gcd(orig_freq, new_freq)
    plan = _plan(orig_freq // gcd, new_freq // gcd)
    rows = signal.reshape(signal.shape[0] if signal.ndim == 2 else 1, signal.shape[-1])
    out = np.zeros((rows.shape[0], 0), dtype=np.float32)
    if rows.shape[0]:
        out = np.stack([_resample_row(row, plan) for row in rows])
    length = -(-plan.new * signal.shape[-1] // plan.orig)  # ceil, in integers
    out = out[:, :length]
    return np.ascontiguousarray(out[0] if signal.ndim == 1 else out)


def _check_rates(orig_freq, new_freq) -> tuple[int, int]:
    """Both rates as ints, or one error line naming them."""
    rates = []
    for value in (orig_freq, new_freq):
        try:
            ok = not isinstance(value, (bool, np.bool_)) and int(value) == value and int(value) > 0
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise DeramosError(
                f"invalid resampling rates orig_freq={orig_freq!r}, new_freq={new_freq!r}: "
                "both must be positive integers (Hz)"
            )
        rates.append(int(value))
    return rates[0], rates[1]


def _resample_row(row: np.ndarray, plan: _Plan) -> np.ndarray:
    """One channel: (n,) -> at least ceil(new * n / orig) samples, for the caller to truncate."""
    n = row.shape[0]
    rows = -(-(n // plan.orig + 1) // plan.group)  # torchaudio's n // orig + 1 frames, in groups
    stride = plan.group * plan.orig
    taps = max(block.start + block.kernel.shape[0] for block in plan.blocks)
    # torchaudio pads (width, width + orig); the extra zeros on the right only ever meet zero taps or
    # make outputs past the final length, which the caller cuts off.
    padded = np.zeros(plan.width + (rows - 1) * stride + taps, dtype=np.float32)
    padded[plan.width : plan.width + n] = row
    out = np.empty((rows, plan.group * plan.new), dtype=np.float32)
    for block in plan.blocks:
        span, phases = block.kernel.shape
        windows = sliding_window_view(padded[block.start :], span)[::stride][:rows]
        step = max(1, _CHUNK_ELEMENTS // span)
        for f in range(0, rows, step):
            # The strided view overlaps itself, which BLAS cannot take: copy a bounded chunk, then multiply.
            chunk = np.ascontiguousarray(windows[f : f + step])
            out[f : f + step, block.first : block.first + phases] = chunk @ block.kernel
    return out.reshape(-1)


@lru_cache(maxsize=16)
def _plan(orig: int, new: int) -> _Plan:
    """Kernel blocks for reduced rates ``orig -> new`` (cached: computing them dominates short clips)."""
    base = min(orig, new) * ROLLOFF
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / base)
    taps = 2 * width + orig
    if taps * new <= _DENSE_KERNEL_MAX:
        return _dense_plan(orig, new, width)
    # Phase j is non-zero on taps within width of width + j * orig / new. Blocks of phases spanning
    # about 4 * width taps keep at least half of each product useful.
    per_phase = orig / new
    size = max(1, min(new, int(2 * width / per_phase) if per_phase > 0 else new))
    blocks = []
    for first in range(0, new, size):
        last = min(new, first + size) - 1
        start = max(0, math.floor(first * per_phase))  # centre(first) - width, rounded down
        stop = min(taps, math.floor(last * per_phase) + 2 * width + 2)  # past centre(last) + width
        blocks.append(_Block(first, start, _kernel(orig, new, width, first, last + 1, start, stop)))
    return _Plan(orig, new, width, 1, tuple(blocks))


def _dense_plan(orig: int, new: int, width: int) -> _Plan:
    """The whole kernel as one block, repeated for ``group`` consecutive frames when ``new`` is small.

    With few output phases (16 -> 24 kHz is 2 -> 3) a product per frame is a thin (rows, taps) x (taps, 3)
    one that BLAS runs slowly, after a slow copy of short rows; several frames per row make it a
    proper matrix product at the price of some zero entries.
    """
    taps = 2 * width + orig
    kernel = _kernel(orig, new, width, 0, new, 0, taps)
    group = max(1, min(_GROUP_COLUMNS // new, _DENSE_KERNEL_MAX // (taps * new)))
    grouped = np.zeros(((group - 1) * orig + taps, group * new), dtype=np.float32)
    for g in range(group):
        grouped[g * orig : g * orig + taps, g * new : (g + 1) * new] = kernel
    return _Plan(orig, new, width, group, (_Block(0, 0, grouped),))


def _kernel(orig: int, new: int, width: int, first: int, end: int, start: int, stop: int) -> np.ndarray:
    """torchaudio's kernel entries for phases [first, end) and taps [start, stop), as (taps, phases) float32.

    The arithmetic follows torchaudio's order so the float32 values agree: the phase offsets are float32
    (torch divides an integer range by ``new`` in the default dtype), the rest float64.
    """
    base = min(orig, new) * ROLLOFF
    lw = LOWPASS_FILTER_WIDTH
    idx = np.arange(start - width, stop - width, dtype=np.float64) / orig
    phase = (np.arange(0, -end, -1)[first:].astype(np.float32) / np.float32(new)).astype(np.float64)
    t = phase[None, :] + idx[:, None]
    t *= base
    np.clip(t, -lw, lw, out=t)
    window = np.cos(t * math.pi / lw / 2) ** 2
    t *= math.pi
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = np.where(t == 0, 1.0, np.sin(t) / t)
    kernel *= window * (base / orig)
    return kernel.astype(np.float32)
