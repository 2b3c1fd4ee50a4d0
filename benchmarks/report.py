"""Benchmark report: every available backend in one run, on the same clips, as ratios to the research code.

``python -m benchmarks.report --out DIR [--models default,clap-roberta,muq-roberta] [--bundle DIR ...]
[--backends ...] [--batch-sizes 1,8,32] [--clips N] [--scaling 100,1000,10000] [--quick]``

Writes DIR/results.json (after every measurement), DIR/report.md and DIR/*.png. One progress line per
measurement. ``--quick`` measures fewer clips per model (default 24, CLAP 8, MuQ 2), batch sizes up to 8, and
scaling at 100 clips only. The default scaling points are 100 and 1,000 clips; ``--scaling 100,1000,10000`` adds
10,000 (about 20 minutes more on 2 cores). Built models and bundles are cached in ``--work`` (.cache/bench).
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

from benchmarks import measure
from benchmarks.models import ModelSpec, items_for, model_specs, prepare, write_clips

REPO = Path(__file__).resolve().parents[1]
CPU_ROWS = ("torch-fp32", "onnxruntime-fp32", "onnxruntime-int8", "aoti")
GPU_ROWS = ("torch-cuda-fp32", "torch-cuda-bf16", "torch-cuda-fp16", "onnxruntime-cuda", "onnxruntime-tensorrt",
            "tensorrt")
ALL_ROWS = ("reference", *CPU_ROWS, *GPU_ROWS)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------------ machine

def machine() -> dict:
    """CPU model and SIMD features, cores, load, library versions."""
    from export.quantize import cpu_features

    versions = {"python": platform.python_version()}
    for name in ("torch", "onnxruntime", "numpy", "transformers", "soundfile", "soxr"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # absent or broken: recorded as missing
            versions[name] = None
    return {"cpu": cpu_features(), "cores": os.cpu_count(), "load_average": os.getloadavg(),
            "platform": platform.platform(), "versions": versions,
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
    """(row name, source, backend, precision) to run and {row: reason} for the rows that cannot run."""
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


# ---------------------------------------------------------------------------------------------- per model

def model_section(spec: ModelSpec, args, results: dict, save) -> None:
    """Every measurement of one model, saved into ``results['models'][spec.name]`` as it goes."""
    from deramos_rt.bundle import load_bundle

    section = results["models"].setdefault(spec.name, {"title": spec.title, "rows": [], "unavailable": {}})
    section["notes"] = spec.notes
    if spec.bundle_dir is not None:
        protocol = load_bundle(spec.bundle_dir, verify=False).protocol
    else:
        from training.checkpoint import load_run

        protocol = load_run(spec.run_dir)[0].audio_protocol
    clips_dir = Path(args.work) / "clips" / f"{protocol.clip_seconds:g}s"
    paths = write_clips(clips_dir, spec.clips, protocol.clip_seconds)
    items = items_for(paths)
    section["clips"] = {"count": len(items), "files": f"{protocol.clip_seconds:g} s WAV, 44.1 kHz stereo 16-bit "
                        f"(resampled to {protocol.sample_rate} Hz)", "distinct_prompts": len({p for _, p in items})}
    cap = max(spec.batch_sizes) if spec.batch_sizes else 10**6
    # A model with its own cap (CLAP, MuQ: slow per clip) is also measured at the cap itself.
    sizes = sorted({b for b in args.batch_sizes if b <= cap} | ({cap} if spec.batch_sizes else set())) or [1]
    e2e_batch = max(b for b in sizes if b <= len(items)) if any(b <= len(items) for b in sizes) else 1
    section["e2e_batch_size"] = e2e_batch
    section["batch_sizes"] = sizes

    _step(section, "flops", lambda: _flops(spec, section, e2e_batch, len(items) / section["clips"]["distinct_prompts"]))
    save()
    _step(section, "gemm", lambda: _gemm(section, args))
    save()
    if "reference" in args.backends:
        log(f"{spec.name}: reference (research protocol, batch 1) on {len(items)} clips")
        _step(section, "reference", lambda: section["rows"].append(_strip(measure.reference_row(spec.run_dir, items),
                                                                           section)))
        _progress(spec.name, section["rows"][-1] if section["rows"] else None)
        save()
    runs, missing = row_plan(spec, args.backends)
    section["unavailable"].update(missing)
    waves = _waves(items, protocol)
    for name, source, backend, precision, device in runs:
        log(f"{spec.name}: {name} batch {e2e_batch} on {len(items)} clips (end to end, then model only)")
        try:
            row = measure.scorer_row(name, source, backend, precision, e2e_batch, items, waves, device=device)
        except Exception as exc:  # a backend that fails is listed with its error, never dropped
            section["unavailable"][name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            log(f"{spec.name}: {name} FAILED: {exc}")
            save()
            continue
        section["rows"].append(_strip(row, section))
        _progress(spec.name, row)
        save()
        if not spec.sweep:
            continue
        log(f"{spec.name}: {name} latency at batch sizes {sizes}")
        try:
            row["latency"] = measure.batch_latencies(source, backend, precision, sizes, waves, items[0][1],
                                                     min_calls=3, device=device)
            section["rows"][-1]["latency"] = row["latency"]
        except Exception as exc:
            section["rows"][-1]["latency_error"] = repr(exc)
        save()
    if not args.no_breakdown:
        batch = e2e_batch if spec.sweep else 1
        log(f"{spec.name}: per-stage breakdown (torch eager fp32, batch {batch})")
        _step(section, "breakdown", lambda: section.__setitem__(
            "breakdown", measure.stage_breakdown(spec.run_dir, items, batch)))
        save()
    _parity_all(section)
    save()


def _step(section: dict, name: str, fn) -> None:
    try:
        fn()
    except Exception as exc:  # one failed measurement must not lose the others
        section.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        log(f"{name} FAILED: {exc}")
        traceback.print_exc()


def _strip(row: dict, section: dict) -> dict:
    """Keep per-clip scores in the section (for parity) but round the row's numbers."""
    section.setdefault("scores", {})[row["name"]] = row.pop("scores")
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def _progress(model: str, row: dict | None) -> None:
    if row:
        log(f"{model}: {row['name']}: {row['e2e_clips_per_s']:.3f} clips/s end to end, "
            f"{row['model_clips_per_s']:.3f} model only, peak RSS {row['peak_rss_mb']:.0f} MB")


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


