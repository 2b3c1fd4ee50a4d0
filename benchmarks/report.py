"""Benchmark report: every available backend in one run, on the same clips, as ratios to the research code.

``python -m benchmarks.report --out DIR [--models default,clap-roberta[,muq]] [--repeats 3]
[--whole-clips 240] [--batch-sizes 1,8,32] [--clips N] [--scaling 100,1000] [--quick]``

Writes DIR/results.json (after every measurement), DIR/report.md and DIR/*.png; one progress line per
measurement. Every row is measured ``--repeats`` times (at least 3 for figures), interleaved with the other
rows of its model (A B C A B C ...), and reported as the median with its min-max; the load average is
recorded before and after, and the other processes' runnable threads are sampled while measuring: above
half the cores the targets read "not judged: machine busy". The report fails (exit 1) when any row runs
faster than its own FLOP-bound limit: a limit is then wrong.

Cost on a 2-core CPU: the default run (built-in model, CLAP-HTSAT + RoBERTa, the whole-process row at
240 clips, scaling 100 / 1,000 clips) is estimated at 6-10 minutes on a quiet machine once its bundles exist
(``--quick`` took 11 minutes at load 7, where torch rows slow down most); building the CLAP bundle the
first time adds 4-12 minutes (cached in --work). ``--models ...,muq`` adds MuQ-large + RoBERTa (the
paper's model, random weights): its bundle is 2.5 GB and takes about 40 minutes and several GB of memory to build
the first time (onnxslim is skipped above 1 GB; ``--slim`` on export.build_engine re-enables it, which
peaked near 14 GB), then about 5 minutes per repeat at 3 clips (estimated from 0.05 clips/s per clip of the
reference; not measured with this harness). ``--quick`` measures fewer clips, batch
sizes up to 8, scaling at 100 clips only, and the whole-process row at 48 clips.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from benchmarks import judge, measure
from benchmarks.discipline import LoadMonitor, blas_environment, guarded, load_since_start, summarise, threadpools
from benchmarks.models import ModelSpec, items_for, model_specs, prepare, write_clips
from export.calibrate import interleave

REPO = Path(__file__).resolve().parents[1]
CPU_ROWS = ("torch-fp32", "onnxruntime-fp32", "onnxruntime-int8", "aoti")
GPU_ROWS = ("torch-cuda-fp32", "torch-cuda-bf16", "torch-cuda-fp16", "onnxruntime-cuda", "onnxruntime-tensorrt",
            "tensorrt")
ALL_ROWS = ("reference", *CPU_ROWS, *GPU_ROWS)
DEFAULT_MODELS = "default,clap-roberta"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------------ machine

def machine() -> dict:
    """CPU model and SIMD features, cores, load, library versions, BLAS environment."""
    from deramos_rt.backends.calibration import cpu_features, cpu_key

    versions = {"python": platform.python_version()}
    for name in ("torch", "onnxruntime", "numpy", "transformers", "soundfile", "soxr"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # absent or broken: recorded as missing
            versions[name] = None
    return {"cpu": cpu_features(), "cpu_key": cpu_key(), "cores": os.cpu_count(), "load_average": os.getloadavg(),
            "platform": platform.platform(), "versions": versions, "environment": blas_environment(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


# ------------------------------------------------------------------------------------------------ rows

def gpu_reasons() -> dict[str, str]:
    """Why each GPU row cannot run here (empty when it can)."""
    import importlib.util

    reasons = {}
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        for row in ("torch-cuda-fp32", "torch-cuda-bf16", "torch-cuda-fp16"):
            reasons[row] = "no CUDA GPU visible to torch on this machine (see benchmarks/gpu_run.sh for the GPU run)"
    providers = measure_providers()
    if "CUDAExecutionProvider" not in providers:
        reasons["onnxruntime-cuda"] = f"onnxruntime offers only {', '.join(providers) or 'nothing'} (needs onnxruntime-gpu + CUDA)"
    if "TensorrtExecutionProvider" not in providers:
        reasons["onnxruntime-tensorrt"] = "onnxruntime's TensorRT provider is not available here"
    if importlib.util.find_spec("tensorrt") is None:
        reasons["tensorrt"] = "TensorRT is not installed (it cannot be installed from PyPI here)"
    return reasons


def measure_providers() -> list[str]:
    try:
        import onnxruntime

        return list(onnxruntime.get_available_providers())
    except ImportError:
        return []


def row_plan(spec: ModelSpec, backends: list[str]) -> tuple[list[tuple[str, Path, str, str]], dict[str, str]]:
    """(row name, source, backend, precision, device) to run and {row: reason} for the rows that cannot run."""
    from deramos_rt.bundle import load_bundle

    reasons = gpu_reasons()
    if spec.bundle_dir is None:
        runs = [(r, spec.run_dir, "torch", r.rsplit("-", 1)[1], "cuda" if "cuda" in r else "cpu") for r in backends
                if r == "torch-fp32" or (r.startswith("torch-cuda-") and r not in reasons)]
        missing = {r: reasons.get(r, "no bundle (see the model's notes)") for r in backends
                   if r not in ("reference", *(x[0] for x in runs))}
        return runs, missing
    bundle = load_bundle(spec.bundle_dir, verify=False)
    runs, missing = [], {}
    for row in backends:
        if row == "torch-fp32":
            runs.append((row, spec.run_dir, "torch", "fp32", "cpu"))
        elif row in ("onnxruntime-fp32", "onnxruntime-int8"):
            precision = row.split("-")[1]
            if precision in bundle.variants:
                runs.append((row, spec.bundle_dir, "onnxruntime", precision, "cpu"))
            else:
                missing[row] = _variant_reason(spec.bundle_dir, precision)
        elif row == "aoti":
            if bundle.manifest.get("aoti"):
                runs.append((row, spec.bundle_dir, "aoti", None, bundle.manifest["aoti"].get("device", "cpu")))
            else:
                missing[row] = "the bundle has no AOTInductor packages (built without --aoti)"
        elif row in reasons:
            missing[row] = reasons[row]
        elif row.startswith("torch-cuda-"):
            runs.append((row, spec.run_dir, "torch", row.rsplit("-", 1)[1], "cuda"))
        elif row in ("onnxruntime-cuda", "onnxruntime-tensorrt"):
            if "fp16" in bundle.variants or "fp32" in bundle.variants:
                runs.append((row, spec.bundle_dir, "onnxruntime", "fp16" if "fp16" in bundle.variants else "fp32",
                             row.split("-")[1]))
        elif row == "tensorrt":
            if bundle.manifest.get("tensorrt"):
                runs.append((row, spec.bundle_dir, "tensorrt", None, "cuda"))
            else:
                missing[row] = "the bundle has no TensorRT engines (built where TensorRT was missing)"
    return runs, missing


def _variant_reason(bundle_dir: Path, precision: str) -> str:
    path = bundle_dir / "parity.json"
    if path.is_file():
        result = json.loads(path.read_text()).get("variants", {}).get(precision)
        if result:
            return f"the export's parity gate dropped the {precision} graphs ({result.get('status')})"
    return f"the bundle has no {precision} graphs"


def int8_facts(bundle_dir: Path | None) -> tuple[list[str], object]:
    """(graphs the bundle's int8 variant quantises, its recipe as ``export.quantize.Int8Options``)."""
    from deramos_rt.bundle import load_bundle
    from export.quantize import DEFAULT_INT8, Int8Options

    if bundle_dir is None:
        return [], DEFAULT_INT8
    variants = load_bundle(bundle_dir, verify=False).variants
    int8, fp32 = variants.get("int8"), variants.get("fp32")
    if not int8 or not fp32:
        return [], DEFAULT_INT8
    graphs = [g for g in ("audio", "text", "ta") if int8["files"][g] != fp32["files"][g]]
    choice = (int8.get("quantisation") or {}).get("choice")
    try:
        return graphs, Int8Options(**choice) if isinstance(choice, dict) else DEFAULT_INT8
    except TypeError:  # a recipe written by another version: measure with the default
        return graphs, DEFAULT_INT8


# ---------------------------------------------------------------------------------------------- per model

def section_load(args, before, mark) -> dict:
    """The load verdict of one section, judged from the load at the report's start (see ``load_since_start``)."""
    return load_since_start(args.start_load, before, args.monitor.summary(mark), "the report's start")


def model_section(spec: ModelSpec, args, results: dict, save) -> None:
    """Every measurement of one model, saved into ``results['models'][spec.name]`` as it goes."""
    section = results["models"].setdefault(spec.name, {"title": spec.title, "rows": [], "unavailable": {}})
    section["notes"] = spec.notes
    before, mark = os.getloadavg(), args.monitor.mark()
    protocol = _protocol(spec)
    clips_dir = Path(args.work) / "clips" / f"{protocol.clip_seconds:g}s"
    items = items_for(write_clips(clips_dir, spec.clips, protocol.clip_seconds))
    section["clips"] = {"count": len(items), "files": f"{protocol.clip_seconds:g} s WAV, 44.1 kHz stereo 16-bit "
                        f"(resampled to {protocol.sample_rate} Hz)", "distinct_prompts": len({p for _, p in items})}
    cap = max(spec.batch_sizes) if spec.batch_sizes else 10**6
    # A model with its own cap (CLAP, MuQ: slow per clip) is also measured at the cap itself.
    sizes = sorted({b for b in args.batch_sizes if b <= cap} | ({cap} if spec.batch_sizes else set())) or [1]
    e2e_batch = max((b for b in sizes if b <= len(items)), default=1)
    section.update(e2e_batch_size=e2e_batch, batch_sizes=sizes, repeats=args.repeats)
    section["int8_graphs"], int8_options = int8_facts(spec.bundle_dir)

    _step(section, "flops", lambda: _flops(spec, section, e2e_batch, len(items) / section["clips"]["distinct_prompts"]))
    save()
    runs, missing = row_plan(spec, args.backends)
    section["unavailable"].update(missing)
    waves = _waves(items, protocol)
    _rows(spec, section, runs, items, waves, e2e_batch, protocol, args, save, lambda: _gemm(section, args, int8_options))
    if spec.sweep:
        _latencies(spec, section, runs, sizes, waves, items[0][1], args, save)
    if not args.no_breakdown:
        batch = e2e_batch if spec.sweep else 1
        log(f"{spec.name}: per-stage breakdown (torch eager fp32, batch {batch}, one run)")
        _step(section, "breakdown", lambda: section.__setitem__(
            "breakdown", measure.stage_breakdown(spec.run_dir, items, batch)))
    _parity_all(section)
    _limits(section)
    section["load"] = section_load(args, before, mark)
    save()


def _protocol(spec: ModelSpec):
    if spec.bundle_dir is not None:
        from deramos_rt.bundle import load_bundle

        return load_bundle(spec.bundle_dir, verify=False).protocol
    from training.checkpoint import load_run

    return load_run(spec.run_dir)[0].audio_protocol


def _rows(spec, section, runs, items, waves, batch, protocol, args, save, gemm_rates) -> None:
    """The reference, every backend row, the isolated decode stage and the GEMM rates (``gemm_rates()``),
    interleaved ``args.repeats`` times: rows by their medians, GEMM rates by their best round."""
    from benchmarks import gemm

    tasks = {}
    if "reference" in args.backends:
        tasks["reference"] = lambda: measure.reference_row(spec.run_dir, items)
    for name, source, backend, precision, device in runs:
        tasks[name] = (lambda s=source, b=backend, p=precision, d=device, n=name:
                       measure.scorer_row(n, s, b, p, batch, items, waves, device=d))
    tasks["decode"] = lambda: measure.decode_cost(items, protocol)
    tasks["gemm"] = gemm_rates
    log(f"{spec.name}: {', '.join(tasks)} on {len(items)} clips (rows at batch {batch}), {args.repeats} interleaved "
        "rounds")

    def progress(name, task):
        def run():
            row = task()
            if name not in ("decode", "gemm"):
                _progress(spec.name, row)
            save()
            return row
        return guarded(run, log, f"{spec.name}: {name}")

    measured = interleave({n: progress(n, t) for n, t in tasks.items()}, args.repeats)
    section["decode"] = summarise(measured.pop("decode"))
    rates = measured.pop("gemm")
    if "error" in rates[0]:
        section.setdefault("errors", {})["gemm"] = rates[0]["error"]
    else:
        section["gemm"] = gemm.best_of(rates)
        log(f"GEMM best over {len(rates)} rounds: {section['gemm']['best']}")
    for name, repeats in measured.items():
        row = summarise(repeats)
        if "error" in row:
            section["unavailable"][name] = f"failed: {row['error']}"
            continue
        section["rows"].append(_strip(row, repeats, section))


def _strip(row: dict, repeats: list[dict], section: dict) -> dict:
    """Keep per-clip scores in the section (for parity), note how much they moved between repeats (they
    should not), and round the row's numbers."""
    scores = row.pop("scores")
    section.setdefault("scores", {})[row["name"]] = scores
    first = {k: np.asarray(scores[k], dtype=float) for k in ("mi", "ta")}
    moved = [np.nanmax(np.abs(np.asarray(r["scores"][k], dtype=float) - first[k]), initial=0.0)
             for r in repeats if "scores" in r for k in first]
    row["scores_moved_between_repeats"] = float(max(moved, default=0.0))
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def _progress(model: str, row: dict | None) -> None:
    if row and "error" not in row:
        log(f"{model}: {row['name']}: {row['e2e_clips_per_s']:.3f} clips/s end to end, "
            f"{row['model_clips_per_s']:.3f} model only, peak RSS {row['peak_rss_mb']:.0f} MB")


def _latencies(spec, section, runs, sizes, waves, prompt, args, save) -> None:
    """Model-only latency per (row, batch size), interleaved ``args.repeats`` times, medians."""
    tasks = {}
    for name, source, backend, precision, device in runs:
        if name in {r["name"] for r in section["rows"]}:
            for batch in sizes:
                tasks[(name, batch)] = guarded(
                    lambda s=source, b=backend, p=precision, d=device, n=batch:
                    measure.batch_latencies(s, b, p, [n], waves, prompt, min_calls=3, device=d)[str(n)],
                    log, f"{spec.name}: {name} latency at batch {batch}")
    if not tasks:
        return
    log(f"{spec.name}: latency at batch sizes {sizes} for {len(runs)} rows, {args.repeats} interleaved rounds")
    measured = interleave(tasks, args.repeats)
    by_name = {r["name"]: r for r in section["rows"]}
    for (name, batch), repeats in measured.items():
        entry = summarise(repeats)
        if "error" not in entry:
            by_name[name].setdefault("latency", {})[str(batch)] = entry
    save()


def _step(section: dict, name: str, fn) -> None:
    try:
        fn()
    except Exception as exc:  # one failed measurement must not lose the others
        section.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        log(f"{name} FAILED: {exc}")
        traceback.print_exc()


def _waves(items, protocol) -> np.ndarray:
    from deramos_rt.audio import load_clip

    return np.stack([load_clip(p, protocol) for p, _ in items])


def _flops(spec: ModelSpec, section: dict, batch: int, clips_per_prompt: float) -> None:
    from benchmarks import flops
    from benchmarks.models import PROMPTS
    from training.checkpoint import load_run
    from training.model import build_tokenizer
    from training.split import split_model

    log(f"{spec.name}: counting FLOPs (FlopCounterMode, one clip, one prompt)")
    model, _ = load_run(spec.run_dir)
    parts = split_model(model)
    counted = flops.model_flops(*parts, build_tokenizer(model), model.audio_protocol.num_samples, PROMPTS[0])
    per = flops.per_clip(counted, clips_per_prompt)
    section["flops"] = {"per_clip": per, "tokens_in_prompt": counted["tokens"], "clips_per_prompt": clips_per_prompt,
                        "by_part": {k: {"gflop": counted[k]["flops"] / 1e9,
                                        "quantisable_gflop": counted[k]["quantisable_flops"] / 1e9,
                                        "by_op_gflop": {op: v / 1e9 for op, v in counted[k]["by_op"].items()}}
                                    for k in ("audio", "text", "ta")},
                        "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    shapes = flops.shapes_at_batch(counted["audio"]["shapes"], batch)
    from benchmarks.gemm import dominant_shapes

    section["gemm_shapes"] = [list(s) for s in dominant_shapes(shapes, 2)]
    log(f"{spec.name}: {per['total'] / 1e9:.2f} GFLOP per clip ({per['quantisable'] / per['total']:.0%} in weight "
        f"products); GEMM shapes {section['gemm_shapes']}")


def _gemm(section: dict, args, int8_options) -> dict:
    """Matrix-product rates at the model's dominant shapes, per library and precision (one round)."""
    from benchmarks import gemm

    shapes = [tuple(s) for s in section.get("gemm_shapes", [])] or [(1000, 768, 3072)]
    log(f"GEMM rates at {shapes} (torch fp32, ONNX Runtime fp32, ONNX Runtime int8 recipe {int8_options.label})")
    return gemm.measure_cpu(shapes, min_seconds=args.gemm_seconds, int8_options=int8_options)


def _parity_all(section: dict) -> None:
    scores = section.get("scores", {})
    reference = scores.get("reference") or scores.get("torch-fp32")
    if reference is None:
        return
    for row in section["rows"]:
        if row["name"] in scores:
            row["parity"] = measure.parity(reference, scores[row["name"]])


def _limits(section: dict) -> None:
    """Each row's own FLOP-bound limit and its CPU limit (issue 21), measured in this run."""
    for row in section["rows"]:
        limit = judge.row_limit(row, section)
        row["limit_clips_per_s"] = None if limit is None else round(limit, 4)
        row["cpu_limit"] = judge.cpu_limit(row, section)


# ------------------------------------------------------------------------------------------ other sections

def whole_section(args, results: dict, save) -> None:
    """The README's job against the research protocol, as separate processes (the README's figure)."""
    from benchmarks.models import DEFAULT_RUN, default_bundle
    from benchmarks.whole import whole_process

    bundle = args.scaling_spec.bundle_dir
    log(f"whole process: deramos-rt score vs the research protocol on {args.whole_clips} files, {args.repeats} "
        "interleaved rounds")
    mark, before = args.monitor.mark(), os.getloadavg()
    # The user's cached built-in bundle is what `deramos-rt score` finds by itself: pass no --bundle then.
    section = whole_process(DEFAULT_RUN, None if bundle == default_bundle() else bundle, args.work, args.whole_clips,
                            args.repeats, log)
    section["load"] = section_load(args, before, mark)
    results["whole_process"] = section
    save()


def startup_section(args, results: dict, save) -> None:
    """Import time and time to the first score in a fresh interpreter, ``args.repeats`` times (medians)."""
    clip = write_clips(args.work / "clips" / "10s", 1, 10.0)[0]
    runs = [measure.startup(args.scaling_spec.bundle_dir, "onnxruntime", str(clip)) for _ in range(args.repeats)]
    results["startup"] = summarise(runs)
    log(f"start-up: {results['startup']}")
    save()


def scaling_section(args, results: dict, save) -> None:
    """End-to-end time and peak memory for growing clip counts with the default model's bundle (each point
    once: it shows how time and memory grow, not a speed to compare)."""
    from benchmarks.models import DEFAULT_RUN, PROMPTS
    from deramos_rt.bundle import load_bundle

    spec = args.scaling_spec
    bundle = load_bundle(spec.bundle_dir, verify=False)
    protocol = bundle.protocol
    distinct = min(max(args.scaling), 1000)
    paths = write_clips(Path(args.work) / "clips" / "scaling-2s-22k-mono", distinct, 2.0, rate=22050, channels=1)
    precision = "int8" if "int8" in bundle.variants else "fp32"
    section = results.setdefault("scaling", {
        "what": (f"default model ({DEFAULT_RUN.name}) bundle, onnxruntime {precision}, batch {args.scaling_batch}; "
                 f"{distinct} distinct 2 s mono 22.05 kHz WAV files cycled (each is decoded, resampled to "
                 f"{protocol.sample_rate} Hz and zero-padded to {protocol.clip_seconds:g} s as the protocol says); "
                 "8 distinct prompts; results streamed (iter_scores + per-system tally), not kept; each point once"),
        "points": []})
    for count in args.scaling:
        items = [(str(paths[i % distinct]), PROMPTS[i % len(PROMPTS)]) for i in range(count)]
        log(f"scaling: {count} clips")
        try:
            point = measure.scaling_point(spec.bundle_dir, "onnxruntime", precision, args.scaling_batch, items)
        except Exception as exc:
            section.setdefault("errors", []).append(f"{count}: {exc!r}")
            save()
            continue
        section["points"].append(point)
        log(f"scaling: {count} clips in {point['seconds']:.1f} s = {point['clips_per_s']:.1f} clips/s, "
            f"peak RSS {point['peak_rss_mb']:.0f} MB")
        save()


def decode_section(args, results: dict, save) -> None:
    """Decode-only clips/s by worker count (issue 21's table), both resamplers and the native hand-over."""
    from benchmarks.decode_scaling import decode_table, environment, write_flac_clips

    files = {s: write_flac_clips(args.work / "decode" / f"{int(s)}s", args.decode_clips, s) for s in (10.0, 30.0)}
    log(f"decode scaling: {args.decode_clips} files of 10 s and 30 s (44.1 kHz stereo FLAC), best of {args.repeats}")
    mark, before = args.monitor.mark(), os.getloadavg()
    rows = decode_table(files, repeats=args.repeats)
    load = section_load(args, before, mark)
    for row in rows if load["busy"] else ():  # a busy machine's scaling says nothing about the code
        row["target_met_if_quiet"], row["target_met"] = row["target_met"], None
    results["decode_scaling"] = {"rows": rows, "environment": environment(), "load": load}
    save()


# Sections after the models, in order: (results key, function, whether this run wants it). A new section is
# one entry here; the built-in model's sections need its bundle (args.scaling_spec), decoding needs none.
SECTIONS = (
    ("whole_process", whole_section, lambda args: args.whole_clips > 0 and args.scaling_spec is not None),
    ("decode_scaling", decode_section, lambda args: args.decode_clips > 0),
    ("startup", startup_section, lambda args: not args.no_startup and args.scaling_spec is not None),
    ("scaling", scaling_section, lambda args: bool(args.scaling) and args.scaling_spec is not None),
)


# ------------------------------------------------------------------------------------------------ main

def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--models", default=DEFAULT_MODELS,
                   help=f"comma list of default, clap-roberta, muq (= muq-roberta) (default {DEFAULT_MODELS}; muq: "
                        "2.5 GB bundle, ~40 min to build once, ~5 min per repeat)")
    p.add_argument("--bundle", nargs="*", default=[], type=Path,
                   help="extra bundles to measure (their run directory is read from the manifest)")
    p.add_argument("--backends", default=",".join(ALL_ROWS), help=f"rows, from: {', '.join(ALL_ROWS)}")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds per row (default 3; fewer is a smoke run)")
    p.add_argument("--batch-sizes", default=None, help="comma list (default 1,8,32; --quick 1,8)")
    p.add_argument("--clips", type=int, default=None, help="clips per model (MuQ-large: at most its default)")
    p.add_argument("--whole-clips", type=int, default=None,
                   help="files in the whole-process row (default 240; --quick 48; 0 = skip)")
    p.add_argument("--scaling", default=None, help="clip counts (default 100,1000; --quick 100; 0 = none)")
    p.add_argument("--scaling-batch", type=int, default=16)
    p.add_argument("--decode-clips", type=int, default=None,
                   help="files per clip length for the decode-only scaling table (default 32, --quick 8; 0 skips it)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-startup", action="store_true")
    p.add_argument("--no-build", action="store_true", help="do not build missing bundles (their rows are listed)")
    p.add_argument("--wait-build", type=float, default=0.0,
                   help="seconds to wait for another process's build of a missing bundle")
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-stage breakdowns")
    p.add_argument("--gemm-seconds", type=float, default=0.15)
    p.add_argument("--work", type=Path, default=REPO / ".cache" / "bench")
    args = p.parse_args(argv)
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("1,8" if args.quick else "1,8,32")).split(",")]
    scaling_text = args.scaling or ("100" if args.quick else "100,1000")
    args.scaling = [int(c) for c in scaling_text.split(",") if int(c) > 0]
    args.whole_clips = args.whole_clips if args.whole_clips is not None else (48 if args.quick else 240)
    args.decode_clips = args.decode_clips if args.decode_clips is not None else (8 if args.quick else 32)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.models = [{"muq": "muq-roberta"}.get(m.strip(), m.strip()) for m in args.models.split(",") if m.strip()]
    unknown = [b for b in args.backends if b not in ALL_ROWS]
    if unknown:
        p.error(f"unknown backend row(s) {', '.join(unknown)}; choose from {', '.join(ALL_ROWS)}")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    for path in (args.out, args.work):
        if path.exists() and not path.is_dir():
            p.error(f"{path} is a file, not a folder (reports and the work folder are folders)")
    from deramos_rt.bundle import is_bundle

    for bundle in args.bundle:
        if not is_bundle(bundle):
            p.error(f"--bundle {bundle} is not a deramos_rt bundle (build one with python -m export.build_engine)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {"command": "python -m benchmarks.report " + " ".join(sys.argv[1:] if argv is None else argv),
               "machine": machine(), "models": {}, "quick": args.quick, "repeats": args.repeats}
    path = args.out / "results.json"

    def save():
        results["elapsed_s"] = round(time.perf_counter() - started, 1)
        path.write_text(json.dumps(results, indent=1, default=str) + "\n")

    save()
    m = results["machine"]
    log(f"CPU {m['cpu_key']}; {m['cores']} cores; load {m['load_average']}")
    args.start_load = os.getloadavg()
    with LoadMonitor() as monitor:
        args.monitor = monitor
        _models(args, results, save)
        for key, section, wanted in SECTIONS:
            if wanted(args):
                try:
                    section(args, results, save)
                except Exception as exc:  # one failed section must not lose the others
                    results.setdefault("errors", {})[key] = f"{type(exc).__name__}: {exc}"
                    log(f"{key} FAILED: {exc}")
                    traceback.print_exc()
        results["load_during"] = monitor.summary()
    return _finish(args, results, save)


