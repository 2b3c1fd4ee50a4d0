"""The measurements behind one row of the report: the research-code reference, Scorer rows, stage
breakdowns, start-up times and scaling in clips.

Every row scores the same (file, prompt) items. Times are wall clock (``time.perf_counter``); peak memory
is the process's peak RSS (``VmHWM``), reset before each row through ``/proc/self/clear_refs`` so rows do
not inherit each other's peaks (where the reset is refused, the value is the peak so far and is marked).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ memory

def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50 / p95 / p99 in milliseconds of latencies given in seconds."""
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    arr = np.asarray(values) * 1000
    return {f"p{q}_ms": round(float(np.percentile(arr, q)), 2) for q in (50, 95, 99)}


# ------------------------------------------------------------------------------------------------ parity

def parity(reference: dict[str, list], got: dict[str, list]) -> dict:
    """max |delta MOS| and SRCC of MI and TA against the reference scores (same clip order)."""
    from scipy.stats import spearmanr

    out = {}
    for key in ("mi", "ta"):
        a = np.asarray(reference[key], dtype=np.float64)
        b = np.asarray(got[key], dtype=np.float64)
        ok = np.isfinite(a) & np.isfinite(b)
        out[f"{key}_max_abs"] = float(np.max(np.abs(a[ok] - b[ok]))) if ok.any() else None
        out[f"{key}_srcc"] = float(spearmanr(a[ok], b[ok])[0]) if ok.sum() >= 3 else None
    return out


# ------------------------------------------------------------------------------------------- reference

def reference_row(run_dir: Path, items: list[tuple[str, str]]) -> dict:
    """The research code's way of scoring (:func:`benchmarks.research_protocol.research_scores`), timed:
    torch eager fp32, batch 1, each file decoded and resampled on the main thread right before its forward,
    the prompt re-encoded for every clip."""
    import torch

    from benchmarks.research_protocol import research_scores
    from training.checkpoint import load_run
    from training.model import build_tokenizer

    reset_peak_rss()
    start = time.perf_counter()
    model, _ = load_run(run_dir)
    tokenizer = build_tokenizer(model)
    protocol = model.audio_protocol
    load_seconds = time.perf_counter() - start
    with torch.inference_mode():  # warm-up (one forward on silence), as every other row gets
        ids = tokenizer([items[0][1]])
        model(torch.zeros(1, protocol.num_samples), torch.from_numpy(ids.input_ids), torch.from_numpy(ids.attention_mask))
    clips: list[dict] = []
    start = time.perf_counter()
    mi, ta = research_scores(model, tokenizer, items, clips.append)
    seconds = time.perf_counter() - start
    decode = sum(c["decode_s"] for c in clips)
    model_cpu = sum(c["model_cpu_s"] for c in clips)
    return {"name": "reference", "backend": "torch (research protocol)", "precision": "fp32", "device": "cpu",
            "batch_size": 1, "clips": len(items), "e2e_seconds": seconds, "e2e_clips_per_s": len(items) / seconds,
            "decode_seconds": decode, "load_seconds": load_seconds,
            "model_clips_per_s": len(items) / max(seconds - decode, 1e-9),
            "model_core_s_per_clip": model_cpu / len(items),
            "latency": {"1": percentiles([c["total_s"] for c in clips])}, "peak_rss_mb": round(peak_rss_mb(), 1),
            "scores": {"mi": mi, "ta": ta}}


def decode_cost(items: list[tuple[str, str]], protocol) -> dict:
    """Decode + resample of every item on this thread alone (nothing else running): wall and process CPU
    seconds per clip. CPU time counts every thread (a BLAS call's own threads included)."""
    from deramos_rt.audio import load_clip

    start, cpu = time.perf_counter(), time.process_time()
    for path, _ in items:
        load_clip(path, protocol)
    return {"name": "decode", "clips": len(items), "decode_s_per_clip": (time.perf_counter() - start) / len(items),
            "decode_core_s_per_clip": (time.process_time() - cpu) / len(items)}


# --------------------------------------------------------------------------------------------- scorer rows

class _Timed:
    """Wraps a backend's three calls and adds up their wall time (inference time inside a job)."""

    def __init__(self, backend):
        self.backend = backend
        self.seconds = {"audio": 0.0, "text": 0.0, "ta": 0.0}
        self.calls = {"audio": 0, "text": 0, "ta": 0}
        for graph in self.seconds:
            self._wrap(graph)

    def _wrap(self, graph: str) -> None:
        original = getattr(self.backend, f"run_{graph}")

        def timed(*args):
            start = time.perf_counter()
            out = original(*args)
            self.seconds[graph] += time.perf_counter() - start
            self.calls[graph] += 1
            return out

        setattr(self.backend, f"run_{graph}", timed)

    def total(self) -> float:
        return sum(self.seconds.values())


def open_scorer(source: Path, backend: str, precision: str | None, batch_size: int, workers: int | None = None,
                threads: int | None = None, device: str = "cpu"):
    """A Scorer on ``source`` (bundle or run directory); imported here so the harness loads without it."""
    from deramos_rt.scorer import Scorer

    return Scorer(str(source), backend=backend, device=device, batch_size=batch_size, decode_workers=workers,
                  precision=precision, threads=threads)


