"""Build side of TensorRT: engines for a bundle's graphs, keyed by TensorRT version and GPU.

``--tensorrt auto`` builds engines when TensorRT 10 imports and a CUDA GPU answers, and otherwise says
plainly that engines were skipped and why; ``--tensorrt require`` turns that into an error. Engines are
built from the fp32 ONNX graphs with the FP16 builder flag (fp16) or without it (fp32), TF32 off in both,
one optimisation profile spanning batch 1..max and prompt length 1..max_tokens, a timing cache persisted
beside them, and each engine's outputs are checked against ONNX Runtime on the same inputs before it is
kept (the check the runtime repeats on engines it rebuilds: ``deramos_rt.backends.tensorrt``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from deramos_rt.backends.onnxruntime import profile_shapes
from deramos_rt.backends.tensorrt import (
    BUILD_RECIPE,
    TOLERANCE,
    build_plan,
    compute_capability,
    engine_errors,
    engine_file,
    engine_key,
    import_tensorrt,
)
from deramos_rt.bundle import GRAPHS
from deramos_rt.errors import DeramosError

log = logging.getLogger(__name__)
__all__ = ["TOLERANCE", "build_engines", "check_engines", "engine_entry", "probe"]


def probe(device_index: int = 0) -> tuple[Any, tuple[int, int] | None, str]:
    """(tensorrt module, compute capability of GPU ``device_index``, "") when engines can be built there,
    else (None, None, why not)."""
    try:
        trt = import_tensorrt()
        return trt, compute_capability(device_index), ""
    except DeramosError as exc:
        return None, None, str(exc)


def build_engines(bundle_dir: Path, manifest: dict[str, Any], mode: str, precisions=("fp16",),
                  device_index: int = 0) -> list[dict]:
    """Build engines on GPU ``device_index`` into ``bundle_dir/tensorrt/<key>/``; return the manifest's
    ``tensorrt`` entries.

    Raises:
        DeramosError: ``mode == "require"`` and engines cannot be built here.
    """
    if mode == "off":
        return []
    trt, capability, why = probe(device_index)
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
                              profile_shapes(manifest, graph), precision == "fp16", folder / "timing.cache",
                              device_index=device_index)
            path = folder / engine_file(graph, precision)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(plan)
            files[graph] = path.relative_to(bundle_dir).as_posix()
        entries.append(engine_entry(trt.__version__, capability, precision, files, manifest))
    return entries


def engine_entry(trt_version: str, capability: tuple[int, int], precision: str, files: dict[str, str],
                 manifest: dict[str, Any]) -> dict[str, Any]:
    """One manifest ``tensorrt`` entry: key, versions, files, the profile shapes used and the build recipe
    (``tf32: false``: the runtime refuses fp32 engines without it, as built with TensorRT's TF32 default)."""
    return {"key": engine_key(trt_version, capability), "trt_version": trt_version,
            "compute_capability": list(capability), "precision": precision, "files": files,
            "tf32": False, "recipe": BUILD_RECIPE,
            "profiles": {g: {n: [list(s) for s in rows] for n, rows in profile_shapes(manifest, g).items()}
                         for g in GRAPHS}}


def check_engines(bundle, precision: str, inputs: dict[str, dict[str, np.ndarray]],
                  device_index: int = 0) -> dict[str, float]:
    """Max |engine - ONNX Runtime fp32| per graph on the given feeds; raises when over :data:`TOLERANCE`.

    Both backends are closed whatever happens (a failed check must not leak the GPU stream and buffers).
    """
    from deramos_rt.backends.onnxruntime import OnnxRuntimeBackend
    from deramos_rt.backends.tensorrt import TensorRTBackend

    ort_backend = OnnxRuntimeBackend(bundle, "cpu", "fp32")
    try:
        trt_backend = TensorRTBackend(bundle, f"cuda:{device_index}", precision, rebuild=False,
                                      trust_bundle=True)  # built just now, here
        try:
            return engine_errors(trt_backend, ort_backend, inputs, precision)
        finally:
            trt_backend.close()
    finally:
        ort_backend.close()
