"""Export-time calibration: how fast each CPU backend of a bundle runs on this CPU, for ``auto``.

``calibrate(bundle)`` opens every CPU candidate ``auto`` may pick (onnxruntime fp32, onnxruntime int8 when
the bundle kept it, the AOTInductor CPU packages when present and torch imports) through the runtime's own
backends, and times the same unit of work on each: one batch of clips through the audio and TA graphs
plus one prompt through the text graph per ``clips_per_prompt`` clips (a prompt serves several clips in a
real job, and each distinct prompt is encoded once). Rounds are interleaved (A B C A B C ...) and the
median is kept. It takes a few seconds for the built-in model; where the estimate exceeds ``budget_s`` it
runs at batch 1 (CLAP: about 5 s), and where that is still too long, one round (MuQ-large: one 30 s clip
is tens of seconds on 2 cores).

The result is stored in the manifest under ``calibration.cpus[<cpu key>]``
(:func:`deramos_rt.backends.calibration.cpu_key`: CPU model + SIMD flags), where
:func:`deramos_rt.backends.calibration.measured_order` reads it. A bundle copied to another CPU can be
calibrated there: ``python -m export.calibrate BUNDLE`` adds that CPU's entry (the manifest is rewritten,
so the bundle's identity hash changes).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from deramos_rt.backends.calibration import cpu_features, cpu_key
from deramos_rt.errors import DeramosError

log = logging.getLogger(__name__)
PROMPTS = ("a calm piano piece with a slow tempo", "energetic rock song with loud drums",
           "ambient electronic texture, soft synth pads", "sad violin melody in a minor key")


def interleave(tasks: dict[Any, Callable[[], Any]], repeats: int) -> dict[Any, list]:
    """Run every task ``repeats`` times in turns (A B C A B C ...): {task: [result of each round]}.

    Interleaving spreads a change in the machine's load over every task alike, so their ratio holds
    even when the absolute figures drift.
    """
    out = {name: [] for name in tasks}
    for _ in range(max(1, int(repeats))):
        for name, task in tasks.items():
            out[name].append(task())
    return out


def per_call(fn: Callable[[], Any], min_seconds: float, max_calls: int = 200) -> float:
    """Seconds per call of ``fn``, called until ``min_seconds`` have passed (at least once)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or calls >= max_calls:
            return elapsed / calls


def candidates(bundle) -> list[tuple[str, str | None]]:
    """(calibration name, precision) of every CPU backend ``auto`` may pick for ``bundle``."""
    import importlib.util

    out = []
    if "fp32" in bundle.variants:
        out.append(("onnxruntime-fp32", "fp32"))
    int8 = bundle.variants.get("int8")
    if int8 and (int8.get("parity") or {}).get("status", "passed") == "passed":
        out.append(("onnxruntime-int8", "int8"))
    aoti = bundle.manifest.get("aoti") or {}
    if aoti.get("device") == "cpu" and importlib.util.find_spec("torch") is not None:
        out.append(("aoti", None))
    return out


def _open(name: str, bundle, precision: str | None):
    from deramos_rt.backends import open_backend

    return open_backend(name.split("-")[0], bundle, "cpu", precision)


def _unit(backend, waves: np.ndarray, tokens, prompts: int) -> Callable[[], None]:
    """One unit of work: audio + TA for the batch, ``prompts`` prompts through text."""
    def run() -> None:
        _, audio_x = backend.run_audio(waves)
        text_x = backend.run_text(tokens.input_ids[:prompts], tokens.attention_mask[:prompts])
        rows = np.arange(len(waves)) % prompts
        backend.run_ta(audio_x, text_x[rows], tokens.attention_mask[rows])
    return run


def _load(source, manifest: dict | None):
    from deramos_rt.bundle import building_view, load_bundle

    if manifest is not None:
        return building_view(source, manifest, "calibration")
    return load_bundle(source, verify=False)


