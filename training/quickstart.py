"""The main job on the built-in default: render a fresh demo corpus and score it with the default model.

``python -m training.quickstart [--model RUN_DIR] [--out DIR] [--clips N]``

Without ``--out`` everything is written to a temporary folder that is removed at the end (nothing lands
in the checkout or the current directory); with ``--out DIR`` (a new or empty folder) the rendered corpus,
``metrics.json`` and ``predictions.csv`` are kept there. It renders ``N`` clips of real music (music21 scores through fluidsynth) with simulated system defects,
never seen in training (a different seed), scores every clip for MI and TA with the model, and prints
utterance- and system-level agreement with the simulated listeners plus the best and worst clips.
The default model is trained on a synthetic corpus: its scores are not calibrated to human MOS.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

from deramos_rt.errors import DeramosError
from deramos_rt.console import run_cli, setup_logging, step
from deramos_rt.models import DEFAULT, run_dir

log = logging.getLogger(__name__)
DEFAULT_MODEL = run_dir(DEFAULT)
QUICKSTART_SEED = 20261124  # not the training corpus seed: these clips are new to the model


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.quickstart", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="run directory (default: the built-in model)")
    p.add_argument("--out", default=None, help="new or empty folder to keep the rendered corpus and the predictions "
                   "in (default: a temporary folder, removed at the end)")
    p.add_argument("--clips", type=int, default=60)
    p.add_argument("--seed", type=int, default=QUICKSTART_SEED)
    return p.parse_args(argv)


def quickstart(args: argparse.Namespace) -> int:
    if args.out is None:
        with tempfile.TemporaryDirectory(prefix="deramos-quickstart-") as tmp:
            return run_quickstart(args, Path(tmp), keep=False)
    out = Path(args.out)
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise DeramosError(f"--out {out} already exists and is not an empty folder; choose a new folder")
    return run_quickstart(args, out, keep=True)


def run_quickstart(args: argparse.Namespace, out: Path, keep: bool) -> int:
    """Render, score and report into ``out``; ``keep`` says whether ``out`` outlives the command."""
    from training.cache import Features
    from training.checkpoint import load_run, write_json
    from training.data import SPLITS, Corpus
    from training.democorpus import make_demo_corpus
    from training.evaluate import format_metrics, predict, split_metrics, write_predictions
    from training.model import build_tokenizer

    with step("load model", log) as info:
        model, run_config = load_run(args.model)
        info.update(model=args.model, encoders=f"{run_config.model.audio.name}+{run_config.model.text.name}")
    with step("render demo corpus", log) as info:
        make_demo_corpus(out / "corpus", clips=args.clips, seed=args.seed)
        corpus = Corpus.open(out / "corpus")
        clips = [c for split in SPLITS for c in corpus.read_split(split)]
        info.update(clips=len(clips), folder=out / "corpus")
    with step("score", log) as info:
        pred = predict(model, Features(model, build_tokenizer(model)), clips)
        metrics = split_metrics(pred, clips)
        info["clips"] = len(clips)
    write_json(out / "metrics.json", {"model": args.model, "clips": len(clips), **metrics})
    write_predictions(out / "predictions.csv", pred, clips)
    print(f"Scored {len(clips)} rendered clips with {args.model}\n{format_metrics(metrics)}")
    order = np.argsort(-pred["mi"])
    for label, idx in (("highest MI", order[:3]), ("lowest MI", order[-3:])):
        for i in idx:
            print(f"{label:11} MI {pred['mi'][i]:.2f} (true {clips[i].mi:.1f})  TA {pred['ta'][i]:.2f} "
                  f"(true {clips[i].ta:.1f})  {clips[i].wav_id}: {clips[i].prompt}")
    if keep:
        print(f"wrote {out / 'metrics.json'}, {out / 'predictions.csv'} and the corpus {out / 'corpus'}")
    else:
        print("(rendered into a temporary folder, now removed; pass --out DIR to keep the clips and predictions)")
    return 0


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    return run_cli("training.quickstart", lambda: quickstart(args))


if __name__ == "__main__":
    raise SystemExit(main())
