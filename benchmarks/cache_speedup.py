"""Epoch time with the encoders recomputed vs from the feature cache, for a CLAP size.

``python -m benchmarks.cache_speedup --size tiny|base [--clips 48]``: one training epoch of the DeRA-MOS
heads (batch 24) over a generated corpus, live (decode + resample + encoders + heads) and cached (heads
only, after the cache was filled once). Random encoder weights: cost does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def epoch_seconds(model, features, clips, loss_cfg, batch: int = 24) -> float:
    from training.losses import total_loss

    optimizer = torch.optim.AdamW(model.heads.parameters(), lr=5e-5)
    model.train()
    start = time.perf_counter()
    for i in range(0, len(clips), batch):
        chunk = clips[i : i + batch]
        audio, text, mask = features.batch(chunk)
        out = model.heads(audio, text, mask, return_alignment=True)
        loss, _ = total_loss(out, torch.tensor([c.mi for c in chunk]), torch.tensor([c.ta for c in chunk]),
                             loss_cfg, model.heads.bin_centers)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main(argv=None) -> int:
    from training.cache import Features
    from training.config import BackboneConfig, LossConfig, ModelConfig
    from training.data import read_splits
    from training.fixtures import make_fixture_corpus
    from training.model import build_model, build_tokenizer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["tiny", "base"], default="tiny")
    p.add_argument("--clips", type=int, default=48)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    cfg = ModelConfig(audio=BackboneConfig("clap-htsat", {"size": args.size}),
                      text=BackboneConfig("roberta", {"size": "tiny"}, tokenizer="tiny"))
    model = build_model(cfg)
    tokenizer = build_tokenizer(model)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_fixture_corpus(Path(tmp) / "c", n_train=args.clips, n_dev=2, n_test=2)
        clips = read_splits(corpus, ("train",))["train"]
        live = epoch_seconds(model, Features(model, tokenizer, None), clips, LossConfig())
        cached_features = Features(model, tokenizer, Path(tmp) / "cache")
        start = time.perf_counter()
        cached_features.prepare(clips)
        fill = time.perf_counter() - start
        cached = min(epoch_seconds(model, cached_features, clips, LossConfig()) for _ in range(3))
    report = {"clap_size": args.size, "clips": len(clips), "live_epoch_s": round(live, 3),
              "cache_fill_s": round(fill, 3), "cached_epoch_s": round(cached, 4), "speedup": round(live / cached, 1),
              "threads": torch.get_num_threads()}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
