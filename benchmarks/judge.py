"""Limits, targets and the sanity check of a benchmark report's model section.

* **Each row's own limit** (FLOP bound): counted FLOPs per clip over the matrix-product rate of the row's
  own library and precision measured in the same run (torch / AOTInductor and the reference: torch fp32;
  onnxruntime fp32: ORT fp32; onnxruntime int8: the quantised graphs' weight products at ORT's int8 rate,
  the rest at ORT fp32). A row that runs faster than its own limit means a limit is wrong (the int8 rate
  measured on an unquantised probe did exactly that): :func:`sanity` then fails the report.
* **The CPU limit** (issue 21): cores / (decode core-seconds per clip + model core-seconds per clip), both
  measured in the same run with ``time.process_time`` in isolated stages; end to end should reach 85 % of it.
* **Targets** are judged only on a quiet machine (:func:`benchmarks.discipline.load_verdict`); on a busy
  one they read "not judged: machine busy" with the numbers kept.
"""

from __future__ import annotations

import os

from benchmarks.discipline import BUSY

CPU_LIMIT_SHARE = 0.85
SANITY_TOLERANCE = 1.0  # a row may not beat its own limit at all: the limit uses the best measured GEMM rates


def _per_clip_flops(section: dict, reference: bool = False) -> tuple[float, dict[str, float]] | None:
    """(total FLOPs per clip, {part: quantisable FLOPs per clip}); the reference encodes its prompt per clip."""
    fl = section.get("flops") or {}
    parts = fl.get("by_part")
    if not parts:
        return None
    per_prompt = 1.0 if reference else float(fl.get("clips_per_prompt") or 1.0)
    share = {"audio": 1.0, "ta": 1.0, "text": 1.0 / per_prompt}
    total = sum(parts[p]["gflop"] * 1e9 * share[p] for p in share)
    quantisable = {p: parts[p]["quantisable_gflop"] * 1e9 * share[p] for p in share}
    return total, quantisable


def row_limit(row: dict, section: dict) -> float | None:
    """The FLOP-bound clips/s of one row with its own library's measured rates (None: not computable)."""
    best = (section.get("gemm") or {}).get("best", {})
    counted = _per_clip_flops(section, reference=row["name"] == "reference")
    if counted is None or row.get("device", "cpu") != "cpu":
        return None
    total, quantisable = counted
    library = row["backend"].split()[0]
    if library == "onnxruntime":
        fp32 = best.get("ort_fp32")
        if row.get("precision") == "int8":
            int8 = best.get("ort_int8")
            q = sum(quantisable[p] for p in section.get("int8_graphs", []))
            return 1.0 / (q / (int8 * 1e9) + (total - q) / (fp32 * 1e9)) if fp32 and int8 else None
    else:
        fp32 = best.get("torch_fp32")
    return fp32 * 1e9 / total if fp32 else None


def cpu_limit(row: dict, section: dict, cores: int | None = None) -> dict | None:
    """cores / (decode + model core-seconds per clip) and end to end as a share of it."""
    decode = (section.get("decode") or {}).get("decode_core_s_per_clip")
    model = row.get("model_core_s_per_clip")
    if not decode or not model:
        return None
    cores = cores or os.cpu_count() or 1
    limit = cores / (decode + model)
    return {"decode_core_s_per_clip": decode, "model_core_s_per_clip": model, "cores": cores,
            "limit_clips_per_s": limit, "e2e_share": row["e2e_clips_per_s"] / limit}


def sanity(results: dict) -> dict:
    """Every CPU row against its own limit: ``failed`` when any row ran faster than it (a limit is wrong).

    On a section measured while the machine was busy a violation may be load noise (the rates and the rows
    were taken at different moments): it is listed but reads "not judged: machine busy" instead of failing.
    """
    violations, busy_violations, checked = [], [], 0
    for model, section in results.get("models", {}).items():
        busy = bool((section.get("load") or {}).get("busy"))
        for row in section.get("rows", []):
            limit = row.get("limit_clips_per_s")
            if limit is None:
                continue
            checked += 1
            for key in ("model_clips_per_s", "e2e_clips_per_s"):
                if row.get(key) and row[key] > limit * SANITY_TOLERANCE:
                    (busy_violations if busy else violations).append(
                        f"{model} {row['name']}: {key.split('_')[0]} {row[key]:.4g} clips/s > its limit {limit:.4g} clips/s")
    status = "failed" if violations else BUSY if busy_violations else "passed"
    return {"status": status, "rows_checked": checked, "violations": violations + busy_violations}


def _target(name: str, ok: bool, detail: str, busy: bool) -> dict:
    if busy:
        return {"target": name, "status": BUSY, "detail": f"{detail} (would be: {'met' if ok else 'not met'})"}
    return {"target": name, "status": "met" if ok else "not met", "detail": detail}