def _gemm(section: dict, args) -> None:
    from benchmarks import gemm

    shapes = [tuple(s) for s in section.get("gemm_shapes", [])] or [(1000, 768, 3072)]
    log(f"GEMM rates at {shapes} (torch fp32, ONNX Runtime fp32 and int8)")
    section["gemm"] = gemm.measure_cpu(shapes, min_seconds=args.gemm_seconds)
    log(f"GEMM best: {section['gemm']['best']}")


def _parity_all(section: dict) -> None:
    scores = section.get("scores", {})
    reference = scores.get("reference") or scores.get("torch-fp32")
    if reference is None:
        return
    for row in section["rows"]:
        if row["name"] in scores:
            row["parity"] = measure.parity(reference, scores[row["name"]])


# ------------------------------------------------------------------------------------------------ targets

def targets(section: dict) -> list[dict]:
    """Each CPU target of the issue for one model: met / not met / not measurable, with the numbers."""
    from benchmarks.flops import bound_clips_per_s

    out = []
    rows = {r["name"]: r for r in section.get("rows", [])}
    ref = rows.get("reference")
    cpu = [r for n, r in rows.items() if n != "reference"]
    if not cpu:
        return [{"target": "any backend measured", "status": "not measurable", "detail": "no row ran"}]
    best = max(cpu, key=lambda r: r["e2e_clips_per_s"])
    gemm = section.get("gemm", {}).get("best", {})
    per = section.get("flops", {}).get("per_clip")
    if per and gemm.get("fp32"):
        int8 = gemm.get("int8") if best["precision"] == "int8" else None
        bound = bound_clips_per_s(per, gemm["fp32"], int8)
        ratio = bound / best["e2e_clips_per_s"]
        out.append(_target("FLOP-bound: best end to end within 1.15x of the FLOP-bound limit", ratio <= 1.15,
                           f"best {best['name']} {best['e2e_clips_per_s']:.3g} clips/s; limit {bound:.3g} clips/s "
                           f"({per['total'] / 1e9:.3g} GFLOP/clip at {gemm['fp32']:.0f} GFLOP/s fp32"
                           + (f", quantised share at {int8:.0f} GOP/s" if int8 else "") + f"): {ratio:.2f}x"))
    hidden = best["e2e_clips_per_s"] / best["model_clips_per_s"]
    out.append(_target("decoding hidden: end to end >= 95 % of model-only", hidden >= 0.95,
                       f"{best['name']}: {best['e2e_clips_per_s']:.3g} vs {best['model_clips_per_s']:.3g} clips/s "
                       f"= {hidden:.0%}; waits {best.get('waits_seconds_in_e2e')} s of {best['e2e_seconds']:.3g} s"))
    once = all(r.get("prompts_encoded", 0) <= r.get("distinct_prompts", 0) for r in cpu)
    out.append(_target("each distinct prompt encoded once", once,
                       ", ".join(f"{r['name']}: {r.get('prompts_encoded')} of {r.get('distinct_prompts')}" for r in cpu)))
    if ref:
        need = 2.0 if section.get("title", "").startswith("MuQ") else 3.0
        ratio = best["e2e_clips_per_s"] / ref["e2e_clips_per_s"]
        detail = (f"{best['name']} {best['e2e_clips_per_s']:.3g} / reference {ref['e2e_clips_per_s']:.3g} clips/s "
                  f"= {ratio:.2f}x (need {need:g}x)")
        possible = _speedup_possible(section, ref, need)
        if ratio < need and possible:
            detail += "; " + possible
        out.append(_target(f"against the reference: >= {need:g}x", ratio >= need, detail))
    fp32, int8row = rows.get("onnxruntime-fp32"), rows.get("onnxruntime-int8")
    if fp32 and int8row and gemm.get("int8_over_fp32"):
        gain = int8row["e2e_clips_per_s"] / fp32["e2e_clips_per_s"]
        want = 1 + 0.6 * (gemm["int8_over_fp32"] - 1)
        srcc = min(v for v in (int8row.get("parity", {}).get("mi_srcc"), int8row.get("parity", {}).get("ta_srcc"))
                   if v is not None) if int8row.get("parity") else None
        ok = gain >= want and (srcc is None or srcc >= 0.99)
        out.append(_target("int8: gain over fp32 >= 60 % of the GEMM int8/fp32 ratio, SRCC >= 0.99", ok,
                           f"end-to-end gain {gain:.2f}x; GEMM ratio {gemm['int8_over_fp32']:.2f}x -> need "
                           f"{want:.2f}x; SRCC {srcc if srcc is None else round(srcc, 4)}"))
    else:
        reason = section.get("unavailable", {}).get("onnxruntime-int8", "int8 or fp32 row missing")
        out.append({"target": "int8 gain", "status": "not measurable", "detail": reason})
    return out


