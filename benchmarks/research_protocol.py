"""The research code's way of scoring, the baseline every speed-up in the benchmark report is a ratio to.

Torch eager fp32, batch 1, each file decoded and resampled on the main thread right before its forward,
the prompt tokenised and encoded again for every clip (``load_run`` + the full ``model(waveform, ids,
mask)`` per clip), as the authors' evaluation script does. :func:`research_scores` is that loop;
``benchmarks.measure.reference_row`` times it inside the report and, as a separate process (start-up
included), ``python -m benchmarks.research_protocol MANIFEST --run RUN_DIR --out SCORES.csv`` is the
whole-process baseline against ``deramos-rt score`` (``benchmarks.whole``).

The manifest is the runtime's CSV (``path``, ``prompt``, optional ``id``); relative paths are relative to it.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Callable, Iterable


def research_scores(model, tokenizer, items: Iterable[tuple[str, str]],
                    on_clip: Callable[[dict], None] | None = None) -> tuple[list[float], list[float]]:
    """MI and TA of each (path, prompt) the research way (see the module docstring).

    Args:
        model: a ``training.model.DeraMos`` in eval mode.
        tokenizer: its ``build_tokenizer``.
        items: (audio path, prompt) pairs.
        on_clip: called per clip with ``{"decode_s", "total_s", "decode_cpu_s", "model_cpu_s"}`` (wall and
            process CPU seconds: the model's CPU time counts every thread torch runs).
    """
    import torch

    from deramos_rt.audio import load_clip

    protocol = model.audio_protocol
    mi, ta = [], []
    for path, prompt in items:
        t0, c0 = time.perf_counter(), time.process_time()
        wave = load_clip(path, protocol)
        t1, c1 = time.perf_counter(), time.process_time()
        tokens = tokenizer([prompt])
        with torch.inference_mode():
            out = model(torch.from_numpy(wave)[None], torch.from_numpy(tokens.input_ids),
                        torch.from_numpy(tokens.attention_mask))
        mi.append(float(out["mi"][0]))
        ta.append(float(out["ta"][0]))
        if on_clip is not None:
            on_clip({"decode_s": t1 - t0, "total_s": time.perf_counter() - t0, "decode_cpu_s": c1 - c0,
                     "model_cpu_s": time.process_time() - c1})
    return mi, ta


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV manifest with ``path`` and ``prompt`` (``id`` defaults to the file's stem)."""
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        audio = Path(row["path"])
        audio = audio if audio.is_absolute() else path.parent / audio
        out.append({"id": row.get("id") or audio.stem, "path": str(audio), "prompt": row["prompt"]})
    return out


def main(argv: list[str] | None = None) -> int:
    """Score a manifest the research code's way and write ``id,mi,ta`` rows."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.research_protocol", description=main.__doc__)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--run", required=True, type=Path, help="training run directory")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    from training.checkpoint import load_run
    from training.model import build_tokenizer

    rows = read_manifest(args.manifest)
    model, _ = load_run(args.run)
    tokenizer = build_tokenizer(model)
    mi, ta = research_scores(model, tokenizer, [(r["path"], r["prompt"]) for r in rows])
    with args.out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "mi", "ta"])
        writer.writerows((r["id"], m, t) for r, m, t in zip(rows, mi, ta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
