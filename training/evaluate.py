"""Score a split with a trained run and report AudioMOS-style metrics.

``python -m training.evaluate --data DIR --run RUN_DIR --split test [--out FOLDER]`` (``--run`` a folder of
member runs: their ensemble, ``training/ensemble.py``) prints utterance-
and system-level MSE / LCC / SRCC / KTAU for MI and TA, and writes ``eval_<split>.json`` and the per-clip
predictions ``predictions_<split>.csv`` into ``--out`` (default: a new folder ``eval-<run name>-<split>``
under the current directory; never into the run or model folder), then prints where they are. Existing
results there are not replaced without ``--overwrite``. Clips are prepared with the run's audio protocol
(its encoder's rate and clip length and its config's resampler).
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import numpy as np
import torch

from deramos_rt.errors import DeramosError
from deramos_rt.console import run_cli, setup_logging, step
from training.data import Clip, Corpus

log = logging.getLogger(__name__)


@torch.no_grad()
def predict(model, features, clips: list[Clip], batch_size: int = 24) -> dict[str, np.ndarray]:
    """Expected MI and TA (and distributions, for distribution heads) for every clip, in order."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(clips), batch_size):
        audio, text, mask = features.batch(clips[start : start + batch_size])
        for key, value in model.heads(audio, text, mask).items():
            parts.setdefault(key, []).append(value.float().cpu().numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


def split_metrics(pred: dict[str, np.ndarray], clips: list[Clip]) -> dict[str, dict]:
    """``{"MI": mos_metrics(...), "TA": mos_metrics(...)}`` for predictions aligned with ``clips``."""
    from training.metrics import mos_metrics

    systems = [c.system_id for c in clips]
    return {
        "MI": mos_metrics(pred["mi"], np.array([c.mi for c in clips]), systems),
        "TA": mos_metrics(pred["ta"], np.array([c.ta for c in clips]), systems),
    }


def format_metrics(metrics: dict[str, dict]) -> str:
    lines = [f"{'':6}{'level':10}{'MSE':>8}{'LCC':>8}{'SRCC':>8}{'KTAU':>8}"]
    for dim in ("MI", "TA"):
        for level in ("utterance", "system"):
            m = metrics[dim][level]
            lines.append(f"{dim:6}{level:10}" + "".join(f"{m[k]:8.3f}" for k in ("MSE", "LCC", "SRCC", "KTAU")))
    return "\n".join(lines)


def write_predictions(path: Path, pred: dict[str, np.ndarray], clips: list[Clip]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["wav_id", "system_id", "mi_true", "mi_pred", "ta_true", "ta_pred"])
        for clip, mi, ta in zip(clips, pred["mi"], pred["ta"]):
            writer.writerow([clip.wav_id, clip.system_id, clip.mi, f"{mi:.6f}", clip.ta, f"{ta:.6f}"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="MusicEval-layout folder")
    p.add_argument("--run", required=True, help="run directory (config.json + model.safetensors)")
    p.add_argument("--split", default="test", choices=["train", "dev", "test"])
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--cache-dir", default=None, help="encoder-output cache (default: none, encode live)")
    p.add_argument("--out", default=None, help="folder for eval_<split>.json and predictions_<split>.csv "
                   "(default: ./eval-<run name>-<split>/)")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def evaluate(args: argparse.Namespace) -> int:
    from training.cache import Features
    from training.checkpoint import write_json
    from training.ensemble import load_any
    from training.model import build_tokenizer

    run_dir = Path(args.run)
    out_dir = output_dir(args.out, run_dir, args.split)
    files = (out_dir / f"eval_{args.split}.json", out_dir / f"predictions_{args.split}.csv")
    check_outputs(files, args.overwrite)
    with step("load run", log) as info:
        model, run_config = load_any(run_dir, device=args.device)  # a folder of member runs: their ensemble
        info["backbones"] = f"{run_config.model.audio.name}+{run_config.model.text.name}"
    with step(f"read split {args.split}", log) as info:
        clips = Corpus.open(args.data).read_split(args.split)
        info["clips"] = len(clips)
    with step("score", log) as info:
        features = Features(model, build_tokenizer(model), args.cache_dir)
        pred = predict(model, features, clips, args.batch_size)
        metrics = split_metrics(pred, clips)
        info["clips"] = len(clips)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(files[0], {"split": args.split, "data": str(args.data), "run": str(run_dir), "clips": len(clips),
                          "resampler": run_config.model.resampler, **metrics})
    write_predictions(files[1], pred, clips)
    print(format_metrics(metrics))
    print(f"wrote {files[0]} and {files[1]}")
    return 0


def output_dir(out: str | None, run_dir: Path, split: str) -> Path:
    """Where results go: ``--out`` (a folder), else ``./eval-<run name>-<split>``.

    Raises:
        DeramosError: ``--out`` is an existing file or looks like a file name (``.json``/``.csv``).
    """
    if out is None:
        name = run_dir.resolve().name or "run"
        return Path.cwd() / f"eval-{name}-{split}"
    path = Path(out)
    if path.is_file() or path.suffix.lower() in (".json", ".csv"):
        raise DeramosError(f"--out {out} must be a folder: it receives eval_{split}.json and predictions_{split}.csv")
    return path


def check_outputs(files: tuple[Path, ...], overwrite: bool) -> None:
    """Refuse to replace earlier results unless asked to."""
    existing = [str(f) for f in files if f.exists()]
    if existing and not overwrite:
        raise DeramosError(f"would replace {', '.join(existing)}; pass --overwrite or choose another --out")


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    return run_cli("training.evaluate", lambda: evaluate(args))


if __name__ == "__main__":
    raise SystemExit(main())
