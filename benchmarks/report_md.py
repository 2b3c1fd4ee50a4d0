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


def _spread(row: dict, key: str, digits: int = 3) -> str:
    """``median (min-max)`` of a row's figure over its repeats (just the value when it did not vary)."""
    value = row.get(key)
    low_high = (row.get("range") or {}).get(key)
    if low_high is None:
        return _f(value, digits)
    return f"{_f(value, digits)} ({_f(low_high[0], digits)}-{_f(low_high[1], digits)})"


def _load(load: dict | None) -> str:
    if not load:
        return ""
    during = load.get("during") or {}
    start = load.get("load_at_start")
    start_text = f"at the report's start {', '.join(f'{x:.2f}' for x in start)}, " if start else ""
    return (f"load average {start_text}before {', '.join(f'{x:.2f}' for x in load.get('load_before', []))}, after "
            f"{', '.join(f'{x:.2f}' for x in load.get('load_after', []))} (includes this run); other processes' "
            f"runnable threads while measuring: mean {_f(during.get('others_mean'))}, max {_f(during.get('others_max'))}"
            f" -> {'BUSY: targets not judged' if load.get('busy') else 'quiet enough to judge targets'}")


def machine_lines(m: dict) -> list[str]:
    cpu = m.get("cpu", {})
    features = ", ".join(k for k, v in cpu.items() if k != "model" and v) or "none of avx2/avx512/vnni/amx"
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v)
    pools = "; ".join(f"{p.get('internal_api')} {p.get('version') or ''} ({p.get('prefix')}, {p.get('num_threads')} "
                      f"threads{', ' + p['architecture'] if p.get('architecture') else ''})"
                      for p in m.get("threadpools", []) if "error" not in p) or "not recorded"
    env = ", ".join(f"{k}={v}" for k, v in (m.get("environment") or {}).items()) or "none set"
    return [f"- CPU: {cpu.get('model')} ({features}); {m.get('cores')} cores; load average at start "
            f"{', '.join(f'{x:.1f}' for x in m.get('load_average', []))}",
            f"- thread pools that ran (threadpoolctl): {pools}; environment: {env}",
            f"- {m.get('platform')}; {versions}", f"- date: {m.get('date')}"]


