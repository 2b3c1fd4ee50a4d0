"""What an M-member ensemble costs beside one member: same backend, same precision, same clips (issue 22).

``python -m benchmarks.ensemble_cost --out DIR [--models default,muq] [--members 8] [--clips N] [--repeats 3]``

For each model, M member runs share the base run's frozen encoders and differ in their heads (member 1 is
the base run itself; member i's heads are fresh random ones seeded ``1000 + i``: cost does not depend on the
weights' values). Two bundles are built, fp32 only, and cached in ``--work``: the base run alone and the M
members as one ensemble bundle (the encoder graphs once, the members' heads in one joint graph). Both are
scored end to end from the same files with ONNX Runtime fp32 at the same batch size and decode threads,
``--repeats`` times interleaved (single, ensemble, single, ...); medians (min-max). The target: the
ensemble's end-to-end time at most 1.15x one member's.

Models: ``default`` (the built-in model's run, ``deramos_rt/model_data/default``: fixed spectral front end +
MiniLM, 10 s at 16 kHz) and ``muq`` (the paper's MuQ-large + RoBERTa-base with random weights, 30 s at
24 kHz: about 1.3 TFLOP per clip, so a few clips per row on a CPU).

Writes ``DIR/ensemble_cost.json`` and ``DIR/ensemble_cost.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.discipline import LoadMonitor, blas_environment, guarded, load_since_start, summarise, threadpools
from benchmarks.models import DEFAULT_RUN, items_for, random_run, write_clips
from export.calibrate import interleave

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.15
# model: (title, clips per row by default, batch size)
MODELS = {"default": ("built-in default model (spectral front end + MiniLM)", 64, 16),
          "muq": ("MuQ-large + RoBERTa-base, the paper's model (random weights)", 4, 2)}


def log(message: str) -> None:
    print(f"[ensemble_cost] {message}", file=sys.stderr, flush=True)


def base_run(model: str, work: Path) -> Path:
    """The model's single run: the built-in model's own run, or the paper's model with random weights
    (cached in ``work``, shared with ``benchmarks.report``)."""
    return DEFAULT_RUN if model == "default" else random_run("dera-mos-code", work / "muq-roberta-run")


def member_runs(base: Path, count: int, folder: Path) -> list[Path]:
    """``[base, member-2, ..., member-count]``: ordinary run directories with the base run's encoders and their
    own random heads (cached: a member already written is reused)."""
    from export.testing import write_member

    runs = [base]
    for i in range(2, count + 1):
        run = folder / f"member-{i}"
        done = (run / "config.json").is_file() and (run / "model.safetensors").is_file()
        runs.append(run if done else write_member(base, run, 1000 + i))
    return runs


def bundle(runs: list[Path], out: Path, small: bool) -> tuple[Path, float | None]:
    """An fp32 bundle of ``runs`` (one run or an ensemble's members), built once; (path, build seconds or None)."""
    from deramos_rt.bundle import is_bundle
    from export.build_engine import build_bundle

    if is_bundle(out):
        return out, None
    log(f"building {out.name} from {len(runs)} run(s)")
    start = time.perf_counter()
    build_bundle(runs if len(runs) > 1 else runs[0], out, ("fp32",),
                 parity_files=1 if small else 4, parity_random=1 if small else 4)
    return out, time.perf_counter() - start


def prepare(model: str, members: int, work: Path) -> dict:
    """The model's single and ensemble bundles (built or reused) and how they were made."""
    base = base_run(model, work)
    runs = member_runs(base, members, work / f"ensemble-{model}-members")
    small = model == "muq"
    single, single_s = bundle([base], work / f"ensemble-{model}-single-fp32", small)
    joint, joint_s = bundle(runs, work / f"ensemble-{model}-{members}-fp32", small)
    return {"base_run": str(base), "members": members, "single_bundle": str(single), "ensemble_bundle": str(joint),
            "build_seconds": {"single": single_s, "ensemble": joint_s}}


def score_row(name: str, bundle_dir: Path, items, batch: int, workers: int | None) -> dict:
    """End to end (and model only) for one bundle; the members' spread when it has members."""
    from benchmarks import measure

    row = measure.scorer_row(name, bundle_dir, "onnxruntime", "fp32", batch, items, workers=workers)
    row.pop("latency", None)
    return row


def measure_model(model: str, prepared: dict, clips: int, repeats: int, work: Path, workers: int | None,
                  monitor: LoadMonitor, start_load: tuple[float, ...]) -> dict:
    """Single and ensemble rows, interleaved; their time ratio and the target's verdict."""
    from deramos_rt.bundle import load_bundle

    title, _, batch = MODELS[model]
    protocol = load_bundle(prepared["single_bundle"], verify=False).protocol
    items = items_for(write_clips(work / "clips" / f"{protocol.clip_seconds:g}s", clips, protocol.clip_seconds))
    batch = min(batch, len(items))
    tasks = {"single": guarded(lambda: score_row("single", Path(prepared["single_bundle"]), items, batch, workers),
                               log, f"{model} single"),
             "ensemble": guarded(lambda: score_row("ensemble", Path(prepared["ensemble_bundle"]), items, batch,
                                                   workers), log, f"{model} ensemble")}
    before, mark = os.getloadavg(), monitor.mark()
    runs = interleave(tasks, repeats)
    rows = {name: summarise(done) for name, done in runs.items()}
    # The 1-minute load before the second model counts the first one's rounds.
    load = load_since_start(start_load, before, monitor.summary(mark), "this run's start")
    section = {"title": title, **prepared, "clips": len(items), "clip_seconds": protocol.clip_seconds,
               "sample_rate": protocol.sample_rate, "batch_size": batch, "repeats": repeats, "rows": rows, "load": load}
    section.update(verdict(rows, load))
    log(f"{model}: {section.get('detail')}")
    return section


def verdict(rows: dict, load: dict) -> dict:
    """The ratio of end-to-end times (ensemble over single) and model-only times, and the target's status."""
    single, joint = rows.get("single", {}), rows.get("ensemble", {})
    if "error" in single or "error" in joint:
        return {"status": "not measured", "detail": single.get("error") or joint.get("error")}
    ratio = joint["e2e_seconds"] / single["e2e_seconds"]
    model_ratio = joint["model_seconds"] / single["model_seconds"]
    spread = _spread(joint)
    status = "met" if ratio <= TARGET else "not met"
    if load["busy"]:
        status = f"not judged: machine busy (would be: {status})"
    detail = (f"ensemble end to end {ratio:.3f}x one member's time (target <= {TARGET}x); model only "
              f"{model_ratio:.3f}x; {single['e2e_clips_per_s']:.3g} vs {joint['e2e_clips_per_s']:.3g} clips/s")
    return {"e2e_ratio": round(ratio, 4), "model_ratio": round(model_ratio, 4), "status": status, "detail": detail,
            "ensemble_spread": spread}


def _spread(row: dict) -> dict | None:
    """The mean of the members' per-clip standard deviation (MI, TA): shows the ensemble ran its members."""
    spread = row.get("spread")
    if not spread:
        return None
    return {k: round(sum(v) / len(v), 4) for k, v in spread.items() if v}


def markdown(results: dict) -> str:
    out = ["# Ensemble cost: M members over one encoder pass", "",
           f"Command: `{results['command']}`", "",
           f"- machine: {results['machine']}; load average at start {results['load_start']}",
           f"- thread pools that ran: {results['threadpools']}; environment: {results['environment']}", "",
           "Each model: its single run's fp32 bundle and an ensemble bundle of M members that share its encoders, "
           "scored end to end from the same files with ONNX Runtime fp32 (same batch, same decode threads), "
           "interleaved; medians (min-max) of the repeats.", "",
           "| model | members | clips | batch | single e2e clips/s | ensemble e2e clips/s | ensemble / single time "
           "(e2e) | (model only) | members' spread MI/TA | target <= 1.15x | 1-min load (run's start; section before -> "
           "after); other processes' threads |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in results["models"].items():
        if "rows" not in s:
            out.append(f"| {name} | | | | | | | | | {s.get('error')} | |")
            continue
        single, joint = s["rows"]["single"], s["rows"]["ensemble"]
        spread = s.get("ensemble_spread") or {}
        out.append(f"| {name}: {s['title']} ({s['clip_seconds']:g} s at {s['sample_rate']} Hz) | {s['members']} | "
                   f"{s['clips']} | {s['batch_size']} | {_rate(single)} | {_rate(joint)} | "
                   f"{s.get('e2e_ratio', '-')} | {s.get('model_ratio', '-')} | "
                   f"{spread.get('mi_std', '-')}/{spread.get('ta_std', '-')} | {s['status']} | "
                   f"start {s['load']['load_at_start'][0]:.2f}; {s['load']['load_before'][0]:.2f} -> "
                   f"{s['load']['load_after'][0]:.2f}; others "
                   f"{s['load']['during'].get('others_mean')} |")
    out += ["", "Bundles (fp32 only, cached in the work folder; build seconds, None = reused):", ""]
    out += [f"- {name}: {s.get('single_bundle')} / {s.get('ensemble_bundle')}: {s.get('build_seconds')}"
            for name, s in results["models"].items()]
    return "\n".join(out) + "\n"


def _rate(row: dict) -> str:
    if "error" in row:
        return row["error"]
    low, high = row.get("range", {}).get("e2e_clips_per_s", [row["e2e_clips_per_s"]] * 2)
    return f"{row['e2e_clips_per_s']:.3g} ({low:.3g}-{high:.3g})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ensemble_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--models", default="default,muq", help="comma list of: " + ", ".join(MODELS))
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--clips", type=int, default=None, help="clips per row (default: 64 default, 4 muq)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=None, help="decode threads (default: the Scorer's)")
    p.add_argument("--prepare-only", action="store_true", help="build the runs and bundles, measure nothing")
    p.add_argument("--work", type=Path, default=REPO / ".cache" / "bench")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or args.members < 2 or args.repeats < 1:
        p.error(f"--models from {', '.join(MODELS)}; --members >= 2; --repeats >= 1 (got {args.models!r}, "
                f"{args.members}, {args.repeats})")
    for path in (args.out, args.work):  # checked now: a run of many minutes must not fail at its last write
        if path.exists() and not path.is_dir():
            p.error(f"{path} is a file, not a folder")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.work.mkdir(parents=True, exist_ok=True)
    from benchmarks.report import machine

    m = machine()
    results = {"command": "python -m benchmarks.ensemble_cost " + " ".join(sys.argv[1:] if argv is None else argv),
               "machine": f"{m['cpu'].get('model')}, {m['cores']} cores", "load_start": [round(x, 2) for x in os.getloadavg()],
               "environment": blas_environment(), "models": {}}
    prepared = {}
    for model in models:  # every build first: a build must not fall between measured rounds
        try:
            prepared[model] = prepare(model, args.members, args.work)
        except Exception as exc:
            results["models"][model] = {"error": f"could not prepare: {type(exc).__name__}: {exc}"}
            log(f"{model}: could not prepare: {exc}")
    if args.prepare_only:
        print(json.dumps(prepared, indent=1, default=str))
        return 0 if len(prepared) == len(models) else 1
    start_load = os.getloadavg()  # after the builds: they are not measured
    with LoadMonitor() as monitor:
        for model, ready in prepared.items():
            clips = args.clips or MODELS[model][1]
            results["models"][model] = measure_model(model, ready, clips, args.repeats, args.work, args.workers,
                                                     monitor, start_load)
    results["threadpools"] = [f"{t.get('internal_api')} {t.get('version')} ({t.get('num_threads')} threads)"
                              for t in threadpools()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ensemble_cost.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (args.out / "ensemble_cost.md").write_text(markdown(results))
    log(f"wrote {args.out / 'ensemble_cost.md'}")
    return 0 if all("rows" in s for s in results["models"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
