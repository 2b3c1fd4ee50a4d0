"""Resampling cost of the two protocol resamplers on a long stereo clip.

``python -m benchmarks.resample_speed [--seconds 180] [--rate 44100] [--target 24000] [--repeats 3]``:
a generated stereo signal is prepared to mono at the target rate the way ``deramos_rt.audio.prepare``
does for each resampler (soxr HQ: channel mean then resample; torchaudio: resample each channel, then the
channel mean), without the final pad/truncate. Prints one JSON line with the best-of-``repeats`` seconds
and the x-realtime factor (audio seconds per wall-clock second) of each. The torchaudio kernel is built
once before timing (it is cached per rate pair in real use too).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from deramos_rt.audio import resample, to_mono


def stereo_signal(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """(frames, 2) float32 music-like test signal: a few tones per channel plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    channels = [sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(50, 0.45 * rate, 4)) / 4 for _ in range(2)]
    data = np.stack(channels, axis=1) * 0.5 + 0.05 * rng.standard_normal((t.size, 2))
    return data.astype(np.float32)


def as_protocol(signal: np.ndarray, rate: int, target: int, resampler: str) -> np.ndarray:
    """The channel handling and resampling of ``prepare`` for one resampler (no pad/truncate)."""
    if resampler == "torchaudio":
        return to_mono(resample(signal, rate, target, "torchaudio"))
    return resample(to_mono(signal), rate, target, "soxr")


def best_seconds(signal: np.ndarray, rate: int, target: int, resampler: str, repeats: int) -> float:
    """Fastest of ``repeats`` runs, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        as_protocol(signal, rate, target, resampler)
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--rate", type=int, default=44100)
    parser.add_argument("--target", type=int, default=24000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    signal = stereo_signal(args.seconds, args.rate)
    as_protocol(signal[: args.rate], args.rate, args.target, "torchaudio")  # build and cache the kernel
    result = {"audio_seconds": args.seconds, "rate": args.rate, "target": args.target, "channels": 2,
              "machine": platform.machine(), "numpy": np.__version__}
    for name in ("soxr", "torchaudio"):
        seconds = best_seconds(signal, args.rate, args.target, name, args.repeats)
        result[name] = {"seconds": round(seconds, 4), "x_realtime": round(args.seconds / seconds, 1)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