def model_lines(name: str, model: dict) -> list[str]:
    out = [f"## {name}: {model.get('title')}", ""]
    if model.get("error"):
        return out + [f"Not measured: {model['error']}", ""]
    clips = model.get("clips", {})
    out.append(f"{clips.get('count')} clips ({clips.get('files')}), {clips.get('distinct_prompts')} distinct prompts; "
               f"end-to-end rows at batch {model.get('e2e_batch_size')}; every row {model.get('repeats')} times, "
               "interleaved; median (min-max).")
    if model.get("load"):
        out.append(f"- {_load(model['load'])}")
    for note in model.get("notes", []):
        out.append(f"- {note}")
    out += _flop_lines(model)
    out += ["", "| row | backend | prec | batch | e2e clips/s | model clips/s | x reference | own limit clips/s (model %) "
            "| CPU limit (e2e %) | p50/p95/p99 ms (batch) | peak RSS MB | max abs dMOS MI/TA | SRCC MI/TA |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = model.get("rows", [])
    ref = next((r for r in rows if r["name"] == "reference"), None)
    for r in rows:
        out.append(_row_line(r, ref))
    for row, reason in model.get("unavailable", {}).items():
        out.append(f"| {row} | not available | | | | | | | | | | | {reason} |")
    out += _latency_lines(model, rows)
    out += _breakdown_lines(model, rows)
    if model.get("errors"):
        out += ["", "Measurement errors: " + "; ".join(f"{k}: {v}" for k, v in model["errors"].items())]
    out += ["", "Targets:", ""]
    for t in model.get("targets", []):
        out.append(f"- **{t['status']}**: {t['target']} ({t['detail']})")
    return out + [""]


def _flop_lines(model: dict) -> list[str]:
    out = []
    fl = model.get("flops")
    if fl:
        per = fl["per_clip"]
        parts = fl.get("by_part")
        detail = (f" (audio part {parts['audio']['gflop']:.3g}, TA {parts['ta']['gflop']:.3g}, text "
                  f"{parts['text']['gflop']:.3g} per prompt of {fl['tokens_in_prompt']} tokens, amortised over "
                  f"{fl['clips_per_prompt']:.3g} clips)") if parts else ""
        out.append(f"- {_f(fl.get('params_M'))} M parameters; counted FLOPs per clip {per['total'] / 1e9:.3g} G"
                   f"{detail}; {per['quantisable'] / per['total']:.0%} in weight products; the int8 variant quantises "
                   f"{', '.join(model.get('int8_graphs') or []) or 'no graph'}")
    gemm = model.get("gemm")
    if gemm and gemm.get("shapes"):
        shapes = "; ".join(f"({r['m']}x{r['k']})x({r['k']}x{r['n']}): torch {r['torch_fp32']}, ORT fp32 "
                           f"{r.get('ort_fp32')}, ORT int8 {r.get('ort_int8')}" for r in gemm["shapes"])
        out.append(f"- measured GEMM rates (GFLOP/s; GOP/s for int8, recipe {gemm.get('int8_recipe')}, int8 kernel "
                   f"nodes checked before timing) at this model's shapes: {shapes}")
    decode = model.get("decode")
    if decode and "error" not in decode:
        out.append(f"- decode + resample alone, one thread: {_spread(decode, 'decode_s_per_clip', 3)} s and "
                   f"{_spread(decode, 'decode_core_s_per_clip', 3)} core-s per clip")
    return out


def _row_line(r: dict, ref: dict | None) -> str:
    lat = r.get("latency", {}).get(str(r["batch_size"])) or {}
    p = r.get("parity", {})
    ratio = r["e2e_clips_per_s"] / ref["e2e_clips_per_s"] if ref else None
    cpu = r.get("cpu_limit") or {}
    cpu_text = f"{_f(cpu.get('limit_clips_per_s'))} ({cpu['e2e_share']:.0%})" if cpu else "-"
    limit = r.get("limit_clips_per_s")
    # The model-only rate as a share of the row's FLOP bound: how much of its library's GEMM rate it reaches.
    limit_text = f"{_f(limit)} ({r['model_clips_per_s'] / limit:.0%})" if limit else "-"
    return (f"| {r['name']} | {r['backend']} | {r['precision']} | {r['batch_size']} | {_spread(r, 'e2e_clips_per_s')} "
            f"| {_spread(r, 'model_clips_per_s')} | {_f(ratio)} | {limit_text} | {cpu_text} "
            f"| {_f(lat.get('p50_ms'))}/{_f(lat.get('p95_ms'))}/{_f(lat.get('p99_ms'))} | {_spread(r, 'peak_rss_mb', 4)} "
            f"| {_f(p.get('mi_max_abs'), 2)}/{_f(p.get('ta_max_abs'), 2)} | {_f(p.get('mi_srcc'), 4)}/"
            f"{_f(p.get('ta_srcc'), 4)} |")


def _latency_lines(model: dict, rows: list[dict]) -> list[str]:
    lat_rows = [r for r in rows if len(r.get("latency", {})) > 1]
    if not lat_rows:
        return []
    sizes = model.get("batch_sizes", [])
    out = ["", "Model-only clips/s and p50 / p99 latency (ms) by batch size (medians of the interleaved rounds):", "",
           "| row | " + " | ".join(f"batch {b}" for b in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for r in lat_rows:
        cells = []
        for b in sizes:
            v = r["latency"].get(str(b))
            cells.append(f"{_spread(v, 'clips_per_s')} ({_f(v['p50_ms'])} / {_f(v['p99_ms'])})" if v else "-")
        out.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return out


def _breakdown_lines(model: dict, rows: list[dict]) -> list[str]:
    out = []
    if model.get("breakdown"):
        b = model["breakdown"]
        out += ["", "Where the time goes (torch eager fp32, seconds per clip; text per prompt; one run): "
                + ", ".join(f"{k} {v * 1000:.3g} ms" for k, v in b.items())]
    waits = [(r["name"], r.get("waits_seconds_in_e2e"), r["e2e_seconds"]) for r in rows
             if r.get("waits_seconds_in_e2e") is not None]
    if waits:
        out.append("Queue waits + Python overhead inside the end-to-end runs (time not spent in the graphs): "
                   + ", ".join(f"{n} {w:.3g} s of {t:.3g} s" for n, w, t in waits))
    moved = [(r["name"], r.get("scores_moved_between_repeats")) for r in rows if r.get("scores_moved_between_repeats")]
    if moved:
        out.append("Scores that changed between repeats (they should not): "
                   + ", ".join(f"{n} {v:.2g}" for n, v in moved))
    return out


def whole_lines(w: dict) -> list[str]:
    out = ["## Whole process: the README's job against the research protocol", "",
           f"{w.get('files')}; each command a separate process (start-up included), interleaved; median (min-max)."]
    if w.get("load"):
        out.append(f"- {_load(w['load'])}")
    out += ["", "| job | command | seconds | clips/s | peak RSS MB | CPU s |", "|---|---|---|---|---|---|"]
    for name, row in w.get("rows", {}).items():
        if "error" in row:
            out.append(f"| {name} | `{w['commands'][name]}` | failed: {row['error']} | | | |")
            continue
        out.append(f"| {name} | `{w['commands'][name]}` | {_spread(row, 'seconds')} | {_spread(row, 'clips_per_s')} | "
                   f"{_spread(row, 'peak_rss_mb', 4)} | {_spread(row, 'cpu_s')} |")
    if w.get("speedup"):
        a = w.get("agreement", {})
        out += ["", f"**{w['speedup']:.2f}x** (median seconds); the two score files agree to "
                f"{_f(a.get('mi_max_abs'), 2)} MI / {_f(a.get('ta_max_abs'), 2)} TA (max |delta MOS| over "
                f"{a.get('clips_compared')} clips)."]
    return out + [""]


def decode_lines(section: dict) -> list[str]:
    """The decode-only table: clips/s by decode workers, target 0.8 x N times one worker up to the cores."""
    from benchmarks.decode_scaling import markdown

    env, load = section["environment"], section["load"]
    blas = ", ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('num_threads')} threads in a worker)"
                     for b in env.get("blas_in_decode_workers", [])) or "none found"
    return ["## Decoding by worker count (decode only)", "",
            f"{env['cores']} cores ({env['cpu']}); numpy's BLAS in the decode workers: {blas}; load at the report's start "
            f"{load.get('load_at_start')}, before {load.get('load_before')}, after {load.get('load_after')}; other "
            f"processes' runnable threads during: mean {_f((load.get('during') or {}).get('others_mean'))}"
            + (" (targets not judged: machine busy)" if load.get("busy") else "") + ".", "",
            markdown(section["rows"]), ""]


def render_markdown(results: dict) -> str:
    out = ["# deramos_rt benchmark report", "", f"Command: `{results.get('command')}` "
           f"({'quick' if results.get('quick') else 'full'} run, {results.get('repeats', 1)} interleaved repeats, "
           f"{results.get('elapsed_s', 0):.0f} s)", ""]
    sanity = results.get("sanity")
    if sanity:
        out += [f"**Sanity check {sanity['status'].upper()}**: {sanity['rows_checked']} rows against their own "
                "FLOP-bound limits" + (": " + "; ".join(sanity["violations"]) if sanity["violations"] else "."), ""]
    out += machine_lines(results.get("machine", {}))
    if results.get("load_average_end"):
        during = results.get("load_during") or {}
        out.append(f"- load average at the end {', '.join(f'{x:.1f}' for x in results['load_average_end'])} (this run "
                   f"included); other processes' runnable threads during the run: mean {_f(during.get('others_mean'))}"
                   f", max {_f(during.get('others_max'))}")
    out.append("")
    out += ["Every row scores the same files with the same prompts. *reference* is the research code's way of "
            "scoring (torch eager fp32, batch 1, each file decoded and resampled on the main thread before its "
            "forward, the prompt re-encoded per clip); *x reference* is end-to-end clips/s over the reference's, "
            "measured in this run. *e2e* = from files on disk (decode + resample + inference, Scorer with decode "
            "threads); *model only* = the audio and TA graphs on prepared waveforms with prompts cached. Parity is "
            "against the reference's scores. *Own limit* = counted FLOPs per clip over the matrix-product rate of "
            "the row's own library and precision measured in this run (no row may beat it: the sanity check). "
            "*CPU limit* = cores / (decode + model core-seconds per clip, each measured alone with process CPU "
            "time), with end to end as a share of it.", ""]
    if results.get("whole_process"):
        out += whole_lines(results["whole_process"])
    for name, model in results.get("models", {}).items():
        out += model_lines(name, model)
    if results.get("decode_scaling"):
        out += decode_lines(results["decode_scaling"])
    if results.get("startup"):
        s = results["startup"]
        out += ["## Start-up", "", f"`import deramos_rt` {_spread(s, 'import_s')} s; opening the default bundle "
                f"(onnxruntime) {_spread(s, 'open_s')} s; first score {_spread(s, 'first_score_s')} s; total from "
                f"import {_spread(s, 'total_s')} s ({_spread(s, 'process_wall_s')} s with the interpreter). "
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
    if results.get("errors"):
        out += ["Section errors: " + "; ".join(f"{k}: {v}" for k, v in results["errors"].items()), ""]
    for png in results.get("plots", []):
        if png.endswith(".png"):
            out.append(f"![{png}]({png})")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render_markdown(json.loads(open(sys.argv[1]).read())), end="")
