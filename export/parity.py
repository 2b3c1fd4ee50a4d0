"""The bundle's parity gate: every variant (and the AOTInductor packages) against the torch model, end to
end, written to parity.json.

Variants run through the runtime's own backend (:class:`deramos_rt.backends.onnxruntime.OnnxRuntimeBackend`)
on the bundle as written, with the bundle's tokenizer file and audio protocol, so the gate checks what a
user will run. fp16 is checked on a CUDA provider when there is one; otherwise on ONNX Runtime's CPU
provider if it can run the fp16 graphs at all, else it is reported as not verified.

For an ensemble bundle every variant is checked member by member (each against that member's own torch
model) and as the ensemble (the expected score of the mean distribution); it passes only if all do, and
its report lists each member's figures under ``members``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from deramos_rt.bundle import load_bundle
from deramos_rt.errors import DeramosError
from export import verify

log = logging.getLogger(__name__)
NOT_VERIFIED = "not verified here (no CUDA provider)"


def run_gate(model, tokenizer, bundle_dir: str | Path, asked: Sequence[str], files: int = 8,
             random_clips: int = 24) -> dict[str, Any]:
    """Check every variant of the bundle at ``bundle_dir`` against ``model`` (torch fp32).

    Args:
        model: the torch model the bundle was exported from.
        tokenizer: its prompt tokenizer (the torch side; the backends use the bundle's tokenizer.json).
        bundle_dir: a bundle folder with a manifest (possibly not yet final).
        asked: the precisions the user asked for (an unverifiable fp16 is kept only when asked).
        files, random_clips: generated audio files and random signals to score.

    Returns:
        The parity report: inputs, limits, CPU features, torch timing and ``variants`` with, per precision,
        ``status`` ("passed", "failed: ...", or not verified), ``kept``, max |delta MOS| and SRCC for MI and
        TA (the ensemble's, for an ensemble, with each member's under ``members``), and timing.
    """
    from export.quantize import cpu_features

    bundle = load_bundle(bundle_dir)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = verify.parity_inputs(bundle.protocol, tmp, files=files, random_clips=random_clips)
    start = time.perf_counter()
    reference = verify.torch_scores(model, inputs, tokenizer)
    torch_seconds = time.perf_counter() - start
    report = {
        "inputs": {"clips": len(inputs.waveforms), "files": files, "random": random_clips,
                   "prompts": len(inputs.prompts), "ta_pairs": int(len(inputs.pairs)),
                   "batch_pattern": list(verify.BATCH_PATTERN), "sources": inputs.sources},
        "limits": verify.LIMITS,
        "reference": {"backend": "torch fp32 (training.split parts)", "seconds": round(torch_seconds, 3),
                      # SRCC is only as meaningful as the spread of the scores it ranks.
                      **{f"{k}_range": [float(reference[k].min()), float(reference[k].max())] for k in ("mi", "ta")},
                      **{f"{k}_std": float(reference[k].std()) for k in ("mi", "ta")}},
        "cpu": cpu_features(),
        "variants": {},
    }
    for precision in bundle.variants:
        report["variants"][precision] = check_variant(bundle, precision, inputs, reference, precision in asked)
        log.info("parity %s: %s", precision, report["variants"][precision]["status"])
    _speedups(report["variants"])
    if bundle.manifest.get("aoti"):
        report["aoti"] = check_aoti(bundle, inputs, reference)
        log.info("parity aoti: %s", report["aoti"]["status"])
        base = report["variants"].get("fp32", {}).get("seconds")
        if base and report["aoti"].get("seconds"):
            report["aoti"]["speed_vs_fp32"] = round(base / report["aoti"]["seconds"], 2)
    return report


def check_aoti(bundle, inputs, reference) -> dict[str, Any]:
    """Score ``inputs`` with the bundle's AOTInductor packages (the runtime's backend) against the fp32 limits.

    A package that cannot be loaded or run is a failure with its reason, not an error: the ONNX graphs of
    the bundle stay usable without it.
    """
    from deramos_rt.backends.aoti import AotiBackend

    device = bundle.manifest["aoti"]["device"]
    try:
        backend = AotiBackend(bundle, trust_bundle=True)  # the packages this build just compiled
        start = time.perf_counter()
        got = _backend_scores(backend, bundle, inputs)
        seconds = time.perf_counter() - start
        backend.close()
    except Exception as exc:  # compiled code raises RuntimeError variants; DeramosError for mismatches
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return {"status": f"failed: {type(exc).__name__}: {first}", "kept": False, "device": device}
    return {**_verdict("fp32", reference, got, bundle), "device": device, "seconds": round(seconds, 3),
            "clips_per_s": round(len(inputs.waveforms) / seconds, 2)}


def _backend_scores(backend, bundle, inputs) -> dict:
    return verify.backend_scores(backend, inputs, bundle.tokenizer(), bundle.bins, ensemble=bundle.members is not None)


def _verdict(precision: str, reference: dict, got: dict, bundle) -> dict[str, Any]:
    """Status, kept, the headline figures and the full comparison (members included for an ensemble)."""
    names = [m["name"] for m in bundle.members] if bundle.members else None
    result = verify.compare_scores(reference, got, names)
    reason = verify.gate(precision, result)
    verdict = {"status": "passed" if reason is None else f"failed: {reason}", "kept": reason is None,
               "mi_max_abs": result["mi"]["max_abs"], "ta_max_abs": result["ta"]["max_abs"],
               "mi_srcc": result["mi"]["srcc"], "ta_srcc": result["ta"]["srcc"], "detail": result}
    if "members" in result:
        verdict["members"] = {m["name"]: {f"{k}_{f}": m[k][f] for k in ("mi", "ta") for f in ("max_abs", "srcc")}
                              for m in result["members"]}
    return verdict


def check_variant(bundle, precision: str, inputs, reference, asked: bool) -> dict[str, Any]:
    """Score ``inputs`` with one variant and apply its limits."""
    from deramos_rt.backends.onnxruntime import CUDA_EP, OnnxRuntimeBackend

    device = "cpu"
    if precision == "fp16":
        import onnxruntime as ort

        device = "cuda" if CUDA_EP in ort.get_available_providers() else "cpu"
    try:
        backend = OnnxRuntimeBackend(bundle, device, precision, allow_fp16_cpu=precision == "fp16")
        start = time.perf_counter()
        got = _backend_scores(backend, bundle, inputs)
        seconds = time.perf_counter() - start
        backend.close()
    except DeramosError as exc:
        if precision != "fp16" or device != "cpu":
            raise
        log.warning("fp16 graphs do not run on this ONNX Runtime CPU provider: %s", exc)
        return {"status": NOT_VERIFIED, "kept": asked, "device": None}
    except Exception as exc:  # ORT kernels missing for fp16 on CPU surface at run time as ORT errors
        if precision != "fp16" or device != "cpu":
            raise
        log.warning("fp16 graphs fail on this ONNX Runtime CPU provider: %s", str(exc).splitlines()[0])
        return {"status": NOT_VERIFIED, "kept": asked, "device": None}
    return {**_verdict(precision, reference, got, bundle), "device": device if device == "cpu" else backend.info.device,
            "seconds": round(seconds, 3), "clips_per_s": round(len(inputs.waveforms) / seconds, 2)}


def _speedups(variants: dict[str, dict[str, Any]]) -> None:
    """Speed of each variant relative to fp32 measured in this same run (same CPU, same inputs)."""
    base = variants.get("fp32", {}).get("seconds")
    for entry in variants.values():
        if base and entry.get("seconds"):
            entry["speed_vs_fp32"] = round(base / entry["seconds"], 2)
