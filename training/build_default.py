"""Rebuild the built-in default model (``deramos_rt/model_data/default``) from demo corpora of several seeds.

``python -m training.build_default --work /tmp/dm [--steps render merge train evaluate write] [--seeds 1984]``

The recipe (docs/default-model.md):

1. **render** five demo corpora (``training.democorpus``): three training seeds of 1,200 clips, one
   development seed of 600 clips (model selection only) and one test seed of 600 clips, never used to
   train or choose anything.
2. **merge** them into two MusicEval layouts under ``--work``, with symlinked wavs and prompt ids made
   unique per corpus (``P001`` of the k-th corpus becomes ``P{k}001``): ``layout/`` (train = every clip of
   the training seeds, dev = every clip of the development seeds; no test split) and ``heldout/`` (test
   = every clip of the test seed).
3. **train** one ordinary ``training.train`` run per training seed with ``--recipe`` (default
   ``demo-minilm``); each keeps its best epoch on the development corpora.
4. **evaluate** every run on the held-out test corpus (``training.evaluate``), for the record only.
5. **write** the run with the best development selection score to ``--model`` (default
   ``deramos_rt/model_data/default``): its ``config.json``, ``model.safetensors``, and ``metrics.json`` with the
   held-out figures and the recipe added.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from deramos_rt.errors import DeramosError
from deramos_rt.console import run_cli, setup_logging, step

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
# (role, corpus seed, clips): the role decides where a corpus's clips go, whatever its own split lists say.
CORPORA = [("train", 101, 1200), ("train", 102, 1200), ("train", 103, 1200), ("dev", 201, 600), ("test", 301, 600)]
STEPS = ("render", "merge", "train", "evaluate", "write")
_WAV = re.compile(r"^(.*_)P(\d+)$")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.build_default", description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="scratch folder for corpora, layouts, cache and runs")
    p.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    p.add_argument("--recipe", default="demo-minilm")
    p.add_argument("--seeds", type=int, nargs="+", default=[1984], help="training seeds (one run each)")
    p.add_argument("--model", default=str(ROOT / "deramos_rt" / "model_data" / "default"), help="folder to write the chosen run to")
    p.add_argument("--train-args", default="", help="extra training.train arguments, e.g. '--epochs 30'")
    return p.parse_args(argv)


def corpus_dir(work: Path, seed: int) -> Path:
    return work / f"seed{seed}"


def render(work: Path) -> None:
    """Render every corpus that is not already complete (a corpus is complete once its split lists exist)."""
    from training.democorpus import make_demo_corpus

    for _, seed, clips in CORPORA:
        out = corpus_dir(work, seed)
        if (out / "sets" / "test_mos_list.txt").is_file():
            continue
        with step(f"render corpus seed {seed}", log):
            make_demo_corpus(out, clips=clips, seed=seed)


def read_corpus_rows(folder: Path) -> tuple[list[str], dict[str, str]]:
    """All ``wavID,MI,TA`` lines of a corpus (every split) and its prompt table."""
    from training.data import SPLITS, read_prompt_table

    lines = []
    for split in SPLITS:
        path = folder / "sets" / f"{split}_mos_list.txt"
        if not path.is_file():
            raise DeramosError(f"{path} is missing: render the corpus first (--steps render)")
        lines += [line for line in path.read_text().splitlines() if line.strip()]
    return lines, read_prompt_table(folder / "prompt_info.txt", required=True)


def renumber(wav_id: str, corpus_index: int) -> str:
    """``..._P007`` of the k-th corpus -> ``..._P{k}007``: prompt ids stay unique after merging."""
    match = _WAV.match(wav_id)
    if match is None:
        raise DeramosError(f"demo clip id {wav_id!r} does not end in _P###")
    return f"{match.group(1)}P{corpus_index}{int(match.group(2)):03d}"


def write_layout(target: Path, splits: dict[str, list[tuple[int, Path]]]) -> dict[str, int]:
    """Merge corpora into one MusicEval layout: ``splits`` maps a split to its (corpus index, folder) list."""
    if target.exists():
        shutil.rmtree(target)
    (target / "wav").mkdir(parents=True)
    (target / "sets").mkdir()
    prompts, counts = {}, {}
    for split, corpora in splits.items():
        out_lines = []
        for index, folder in corpora:
            lines, table = read_corpus_rows(folder)
            for pid, text in table.items():
                prompts[f"P{index}{int(pid[1:]):03d}"] = text
            for line in lines:
                wav_id, mi, ta = line.split(",")
                wav_id = wav_id.removesuffix(".wav")
                new_id = renumber(wav_id, index)
                (target / "wav" / f"{new_id}.wav").symlink_to((folder / "wav" / f"{wav_id}.wav").resolve())
                out_lines.append(f"{new_id}.wav,{mi},{ta}")
        (target / "sets" / f"{split}_mos_list.txt").write_text("\n".join(out_lines) + "\n")
        counts[split] = len(out_lines)
    with (target / "prompt_info.txt").open("w") as f:
        f.write("id\ttext\n")
        for pid in sorted(prompts):
            f.write(f"{pid}\t{prompts[pid]}\n")
    return counts


def merge(work: Path) -> None:
    indexed = [(role, i + 1, corpus_dir(work, seed)) for i, (role, seed, _) in enumerate(CORPORA)]
    with step("merge training and development corpora", log) as info:
        info.update(write_layout(work / "layout", {r: [(i, f) for role, i, f in indexed if role == r]
                                                   for r in ("train", "dev")}))
    with step("merge the held-out test corpus", log) as info:
        info.update(write_layout(work / "heldout", {"test": [(i, f) for role, i, f in indexed if role == "test"]}))


def run_dir(work: Path, recipe: str, seed: int) -> Path:
    return work / "runs" / f"{Path(recipe).stem}-seed{seed}"


def _run(argv: list[str]) -> None:
    log.info("running %s", shlex.join(argv))
    done = subprocess.run(argv, cwd=ROOT)
    if done.returncode != 0:
        raise DeramosError(f"command failed with status {done.returncode}: {shlex.join(argv)}")


def train(args: argparse.Namespace, work: Path) -> None:
    for seed in args.seeds:
        # The demo recipe's audio front end is fixed DSP (no weights to load), hence --allow-random-encoders.
        _run([sys.executable, "-m", "training.train", "--data", str(work / "layout"),
              "--out", str(run_dir(work, args.recipe, seed)), "--recipe", args.recipe, "--seed", str(seed),
              "--cache-dir", str(work / "cache"), "--allow-random-encoders", *shlex.split(args.train_args)])


def evaluate(args: argparse.Namespace, work: Path) -> None:
    for seed in args.seeds:
        run = run_dir(work, args.recipe, seed)
        _run([sys.executable, "-m", "training.evaluate", "--data", str(work / "heldout"), "--run", str(run),
              "--split", "test", "--cache-dir", str(work / "cache"), "--out", str(run / "heldout"), "--overwrite"])


def write(args: argparse.Namespace, work: Path) -> None:
    """Copy the run with the best development selection score to ``--model``, with its held-out figures."""
    runs = [run_dir(work, args.recipe, seed) for seed in args.seeds]
    scores = {run: json.loads((run / "metrics.json").read_text())["selection"] for run in runs}
    best = max(runs, key=scores.get)
    metrics = json.loads((best / "metrics.json").read_text())
    heldout = best / "heldout" / "eval_test.json"
    if not heldout.is_file():
        raise DeramosError(f"{heldout} is missing: run --steps evaluate first")
    metrics["heldout_test"] = json.loads(heldout.read_text())
    metrics["data"] = {"corpora": [{"role": r, "seed": s, "clips": n} for r, s, n in CORPORA],
                       "note": "demo corpora (training.democorpus); the test seed was never used to train or select",
                       "chosen_from": {str(run.name): score for run, score in scores.items()}}
    out = Path(args.model)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(best / name, out / name)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("wrote %s from %s (dev selection %.4f)", out, best, scores[best])


def build(args: argparse.Namespace) -> int:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    actions = {"render": lambda: render(work), "merge": lambda: merge(work), "train": lambda: train(args, work),
               "evaluate": lambda: evaluate(args, work), "write": lambda: write(args, work)}
    for name in STEPS:
        if name in args.steps:
            actions[name]()
    return 0


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    return run_cli("training.build_default", lambda: build(args))


if __name__ == "__main__":
    raise SystemExit(main())
