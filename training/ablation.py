"""The loss ablation of docs/ablation.md: every loss setting x several seeds, through the real trainer.

``python -m training.ablation --data DIR --out docs/ablation.md [--recipe demo-minilm] [--seeds 1 2 3]``

Each run is an ordinary ``training.train`` run (same cache, same protocol); the table reports the mean
and standard deviation over seeds of test-split SRCC and KTAU, utterance and system level, MI and TA.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
import shlex
import sys
from pathlib import Path

import numpy as np

from deramos_rt.errors import DeramosError
from deramos_rt.console import run_cli, setup_logging, step

log = logging.getLogger(__name__)
SETTINGS = {
    "CE-Gauss": ["--lambda-balr", "0", "--lambda-sama", "0"],
    "+ BALR (0.01)": ["--lambda-balr", "0.01", "--lambda-sama", "0"],
    "+ SAMA (0.2)": ["--lambda-balr", "0", "--lambda-sama", "0.2"],
    "+ both, code (0.01 / 0.2)": ["--lambda-balr", "0.01", "--lambda-sama", "0.2"],
    "+ both, paper (0.2 / 0.3)": ["--lambda-balr", "0.2", "--lambda-sama", "0.3"],
    "L1 (AudioMOS baseline)": ["--loss", "l1"],
    "PAMR + L1 (QAMRO)": ["--loss", "pamr"],
}
COLUMNS = [(dim, level, metric) for dim in ("MI", "TA") for level in ("utterance", "system") for metric in ("SRCC", "KTAU")]


def run_one(args, name: str, seed: int) -> dict:
    """One ordinary training run in its own process (single-threaded, so ``--jobs`` runs share the cores)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    out = Path(args.runs) / f"{slug}-seed{seed}"
    argv = [sys.executable, "-m", "training.train", "--data", args.data, "--out", str(out), "--recipe", args.recipe,
            "--cache-dir", args.cache_dir, "--seed", str(seed), "--epochs", str(args.epochs),
            "--patience", str(args.patience), *SETTINGS[name]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with step(f"{name} seed {seed}", log):
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise DeramosError(f"training failed ({shlex.join(argv)}):\n{done.stderr[-2000:]}")
    return json.loads((out / "metrics.json").read_text())["test"]


def table(results: dict[str, list[dict]], command: str) -> str:
    head = "| setting | " + " | ".join(f"{d} {l[:4]}. {m}" for d, l, m in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, runs in results.items():
        cells = []
        for dim, level, metric in COLUMNS:
            values = np.array([r[dim][level][metric] for r in runs])
            cells.append(f"{np.nanmean(values):.3f} ± {np.nanstd(values):.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nMean ± standard deviation over {len(next(iter(results.values())))} seeds, test split. " \
        f"Produced by:\n\n    {command}\n"


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(prog="python -m training.ablation", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="docs/ablation-table.md")
    p.add_argument("--runs", default="runs/ablation")
    p.add_argument("--recipe", default="demo-minilm")
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "deramos_rt" / "features"))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--only", nargs="*", default=None, help="subset of settings (by name)")
    p.add_argument("--jobs", type=int, default=2, help="training runs in parallel")
    args = p.parse_args(argv)
    command = "python -m training.ablation " + shlex.join(argv if argv is not None else sys.argv[1:])

    def body() -> int:
        names = args.only or list(SETTINGS)
        # Fill the cache once, then run the settings in parallel processes.
        run_one(args, names[0], args.seeds[0])
        jobs = [(name, seed) for name in names for seed in args.seeds]
        with ThreadPoolExecutor(args.jobs) as pool:
            done = list(pool.map(lambda job: run_one(args, *job), jobs))
        results = {name: [done[jobs.index((name, seed))] for seed in args.seeds] for name in names}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table(results, command))
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
        print(Path(args.out).read_text())
        return 0

    return run_cli("training.ablation", body)


if __name__ == "__main__":
    raise SystemExit(main())