def _models(args, results: dict, save) -> None:
    specs = model_specs(args.models, args.clips, args.quick)
    specs += [_bundle_spec(b, args) for b in args.bundle]
    args.scaling_spec = None
    for spec in specs:
        try:
            prepare(spec, args.work, log=log, build=not args.no_build, wait_s=args.wait_build)
        except Exception as exc:
            results["models"][spec.name] = {"title": spec.title, "error": f"could not prepare: {exc!r}", "rows": []}
            log(f"{spec.name}: could not prepare: {exc}")
            save()
            continue
        if spec.name == "default" and spec.bundle_dir is not None:
            args.scaling_spec = spec
        model_section(spec, args, results, save)
        results["models"][spec.name]["targets"] = judge.targets(results["models"][spec.name])
        save()


def _finish(args, results: dict, save) -> int:
    """Load and thread pools at the end, the sanity check, figures and report.md; 1 when sanity failed."""
    results["load_average_end"] = os.getloadavg()
    results["machine"]["threadpools"] = threadpools()  # after the rows: every library that ran is loaded
    results["sanity"] = judge.sanity(results)
    save()
    from benchmarks import plots

    results["plots"] = plots.write_all(results, args.out)
    save()
    (args.out / "report.md").write_text(render(results))
    log(f"wrote {args.out / 'report.md'} in {results['elapsed_s']:.0f} s")
    if results["sanity"]["status"] == "failed":
        log("SANITY CHECK FAILED (a row ran faster than its own limit): " + "; ".join(results["sanity"]["violations"]))
        return 1
    if results.get("errors"):  # an incomplete report is not a report: say so in the exit status
        log("SECTIONS FAILED: " + "; ".join(f"{k}: {v}" for k, v in results["errors"].items()))
        return 1
    return 0


def _bundle_spec(bundle: Path, args) -> ModelSpec:
    from deramos_rt.bundle import load_bundle

    manifest = load_bundle(bundle).manifest
    run = Path(manifest.get("source", {}).get("run", ""))
    spec = ModelSpec(bundle.name, f"bundle {bundle}", None, args.clips or 16)
    spec.run_dir, spec.bundle_dir = run, bundle
    return spec


# ------------------------------------------------------------------------------------------------ markdown

def render(results: dict) -> str:
    """report.md from results.json."""
    from benchmarks.report_md import render_markdown

    return render_markdown(results)


if __name__ == "__main__":
    sys.exit(main())