def _speedup_possible(section: dict, ref: dict, need: float) -> str:
    """Where the reference is already close to the FLOP bound, the needed ratio cannot be reached."""
    from benchmarks.flops import bound_clips_per_s

    per = section.get("flops", {}).get("per_clip")
    gemm = section.get("gemm", {}).get("best", {})
    if not per or not gemm.get("fp32"):
        return ""
    bound = bound_clips_per_s(per, gemm["fp32"], gemm.get("int8"))
    most = bound / ref["e2e_clips_per_s"]
    if most < need:
        return (f"impossible on this machine: the FLOP-bound limit {bound:.3g} clips/s (best measured GEMM rates) "
                f"is only {most:.2f}x the reference")
    return f"the FLOP-bound limit would allow {most:.1f}x"


def _target(name: str, ok: bool, detail: str) -> dict:
    return {"target": name, "status": "met" if ok else "not met", "detail": detail}


# ------------------------------------------------------------------------------------------------ scaling

def scaling(args, results: dict, save) -> None:
    """End-to-end time and peak memory for growing clip counts with the default model's bundle."""
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
                 "8 distinct prompts; results streamed (iter_scores + per-system tally), not kept"),
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


# ------------------------------------------------------------------------------------------------ main

def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--models", default="default,clap-roberta,muq-roberta")
    p.add_argument("--bundle", nargs="*", default=[], type=Path,
                   help="extra bundles to measure (their run directory is read from the manifest)")
    p.add_argument("--backends", default=",".join(ALL_ROWS), help=f"rows, from: {', '.join(ALL_ROWS)}")
    p.add_argument("--batch-sizes", default=None, help="comma list (default 1,8,32; --quick 1,8)")
    p.add_argument("--clips", type=int, default=None, help="clips per model (MuQ-large: at most its default)")
    p.add_argument("--scaling", default=None, help="clip counts (default 100,1000; --quick 100; 0 = none)")
    p.add_argument("--scaling-batch", type=int, default=16)
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
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if b not in ALL_ROWS]
    if unknown:
        p.error(f"unknown backend row(s) {', '.join(unknown)}; choose from {', '.join(ALL_ROWS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {"command": "python -m benchmarks.report " + " ".join(sys.argv[1:] if argv is None else argv),
               "machine": machine(), "models": {}, "quick": args.quick}
    path = args.out / "results.json"

    def save():
        results["elapsed_s"] = round(time.perf_counter() - started, 1)
        path.write_text(json.dumps(results, indent=1, default=str) + "\n")

    save()
    log(f"CPU {results['machine']['cpu']}; {results['machine']['cores']} cores; load {results['machine']['load_average']}")
    specs = model_specs([m.strip() for m in args.models.split(",") if m.strip()], args.clips, args.quick)
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
        results["models"][spec.name]["targets"] = targets(results["models"][spec.name])
        save()
    if not args.no_startup and args.scaling_spec is not None:
        log("start-up: import time and time to the first score (fresh interpreter)")
        clip = write_clips(args.work / "clips" / "10s", 1, 10.0)[0]
        results["startup"] = measure.startup(args.scaling_spec.bundle_dir, "onnxruntime", str(clip))
        log(f"start-up: {results['startup']}")
        save()
    if args.scaling and args.scaling_spec is not None:
        scaling(args, results, save)
    results["load_average_end"] = os.getloadavg()
    save()
    from benchmarks import plots

    results["plots"] = plots.write_all(results, args.out)
    save()
    (args.out / "report.md").write_text(render(results))
    log(f"wrote {args.out / 'report.md'} in {results['elapsed_s']:.0f} s")
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
