"""report.md of a benchmark run, rendered from its results.json (so a report can be re-rendered later:
``python -m benchmarks.report_md DIR/results.json > DIR/report.md``)."""

from __future__ import annotations

import json
import sys


def _f(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def machine_lines(m: dict) -> list[str]:
    cpu = m.get("cpu", {})
    features = ", ".join(k for k, v in cpu.items() if k != "model" and v) or "none of avx2/avx512/vnni/amx"
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v)
    return [f"- CPU: {cpu.get('model')} ({features}); {m.get('cores')} cores; load average at start "
            f"{', '.join(f'{x:.1f}' for x in m.get('load_average', []))}",
            f"- {m.get('platform')}; {versions}", f"- date: {m.get('date')}"]


def model_lines(name: str, model: dict) -> list[str]:
    out = [f"## {name}: {model.get('title')}", ""]
    if model.get("error"):
        return out + [f"Not measured: {model['error']}", ""]
    clips = model.get("clips", {})
    out.append(f"{clips.get('count')} clips ({clips.get('files')}), {clips.get('distinct_prompts')} distinct prompts; "
               f"end-to-end rows at batch {model.get('e2e_batch_size')}.")
    for note in model.get("notes", []):
        out.append(f"- {note}")
    fl = model.get("flops")
    if fl:
        per = fl["per_clip"]
        parts = fl.get("by_part")
        detail = (f" (audio part {parts['audio']['gflop']:.3g}, TA {parts['ta']['gflop']:.3g}, text "
                  f"{parts['text']['gflop']:.3g} per prompt of {fl['tokens_in_prompt']} tokens, amortised over "
                  f"{fl['clips_per_prompt']:.3g} clips)") if parts else ""
        out.append(f"- {_f(fl.get('params_M'))} M parameters; counted FLOPs per clip {per['total'] / 1e9:.3g} G"
                   f"{detail}; {per['quantisable'] / per['total']:.0%} in weight products (int8 in the int8 graphs)")
    gemm = model.get("gemm")
    if gemm and gemm.get("shapes"):
        shapes = "; ".join(f"({r['m']}x{r['k']})x({r['k']}x{r['n']}): torch {r['torch_fp32']}, ORT fp32 "
                           f"{r.get('ort_fp32')}, ORT int8 {r.get('ort_int8')}" for r in gemm["shapes"])
        out.append(f"- measured GEMM rates (GFLOP/s; GOP/s for int8) at this model's shapes: {shapes}")
    out += ["", "| row | backend | prec | batch | e2e clips/s | model clips/s | x reference | p50/p95/p99 ms (batch) "
            "| peak RSS MB | max abs dMOS MI/TA | SRCC MI/TA | GEMM fraction |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = model.get("rows", [])
    ref = next((r for r in rows if r["name"] == "reference"), None)
    per = (fl or {}).get("per_clip")
    best = (gemm or {}).get("best", {})
    for r in rows:
        lat = r.get("latency", {}).get(str(r["batch_size"])) or {}
        p = r.get("parity", {})
        ratio = r["e2e_clips_per_s"] / ref["e2e_clips_per_s"] if ref else None
        out.append(f"| {r['name']} | {r['backend']} | {r['precision']} | {r['batch_size']} | {_f(r['e2e_clips_per_s'])} "
                   f"| {_f(r['model_clips_per_s'])} | {_f(ratio)} | {_f(lat.get('p50_ms'))}/{_f(lat.get('p95_ms'))}/"
                   f"{_f(lat.get('p99_ms'))} | {_f(r['peak_rss_mb'], 4)} | {_f(p.get('mi_max_abs'), 2)}/"
                   f"{_f(p.get('ta_max_abs'), 2)} | {_f(p.get('mi_srcc'), 4)}/{_f(p.get('ta_srcc'), 4)} "
                   f"| {_gemm_fraction(r, per, best)} |")
    for row, reason in model.get("unavailable", {}).items():
        out.append(f"| {row} | not available | | | | | | | | | | {reason} |")
    lat_rows = [r for r in rows if len(r.get("latency", {})) > 1]
    if lat_rows:
        sizes = model.get("batch_sizes", [])
        out += ["", "Model-only clips/s and p50 / p99 latency (ms) by batch size:", "",
                "| row | " + " | ".join(f"batch {b}" for b in sizes) + " |", "|---|" + "---|" * len(sizes)]
        for r in lat_rows:
            cells = []
            for b in sizes:
                v = r["latency"].get(str(b))
                cells.append(f"{_f(v['clips_per_s'])} ({_f(v['p50_ms'])} / {_f(v['p99_ms'])})" if v else "-")
            out.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    if model.get("breakdown"):
        b = model["breakdown"]
        out += ["", "Where the time goes (torch eager fp32, seconds per clip; text per prompt): "
                + ", ".join(f"{k} {v * 1000:.3g} ms" for k, v in b.items())]
        waits = [(r["name"], r.get("waits_seconds_in_e2e"), r["e2e_seconds"]) for r in rows
                 if r.get("waits_seconds_in_e2e") is not None]
        if waits:
            out.append("Queue waits + Python overhead inside the end-to-end runs (time not spent in the graphs): "
                       + ", ".join(f"{n} {w:.3g} s of {t:.3g} s" for n, w, t in waits))
    if model.get("errors"):
        out += ["", "Measurement errors: " + "; ".join(f"{k}: {v}" for k, v in model["errors"].items())]
    out += ["", "Targets:", ""]
    for t in model.get("targets", []):
        out.append(f"- **{t['status']}**: {t['target']} ({t['detail']})")
    return out + [""]


def _gemm_fraction(row: dict, per: dict | None, best: dict) -> str:
    """Achieved FLOP rate (model only) over the measured GEMM rate of the row's library and precision."""
    if not per:
        return "-"
    key = {"torch": "torch_fp32", "onnxruntime": f"ort_{row['precision']}"}.get(row["backend"].split()[0])
    if row["name"] == "reference":
        key = "torch_fp32"
    rate = best.get(key)
    if not rate:
        return "-"
    achieved = per["total"] * row["model_clips_per_s"] / 1e9
    return f"{achieved / rate:.0%} of {rate:.0f}"


def render_markdown(results: dict) -> str:
    out = ["# deramos_rt benchmark report", "", f"Command: `{results.get('command')}` "
           f"({'quick' if results.get('quick') else 'full'} run, {results.get('elapsed_s', 0):.0f} s)", ""]
    out += machine_lines(results.get("machine", {}))
    if results.get("load_average_end"):
        out.append(f"- load average at the end {', '.join(f'{x:.1f}' for x in results['load_average_end'])} (other "
                   "jobs shared these cores: compare rows inside this run only)")
    out.append("")
    out += ["Every row scores the same files with the same prompts. *reference* is the research code's way of "
            "scoring (torch eager fp32, batch 1, each file decoded and resampled on the main thread before its "
            "forward, the prompt re-encoded per clip); *x reference* is end-to-end clips/s over the reference's, "
            "measured in this run. *e2e* = from files on disk (decode + resample + inference, Scorer with decode "
            "threads); *model only* = the audio and TA graphs on prepared waveforms with prompts cached. Parity is "
            "against the reference's scores. GEMM fraction = counted FLOPs per clip x model-only clips/s over the "
            "rate of a matrix product at the model's dominant shape, in the row's library, measured in this run.", ""]
    for name, model in results.get("models", {}).items():
        out += model_lines(name, model)
    if results.get("startup"):
        s = results["startup"]
        out += ["## Start-up", "", f"`import deramos_rt` {_f(s.get('import_s'))} s; opening the default bundle "
                f"(onnxruntime) {_f(s.get('open_s'))} s; first score {_f(s.get('first_score_s'))} s; total from "
                f"import {_f(s.get('total_s'))} s ({_f(s.get('process_wall_s'))} s with the interpreter). "
                + (f"Error: {s['error']}" if s.get("error") else ""), ""]
    sc = results.get("scaling")
    if sc:
        out += ["## Scaling in clips", "", sc["what"], "", "| clips | seconds | clips/s | peak RSS MB | failed |",
                "|---|---|---|---|---|"]
        for p in sc.get("points", []):
            out.append(f"| {p['clips']} | {p['seconds']} | {p['clips_per_s']} | {p['peak_rss_mb']} | {p['failed']} |")
        if sc.get("errors"):
            out.append(f"\nErrors: {sc['errors']}")
        out.append("")
    for png in results.get("plots", []):
        if png.endswith(".png"):
            out.append(f"![{png}]({png})")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render_markdown(json.loads(open(sys.argv[1]).read())), end="")
