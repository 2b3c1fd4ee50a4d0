"""Build side of TensorRT: engines for a bundle's graphs, keyed by TensorRT version and GPU.

``--tensorrt auto`` builds engines when TensorRT 10 imports and a CUDA GPU answers, and otherwise says
plainly that engines were skipped and why; ``--tensorrt require`` turns that into an error. Engines are
built from the fp32 ONNX graphs with the FP16 builder flag (fp16) or without it (fp32), one optimisation
profile spanning batch 1..max and prompt length 1..max_tokens, a timing cache persisted beside them, and
each engine's outputs are checked against ONNX Runtime on the same inputs before it is kept.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from deramos_rt.backends.onnxruntime import profile_shapes
from deramos_rt.backends.tensorrt import build_plan, compute_capability, engine_file, engine_key, import_tensorrt
from deramos_rt.bundle import GRAPHS
from deramos_rt.errors import DeramosError

log = logging.getLogger(__name__)
# Engine outputs against ONNX Runtime fp32 (probabilities / projected features), per precision.
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2}


def probe() -> tuple[Any, tuple[int, int] | None, str]:
    """(tensorrt module, compute capability, "") when engines can be built here, else (None, None, why not)."""
    try:
        trt = import_tensorrt()
        return trt, compute_capability(0), ""
    except DeramosError as exc:
        return None, None, str(exc)


def build_engines(bundle_dir: Path, manifest: dict[str, Any], mode: str, precisions=("fp16",)) -> list[dict]:
    """Build engines into ``bundle_dir/tensorrt/<key>/`` and return the manifest's ``tensorrt`` entries.

    Raises:
        DeramosError: ``mode == "require"`` and engines cannot be built here.
    """
    if mode == "off":
        return []
    trt, capability, why = probe()
    if trt is None:
        message = f"TensorRT engines skipped: {why}"
        if mode == "require":
            raise DeramosError(message)
        log.warning("%s (the ONNX bundle is complete without them)", message)
        return []
    key = engine_key(trt.__version__, capability)
    folder = bundle_dir / "tensorrt" / key
    entries = []
    for precision in precisions:
        files = {}
        for graph in GRAPHS:
            plan = build_plan(trt, bundle_dir / manifest["variants"]["fp32"]["files"][graph],
                              profile_shapes(manifest, graph), precision == "fp16", folder / "timing.cache")
            path = folder / engine_file(graph, precision)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(plan)
            files[graph] = path.relative_to(bundle_dir).as_posix()
        entries.append(engine_entry(trt.__version__, capability, precision, files, manifest))
    return entries


def engine_entry(trt_version: str, capability: tuple[int, int], precision: str, files: dict[str, str],
                 manifest: dict[str, Any]) -> dict[str, Any]:
    """One manifest ``tensorrt`` entry: key, versions, files and the profile shapes used."""
    return {"key": engine_key(trt_version, capability), "trt_version": trt_version,
            "compute_capability": list(capability), "precision": precision, "files": files,
            "profiles": {g: {n: [list(s) for s in rows] for n, rows in profile_shapes(manifest, g).items()}
                         for g in GRAPHS}}


def check_engines(bundle, precision: str, inputs: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """Max |engine - ONNX Runtime fp32| per graph on the given feeds; raises when over :data:`TOLERANCE`."""
    from deramos_rt.backends.onnxruntime import OnnxRuntimeBackend
    from deramos_rt.backends.tensorrt import TensorRTBackend

    ort_backend = OnnxRuntimeBackend(bundle, "cpu", "fp32")
    trt_backend = TensorRTBackend(bundle, "cuda", precision, rebuild=False, trust_bundle=True)  # built just now, here
    errors = {}
    for graph, feed in inputs.items():
        ref = getattr(ort_backend, f"run_{graph}")(*feed.values())
        got = getattr(trt_backend, f"run_{graph}")(*feed.values())
        ref, got = (ref, got) if isinstance(ref, tuple) else ((ref,), (got,))
        errors[graph] = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(ref, got))
        if errors[graph] > TOLERANCE[precision]:
            raise DeramosError(f"TensorRT {precision} {graph} engine differs from ONNX Runtime by {errors[graph]:.3g}")
    trt_backend.close()
    return errors