def _warm(scorer, num_samples: int, batch: int) -> None:
    """One batch of silence through the audio graph and one prompt through the text graph (not cached)."""
    out = scorer.backend.run_audio(np.zeros((batch, num_samples), np.float32))
    tokens = scorer.tokenizer(["warm up"])
    text_x = scorer.backend.run_text(tokens.input_ids, tokens.attention_mask)
    scorer.backend.run_ta(out[1], np.repeat(text_x, batch, axis=0), np.repeat(tokens.attention_mask, batch, axis=0))


def scorer_row(name: str, source: Path, backend: str, precision: str | None, batch_size: int,
               items: list[tuple[str, str]], waves: np.ndarray | None = None, workers: int | None = None,
               device: str = "cpu") -> dict:
    """End-to-end from files and model-only throughput of one (backend, precision, batch size).

    Args:
        name: the row's label.
        source: bundle (onnxruntime, aoti) or run directory (torch).
        backend, precision, batch_size: what to run.
        items: (path, prompt) pairs.
        waves: the items' prepared waveforms (decoded once outside the timing) for the model-only run;
            None decodes them here.
        workers: decode threads (None: the Scorer's default).
    """
    reset_peak_rss()
    start = time.perf_counter()
    scorer = open_scorer(source, backend, precision, batch_size, workers, device=device)
    open_seconds = time.perf_counter() - start
    protocol = scorer.protocol
    try:
        _warm(scorer, protocol.num_samples, batch_size)
        timed = _Timed(scorer.backend)
        start = time.perf_counter()
        results = scorer.score(items)
        e2e = time.perf_counter() - start
        inference = dict(timed.seconds)
        encoded = int(scorer.counts["prompts_encoded"])  # the model-only run below encodes them again
        errors = [r.error for r in results if r.error]
        if waves is None:
            from deramos_rt.audio import load_clip

            waves = np.stack([load_clip(p, protocol) for p, _ in items])
        cpu = time.process_time()
        model_seconds, latencies = _model_only(scorer, waves, [p for _, p in items], batch_size, timed)
        model_cpu = time.process_time() - cpu
        return {"name": name, "backend": scorer.backend.info.name, "precision": scorer.backend.info.precision,
                "device": scorer.backend.info.device, "detail": scorer.backend.info.detail,
                "batch_size": batch_size, "clips": len(items), "open_seconds": round(open_seconds, 2),
                "e2e_seconds": e2e, "e2e_clips_per_s": len(items) / e2e,
                "inference_seconds_in_e2e": {k: round(v, 3) for k, v in inference.items()},
                "waits_seconds_in_e2e": round(e2e - sum(inference.values()), 3),
                "model_seconds": model_seconds, "model_clips_per_s": len(items) / model_seconds,
                "model_core_s_per_clip": model_cpu / len(items),
                "latency": {str(batch_size): {**percentiles(latencies),
                                              "clips_per_s": round(len(items) / model_seconds, 3)}},
                "prompts_encoded": encoded,
                "distinct_prompts": len({p for _, p in items}),
                "peak_rss_mb": round(peak_rss_mb(), 1), "errors": errors[:3],
                "scores": {"mi": [r.mi for r in results], "ta": [r.ta for r in results]},
                "spread": _spread(results)}
    finally:
        scorer.close()


def _spread(results) -> dict | None:
    """An ensemble's members' spread per clip (``mi_std``, ``ta_std``); None for one model."""
    if not any(r.mi_std is not None for r in results):
        return None
    return {"mi_std": [r.mi_std for r in results if r.mi_std is not None],
            "ta_std": [r.ta_std for r in results if r.ta_std is not None]}


def _model_only(scorer, waves: np.ndarray, prompts: list[str], batch: int, timed: _Timed):
    """The graphs on already prepared waveforms, each distinct prompt encoded once as in the end-to-end run
    (the prompt cache is emptied first): seconds and per-batch latencies."""
    scorer._text.clear()
    latencies = []
    start = time.perf_counter()
    for i in range(0, len(waves), batch):
        t0 = time.perf_counter()
        _, audio_x = scorer.backend.run_audio(waves[i:i + batch])
        scorer._run_ta(audio_x, prompts[i:i + batch])
        latencies.append(time.perf_counter() - t0)
    return time.perf_counter() - start, latencies


