"""GPU checks (run on a CUDA machine): MuQ-large and DeRA-MOS heads throughput, and a CUDA training run.

``python -m benchmarks.gpu_check --out DIR``. Writes DIR/gpu_check.json. Random weights (cost does not
depend on their values); 30 s clips; fp32 and bf16 autocast; CUDA-event timing after warm-up.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch


def timed(fn, repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / repeats


def muq_throughput(report: dict) -> None:
    from training.backbones import create_backbone

    model = create_backbone("audio", "muq", size="large").cuda().eval()
    for batch in (1, 8, 32):
        wave = 0.1 * torch.randn(batch, model.contract.num_samples, device="cuda")
        for dtype in ("fp32", "bf16"):
            def run():
                with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=dtype == "bf16"):
                    return model(wave)
            seconds = timed(run, repeats=3 if batch == 32 else 5)
            report[f"muq_{dtype}_batch{batch}_clips_per_s"] = round(batch / seconds, 2)
            print(json.dumps(report), flush=True)
    with torch.no_grad():
        ref = model(0.1 * torch.randn(2, model.contract.num_samples, device="cuda", generator=torch.Generator("cuda").manual_seed(0)))
        with torch.autocast("cuda", torch.bfloat16):
            low = model(0.1 * torch.randn(2, model.contract.num_samples, device="cuda", generator=torch.Generator("cuda").manual_seed(0)))
    report["muq_bf16_vs_fp32_max_rel"] = float((low.float() - ref).abs().max() / ref.abs().max())
    report["gpu_mem_peak_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)


def heads_throughput(report: dict) -> None:
    from training.config import ModelConfig
    from training.model import DeraMosHeads

    heads = DeraMosHeads(ModelConfig(audio_dim=1024, text_dim=768)).cuda().eval()
    for batch in (24, 256):
        audio, text = torch.randn(batch, 750, 1024, device="cuda"), torch.randn(batch, 32, 768, device="cuda")
        mask = torch.ones(batch, 32, dtype=torch.long, device="cuda")
        with torch.no_grad():
            seconds = timed(lambda: heads(audio, text, mask))
        report[f"heads_fp32_batch{batch}_clips_per_s"] = round(batch / seconds, 1)


def cuda_training(report: dict) -> None:
    from training import train
    from training.fixtures import make_fixture_corpus

    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_fixture_corpus(Path(tmp) / "c", n_train=48, n_dev=16, n_test=16)
        code = train.main(["--data", str(corpus), "--out", f"{tmp}/run", "--recipe", "tiny", "--device", "cuda",
                           "--epochs", "3", "--cache-dir", f"{tmp}/cache"])
        report["cuda_training_exit_code"] = code
        report["cuda_training_test"] = json.loads((Path(tmp) / "run" / "metrics.json").read_text())["test"]["MI"]["utterance"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".")
    args = p.parse_args(argv)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for check in (cuda_training, heads_throughput, muq_throughput):
        try:
            check(report)
        except Exception as exc:  # report every check, even when one fails
            report[f"{check.__name__}_error"] = repr(exc)
        print(json.dumps(report), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