def calibrate(source, manifest: dict | None = None, batch: int = 8, repeats: int = 5, clips_per_prompt: int = 8,
              round_s: float = 0.2, budget_s: float = 60.0, previous: dict | None = None) -> dict:
    """Measured clips/s of every CPU candidate of a bundle on this CPU.

    Args:
        source: the bundle folder.
        manifest: its manifest when it is not yet written to disk as final (export); None: read it.
        batch: clips per audio call (reduced to 1 for slow models).
        repeats: interleaved rounds (median kept).
        round_s: each round repeats the unit for at least this long (one call at least).
        clips_per_prompt: clips each prompt serves in the timed unit.
        budget_s: above this estimated total, batch 1; still above, one round at batch 1.
        previous: an existing ``calibration`` section whose other CPUs' entries are kept.

    Returns:
        ``{"cpus": {cpu key: {"rates": {name: clips/s}, "ranges", "batch", "repeats", "measured", ...}}}``.
    """
    bundle = _load(source, manifest)
    names = candidates(bundle)
    kept = previous.get("cpus") if isinstance(previous, dict) else None
    section = {"cpus": dict(kept) if isinstance(kept, dict) else {}}
    if not names:
        return section
    backends = {name: _open(name, bundle, precision) for name, precision in names}
    try:
        entry = _measure(bundle, backends, batch, repeats, clips_per_prompt, round_s, budget_s)
    finally:
        for backend in backends.values():
            backend.close()
    key = cpu_key()
    section["cpus"][key] = entry
    log.info("calibration on %s: %s", key, ", ".join(f"{k} {v:.4g} clips/s" for k, v in entry["rates"].items()))
    return section


def _measure(bundle, backends: dict, batch: int, repeats: int, clips_per_prompt: int, round_s: float,
             budget_s: float) -> dict:
    rng = np.random.default_rng(0)
    samples = bundle.protocol.num_samples
    tokens = bundle.tokenizer()(list(PROMPTS))
    one = (0.1 * rng.standard_normal((1, samples))).astype(np.float32)
    probe = {}
    for name, backend in backends.items():  # warm-up, then one timed call: the cost estimate
        unit = _unit(backend, one, tokens, 1)
        unit()
        probe[name] = per_call(unit, 0.0)
    batch, repeats = _fit_budget(probe, batch, repeats, round_s, budget_s)
    waves = (0.1 * rng.standard_normal((batch, samples))).astype(np.float32)
    prompts = max(1, min(len(PROMPTS), round(batch / clips_per_prompt)))
    units = {name: _unit(b, waves, tokens, prompts) for name, b in backends.items()}
    if batch > 1:
        for unit in units.values():
            unit()  # warm-up at this batch size
    seconds = interleave({n: (lambda u=u: per_call(u, round_s)) for n, u in units.items()}, repeats)
    return {"rates": {n: round(batch / statistics.median(s), 4) for n, s in seconds.items()},
            "ranges": {n: [round(batch / max(s), 4), round(batch / min(s), 4)] for n, s in seconds.items()},
            "batch": batch, "repeats": repeats, "prompts_per_unit": prompts, "threads": "backend default",
            "cpu": cpu_features(), "cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "what": f"model-only clips/s: {batch} clip(s) through audio + TA and {prompts} prompt(s) through text "
                    f"per unit, each round at least {round_s:g} s of units, median of {repeats} interleaved round(s)"}


def _fit_budget(probe: dict[str, float], batch: int, repeats: int, round_s: float, budget_s: float) -> tuple[int, int]:
    """(batch, repeats) whose estimated time fits ``budget_s``: batch 1 first, then a single round."""
    def estimate(b: int, r: int) -> float:
        return r * sum(max(round_s, seconds * b) for seconds in probe.values())

    for b, r in ((batch, repeats), (1, repeats), (1, 1)):
        if estimate(b, r) <= budget_s or (b, r) == (1, 1):
            if (b, r) != (batch, repeats):
                log.info("calibration: batch %d, %d round(s) (batch %d x %d rounds would take about %.0f s > budget "
                         "%.0f s)", b, r, batch, repeats, estimate(batch, repeats), budget_s)
            return b, r
    return 1, 1


def main(argv: list[str] | None = None) -> int:
    """``python -m export.calibrate BUNDLE``: add this CPU's measured rates to a bundle's manifest."""
    from deramos_rt.bundle import load_bundle, write_manifest
    from deramos_rt.console import run_cli, setup_logging

    parser = argparse.ArgumentParser(prog="python -m export.calibrate", description=main.__doc__.split(": ", 1)[1])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        bundle = load_bundle(args.bundle)  # verified: only a whole bundle is calibrated
        if not os.access(args.bundle / "deramos.json", os.W_OK):
            raise DeramosError(f"cannot write {args.bundle / 'deramos.json'}: calibrate a copy you own")
        manifest = dict(bundle.manifest)
        manifest["calibration"] = calibrate(args.bundle, previous=manifest.get("calibration"))
        manifest.pop("files", None)
        write_manifest(args.bundle, manifest)
        return 0

    return run_cli("export.calibrate", body)


if __name__ == "__main__":
    sys.exit(main())