def targets(section: dict) -> list[dict]:
    """Each CPU target of the issues for one model: met / not met / not measurable / not judged (busy)."""
    busy = bool((section.get("load") or {}).get("busy"))
    rows = {r["name"]: r for r in section.get("rows", [])}
    ref = rows.get("reference")
    cpu = [r for n, r in rows.items() if n != "reference"]
    if not cpu:
        return [{"target": "any backend measured", "status": "not measurable", "detail": "no row ran"}]
    best = max(cpu, key=lambda r: r["e2e_clips_per_s"])
    out = []
    limit = best.get("limit_clips_per_s")
    if limit:
        ratio = limit / best["e2e_clips_per_s"]
        out.append(_target("FLOP-bound: best end to end within 1.15x of its own FLOP-bound limit", ratio <= 1.15,
                           f"best {best['name']} {best['e2e_clips_per_s']:.3g} clips/s; its limit {limit:.3g} clips/s: "
                           f"{ratio:.2f}x", busy))
    hidden = best["e2e_clips_per_s"] / best["model_clips_per_s"]
    out.append(_target("decoding hidden: end to end >= 95 % of model-only", hidden >= 0.95,
                       f"{best['name']}: {best['e2e_clips_per_s']:.3g} vs {best['model_clips_per_s']:.3g} clips/s "
                       f"= {hidden:.0%}", busy))
    share = best.get("cpu_limit")
    if share:
        out.append(_target(f"CPU limit: end to end >= {CPU_LIMIT_SHARE:.0%} of cores / (decode + model core-s per clip)",
                           share["e2e_share"] >= CPU_LIMIT_SHARE,
                           f"{best['name']}: {best['e2e_clips_per_s']:.3g} clips/s of a limit "
                           f"{share['limit_clips_per_s']:.3g} = {share['cores']} / ({share['decode_core_s_per_clip'] * 1e3:.3g} + "
                           f"{share['model_core_s_per_clip'] * 1e3:.3g} ms) = {share['e2e_share']:.0%}", busy))
    once = all(r.get("prompts_encoded", 0) <= r.get("distinct_prompts", 0) for r in cpu)
    out.append(_target("each distinct prompt encoded once", once,
                       ", ".join(f"{r['name']}: {r.get('prompts_encoded')} of {r.get('distinct_prompts')}" for r in cpu),
                       False))  # a count, not a speed: judged whatever the load
    if ref:
        out.append(_reference_target(section, best, ref, busy))
    out.append(_int8_target(section, rows, busy))
    return out


def _reference_target(section: dict, best: dict, ref: dict, busy: bool) -> dict:
    need = 2.0 if section.get("title", "").startswith("MuQ") else 3.0
    ratio = best["e2e_clips_per_s"] / ref["e2e_clips_per_s"]
    detail = (f"{best['name']} {best['e2e_clips_per_s']:.3g} / reference {ref['e2e_clips_per_s']:.3g} clips/s "
              f"= {ratio:.2f}x (need {need:g}x)")
    limit = best.get("limit_clips_per_s")
    if limit:
        most = limit / ref["e2e_clips_per_s"]
        detail += (f"; impossible on this machine: {best['name']}'s FLOP-bound limit is only {most:.2f}x the reference"
                   if most < need else f"; its FLOP-bound limit would allow {most:.1f}x")
    return _target(f"against the reference: >= {need:g}x", ratio >= need, detail, busy)


def _int8_target(section: dict, rows: dict, busy: bool) -> dict:
    """int8's end-to-end gain over fp32 against the gain its quantised share allows: the ratio of the two
    rows' own FLOP-bound limits (the int8 graphs' weight products at the int8 rate, the rest at fp32)."""
    gemm = (section.get("gemm") or {}).get("best", {})
    fp32, int8 = rows.get("onnxruntime-fp32"), rows.get("onnxruntime-int8")
    if not (fp32 and int8 and gemm.get("int8_over_fp32")):
        reason = section.get("unavailable", {}).get("onnxruntime-int8", "int8 or fp32 row missing")
        return {"target": "int8 gain", "status": "not measurable", "detail": reason}
    gain = int8["e2e_clips_per_s"] / fp32["e2e_clips_per_s"]
    possible = (int8.get("limit_clips_per_s") or 0) / (fp32.get("limit_clips_per_s") or float("inf"))
    possible = possible if possible > 0 else gemm["int8_over_fp32"]
    want = 1 + 0.6 * (possible - 1)
    parity = int8.get("parity") or {}
    srccs = [v for v in (parity.get("mi_srcc"), parity.get("ta_srcc")) if v is not None]
    srcc = min(srccs) if srccs else None
    ok = gain >= want and (srcc is None or srcc >= 0.99)
    return _target("int8: gain over fp32 >= 60 % of the gain its quantised share allows, SRCC >= 0.99", ok,
                   f"end-to-end gain {gain:.2f}x; GEMM int8/fp32 {gemm['int8_over_fp32']:.2f}x on "
                   f"{', '.join(section.get('int8_graphs', [])) or 'no graph'} -> at most {possible:.2f}x, need "
                   f"{want:.2f}x; SRCC {srcc if srcc is None else round(srcc, 4)}", busy)
