"""Make ``torchaudio_resample_ref.npz``: outputs of torchaudio's own resampling code, for the tests.

Generated with torchaudio 2.11.0's ``torchaudio/functional/functional.py`` (the wheel unpacked outside the
repository: ``pip download torchaudio==2.11.0 --no-deps -d /tmp/ta`` and unzip it) run on the project's
torch (2.13.0+cpu). torchaudio has no build for torch 2.13 and its compiled extension does not load, but
its resampling functions are pure Python: this script reads that file, executes only
``_get_sinc_resample_kernel`` and ``_apply_sinc_resample_kernel`` from it, and applies them the way
``torchaudio.transforms.Resample(orig, new)`` does with its defaults (``sinc_interp_hann``, width 6,
rolloff 0.99, kernel computed in float64 and kept as float32, then applied to a float32 waveform)::

    .venv/bin/python tests/data/make_resample_reference.py /tmp/ta/torchaudio/functional/functional.py

The input signals are not stored: ``make_signal`` (numpy only, importable without torch) regenerates
them from each case's seed. The npz holds, per case ``i``: ``out_i`` (float32 output) and the parameters
in the ``cases`` array (orig rate, new rate, channels, frames, seed); plus the versions used.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("torchaudio_resample_ref.npz")
TORCHAUDIO_VERSION = "2.11.0"


def _case_list() -> list[tuple[int, int, int, int]]:
    """(orig rate, new rate, channels, frames): every source rate to 24 kHz, other targets, odd rates.

    Lengths are about 0.3 s or 1.7 s plus a few samples so that they are not whole frames of the
    reduced rate (which exercises the output-length rule).
    """
    cases = [(rate, 24000, 1, int(0.3 * rate) + 7) for rate in (8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000)]
    cases += [(rate, 24000, 2, int(1.7 * rate) + 3) for rate in (16000, 44100)]
    cases += [(rate, 24000, 2, int(0.3 * rate) + 1) for rate in (22050, 48000)]
    cases += [(24000, 16000, 1, 7211), (44100, 16000, 1, 13235), (16000, 48000, 2, 4801), (22050, 48000, 1, 6619)]
    # Odd rates: large reduced ratios (12345 -> 24000 is 823 -> 1600) and the widest downsampling.
    cases += [(12345, 24000, 1, 3711), (24000, 12345, 1, 7205), (8001, 24000, 1, 2411), (384000, 24000, 1, 115213),
              (11025, 44100, 1, 3313), (8000, 44100, 2, 2405)]
    return cases


def cases() -> list[dict]:
    """The reference cases, each with its signal seed."""
    return [dict(orig=o, new=n, channels=c, frames=f, seed=1000 + i) for i, (o, n, c, f) in enumerate(_case_list())]


def make_signal(rate: int, channels: int, frames: int, seed: int) -> np.ndarray:
    """A deterministic float32 (channels, frames) test signal: tones up to near Nyquist, noise and a click.

    Numpy only, so the tests regenerate exactly the inputs the reference was made from.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / rate
    out = np.empty((channels, frames), dtype=np.float32)
    for c in range(channels):
        freqs = np.concatenate([rng.uniform(20, 0.2 * rate, 3), rng.uniform(0.2 * rate, 0.49 * rate, 3)])
        phases = rng.uniform(0, 2 * np.pi, freqs.size)
        tones = sum(np.sin(2 * np.pi * f * t + p) for f, p in zip(freqs, phases)) / freqs.size
        x = 0.6 * tones + 0.2 * rng.standard_normal(frames)
        x[rng.integers(0, frames)] += 0.8  # a click: the full impulse response shows up in the output
        out[c] = x.astype(np.float32)
    return out


def _load_torchaudio_resampling(functional_py: Path) -> dict:
    """Execute only torchaudio's two resampling functions from its source file, on the installed torch."""
    import math
    import warnings
    from typing import Optional

    import torch

    tree = ast.parse(functional_py.read_text())
    wanted = {"_get_sinc_resample_kernel", "_apply_sinc_resample_kernel"}
    funcs = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
    if {f.name for f in funcs} != wanted:
        raise SystemExit(f"{functional_py}: does not define {sorted(wanted)}")
    namespace = dict(torch=torch, math=math, warnings=warnings, Optional=Optional, Tensor=torch.Tensor,
                     _CPU=torch.device("cpu"))
    exec(compile(ast.Module(body=funcs, type_ignores=[]), str(functional_py), "exec"), namespace)
    return namespace


def torchaudio_reference(ns: dict, signal: np.ndarray, orig: int, new: int) -> np.ndarray:
    """What ``torchaudio.transforms.Resample(orig, new)(waveform)`` returns, via torchaudio's functions."""
    import math

    import torch

    gcd = math.gcd(orig, new)
    # Resample.__init__: dtype=None -> the kernel is computed in float64 and returned as float32.
    kernel, width = ns["_get_sinc_resample_kernel"](orig, new, gcd, 6, 0.99, "sinc_interp_hann", None)
    assert kernel.dtype == torch.float32
    waveform = torch.from_numpy(signal)
    with torch.no_grad():
        out = ns["_apply_sinc_resample_kernel"](waveform, orig, new, gcd, kernel, width)
    return out.numpy().astype(np.float32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("functional_py", type=Path, help="torchaudio 2.11.0's torchaudio/functional/functional.py")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    ns = _load_torchaudio_resampling(args.functional_py)
    arrays, params = {}, []
    for i, case in enumerate(cases()):
        signal = make_signal(case["orig"], case["channels"], case["frames"], case["seed"])
        arrays[f"out_{i}"] = torchaudio_reference(ns, signal, case["orig"], case["new"])
        params.append([case["orig"], case["new"], case["channels"], case["frames"], case["seed"]])
    arrays["cases"] = np.array(params, dtype=np.int64)
    arrays["versions"] = np.array([f"torchaudio {TORCHAUDIO_VERSION}", f"torch {torch.__version__}",
                                   f"numpy {np.__version__}"])
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(params)} cases)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