def batch_latencies(source: Path, backend: str, precision: str | None, batch_sizes: list[int],
                    waves: np.ndarray, prompt: str, min_calls: int = 3, device: str = "cpu") -> dict:
    """Per-batch-size model-only latency percentiles and clips/s (each size warmed once)."""
    out = {}
    for batch in batch_sizes:
        scorer = open_scorer(source, backend, precision, batch, workers=0, device=device)
        try:
            _warm(scorer, waves.shape[1], batch)
            data = np.concatenate([waves] * max(1, -(-batch * min_calls // len(waves))))
            calls = max(min_calls, len(waves) // batch)
            latencies = []
            start = time.perf_counter()
            for i in range(calls):
                chunk = data[(i * batch) % (len(data) - batch + 1):][:batch]
                t0 = time.perf_counter()
                _, audio_x = scorer.backend.run_audio(chunk)
                scorer._run_ta(audio_x, [prompt] * len(chunk))
                latencies.append(time.perf_counter() - t0)
            seconds = time.perf_counter() - start
            out[str(batch)] = {**percentiles(latencies), "clips_per_s": round(calls * batch / seconds, 3),
                               "calls": calls}
        finally:
            scorer.close()
    return out


# ---------------------------------------------------------------------------------------- stage breakdown

def stage_breakdown(run_dir: Path, items: list[tuple[str, str]], batch: int) -> dict:
    """Seconds per clip of each stage, torch eager fp32 at ``batch``: decode, resample, front end, encoder,
    heads (MI branch + projection), text (one prompt) and TA."""
    import torch

    from deramos_rt.audio import fit_length, read_audio, resample
    from training.checkpoint import load_run
    from training.model import build_tokenizer
    from training.split import split_model

    model, _ = load_run(run_dir)
    protocol = model.audio_protocol
    audio_part, text_part, ta_part = split_model(model)
    tokenizer = build_tokenizer(model)
    items = items[:batch]
    t0 = time.perf_counter()
    decoded = [read_audio(p, mono=True, max_seconds=protocol.clip_seconds) for p, _ in items]
    t1 = time.perf_counter()
    waves = np.stack([fit_length(resample(s, r, protocol.sample_rate, protocol.resampler), protocol.num_samples)
                      for s, r in decoded])
    t2 = time.perf_counter()
    wave = torch.from_numpy(waves)
    encoder = audio_part.encoder
    front = getattr(encoder, "frontend", None) or getattr(encoder, "front_end", None)
    n = len(items)
    out = {"decode": (t1 - t0) / n, "resample": (t2 - t1) / n}
    with torch.inference_mode():
        encoder(wave[:1])  # warm-up
        if front is not None:
            start = time.perf_counter()
            front(wave)
            out["front_end"] = (time.perf_counter() - start) / n
        start = time.perf_counter()
        hidden = encoder(wave)
        out["encoder"] = (time.perf_counter() - start) / n - out.get("front_end", 0.0)
        start = time.perf_counter()
        _, audio_x = audio_part.from_hidden(hidden)
        out["heads"] = (time.perf_counter() - start) / n
        tokens = tokenizer([items[0][1]])
        ids, mask = torch.from_numpy(tokens.input_ids), torch.from_numpy(tokens.attention_mask)
        text_part(ids, mask)  # warm-up
        start = time.perf_counter()
        text_x = text_part(ids, mask)
        out["text_per_prompt"] = time.perf_counter() - start
        start = time.perf_counter()
        ta_part(audio_x, text_x.expand(n, -1, -1), mask.expand(n, -1))
        out["ta"] = (time.perf_counter() - start) / n
    return {k: round(v, 5) for k, v in out.items()}


# ------------------------------------------------------------------------------------------------ start-up

STARTUP_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import deramos_rt
t1 = time.perf_counter()
from deramos_rt.scorer import Scorer
scorer = Scorer(sys.argv[1], backend=sys.argv[2], device="cpu", decode_workers=0)
t2 = time.perf_counter()
[r] = scorer.score([(sys.argv[3], "a calm piano piece")])
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "first_score_s": t3 - t2, "total_s": t3 - t0,
                  "error": r.error}))
"""


def startup(bundle: Path, backend: str, clip: str) -> dict:
    """Import time of deramos_rt and the time to the first score, in a fresh interpreter."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", STARTUP_SCRIPT, str(bundle), backend, clip], capture_output=True,
                          text=True, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["process_wall_s"] = wall  # includes the interpreter's own start-up
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in data.items()}


# ------------------------------------------------------------------------------------------------ scaling

def scaling_point(source: Path, backend: str, precision: str | None, batch: int, items) -> dict:
    """Stream ``items`` through a fresh Scorer (results tallied, not kept): seconds, clips/s, peak RSS."""
    from deramos_rt.scorefile import SystemTally

    reset_peak_rss()
    scorer = open_scorer(source, backend, precision, batch)
    try:
        _warm(scorer, scorer.protocol.num_samples, batch)
        rss_before = peak_rss_mb()
        tally = SystemTally()
        count = 0
        start = time.perf_counter()
        for r in scorer.iter_scores(items):
            tally.add(r.system, r.mi, r.ta, r.error)
            count += 1
        seconds = time.perf_counter() - start
        failed = sum(v["failed"] for v in tally.summary().values())
        return {"clips": count, "seconds": round(seconds, 3), "clips_per_s": round(count / seconds, 2),
                "peak_rss_mb": round(peak_rss_mb(), 1), "rss_after_open_mb": round(rss_before, 1),
                "failed": failed}
    finally:
        scorer.close()
