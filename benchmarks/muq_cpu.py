"""MuQ-large on this machine: parameters, counted GFLOP per 30 s clip, CPU clips/s, ONNX parity.

``python -m benchmarks.muq_cpu [--batches 1 4] [--onnx /tmp/muq.onnx]`` (random weights: the cost and the
export do not depend on their values; about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from training.backbones import create_backbone


def count_gflop(model, clip: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(clip)
    return counter.get_total_flops() / 1e9


def clips_per_second(model, batch: int, repeats: int = 1) -> float:
    wave = 0.1 * torch.randn(batch, model.contract.num_samples)
    with torch.no_grad():
        model(wave[:1])  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            model(wave)
    return batch * repeats / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--onnx", default=None, help="also export to this path and check ORT parity (batch 1, 2)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = create_backbone("audio", "muq", size="large").eval()
    report = {"params_M": sum(p.numel() for p in model.parameters()) / 1e6, "threads": torch.get_num_threads(),
              "gflop_per_30s_clip": count_gflop(model, torch.zeros(1, model.contract.num_samples))}
    print(json.dumps(report), flush=True)
    for batch in args.batches:
        report[f"clips_per_s_batch{batch}"] = clips_per_second(model, batch)
        print(json.dumps(report), flush=True)
    if args.onnx:
        from export.graphs import export_audio_encoder
        from export.verify import compare_onnx

        start = time.perf_counter()
        export_audio_encoder(model, args.onnx)
        report["onnx_export_s"] = time.perf_counter() - start
        report["onnx_parity"] = compare_onnx(model, args.onnx, batch_sizes=(1, 2))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
