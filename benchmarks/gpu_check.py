"""GPU correctness checks that time nothing (``benchmarks/gpu_run.sh`` runs them after the benchmark).

``python -m benchmarks.gpu_check --out DIR`` writes DIR/gpu_check.json:

* ``tf32``: what "fp32" computes on CUDA. A tiny torchaudio-protocol model scores the same clips with the
  torch backend on the CPU (the reference) and on CUDA with TF32 allowed (torch's own defaults: cuDNN
  convolutions in TF32) and with TF32 off for matmuls and convolutions; the largest |delta MOS| of each
  against the CPU (issue 27). The device resampler turns cuDNN's TF32 off for itself in both.
* ``cuda_training``: three epochs of the tiny recipe on CUDA (exit code and test metrics).

The AOTInductor CUDA packages are built and gated by ``tests/export/gpu_aoti_check.py`` and the device data
path is tested by ``pytest -m gpu``, both also run by ``gpu_run.sh``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

import numpy as np
import torch


@contextlib.contextmanager
def tf32(allowed: bool):
    """TF32 for matmuls and cuDNN convolutions on or off while the block runs."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _clips(folder: Path) -> list[tuple[str, str]]:
    import soundfile as sf

    rng = np.random.default_rng(0)
    out = []
    for i, (rate, channels) in enumerate([(44100, 2), (22050, 1), (16000, 1), (48000, 2)] * 2):
        path = folder / f"c{i}.wav"
        sf.write(path, (0.2 * rng.standard_normal((int(rate * 2.5), channels))).astype(np.float32), rate)
        out.append((str(path), ["a calm piano piece", "fast drums", "a sad violin melody"][i % 3]))
    return out


def check_tf32(report: dict, work: Path) -> None:
    from deramos_rt.scorer import Scorer
    from export.testing import write_random_run
    from training.config import BackboneConfig

    run = write_random_run(work / "run", "tiny", seed=0, resampler="torchaudio",
                           audio=BackboneConfig("tiny", {"clip_seconds": 2.0}))
    clips = _clips(work)
    cpu = Scorer(run, backend="torch", device="cpu").score(clips)
    out = {"torch_defaults": {"matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                              "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32}}
    for name, allowed in (("tf32_allowed", True), ("tf32_off", False)):
        with tf32(allowed):
            got = Scorer(run, backend="torch", device="cuda").score(clips)
        out[name] = {"max_abs_delta_mi": max(abs(a.mi - b.mi) for a, b in zip(got, cpu)),
                     "max_abs_delta_ta": max(abs(a.ta - b.ta) for a, b in zip(got, cpu))}
    report["tf32"] = out


def check_cuda_training(report: dict, work: Path) -> None:
    from training import train
    from training.fixtures import make_fixture_corpus

    corpus = make_fixture_corpus(work / "corpus", n_train=48, n_dev=16, n_test=16)
    code = train.main(["--data", str(corpus), "--out", str(work / "train-run"), "--recipe", "tiny", "--device", "cuda",
                       "--epochs", "3", "--cache-dir", str(work / "cache")])
    report["cuda_training_exit_code"] = code
    metrics = json.loads((work / "train-run" / "metrics.json").read_text())
    report["cuda_training_test"] = metrics["test"]["MI"]["utterance"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".")
    args = p.parse_args(argv)
    report = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "torch": torch.__version__}
    if not torch.cuda.is_available():
        report["skipped"] = "no CUDA GPU"
    for check in (() if report.get("skipped") else (check_tf32, check_cuda_training)):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                check(report, Path(tmp))
            except Exception as exc:  # report every check, even when one fails
                report[f"{check.__name__}_error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(report), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    return 1 if any(k.endswith("_error") for k in report) else 0


if __name__ == "__main__":
    raise SystemExit(main())
