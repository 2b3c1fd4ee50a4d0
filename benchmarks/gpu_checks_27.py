"""GPU checks for issue 27 (TF32 off on every "fp32" GPU path; the backends' real CUDA calls).

``python benchmarks/gpu_checks_27.py --out DIR`` on a CUDA machine (``benchmarks/gpu_run.sh`` can call it);
results go to ``DIR/checks_27.json`` (rewritten after each part, so a run stopped by its time limit keeps
what it checked) and a summary to stdout. Exit 0 when every part that could run passed. Without CUDA
every part is reported as skipped and the exit is 0. The parts (about 3-5 minutes on an H200, mostly
the AOTInductor compilation):

1. ``cuda_python``: the TensorRT backend's cuda-python calls for real (stream, buffers grown and reused,
   host -> device -> host round trip), the compute capability and the GPU name.
2. ``tf32_switch``: a host program that allows TF32 gets fp32 inside ``fp32_math`` and its own setting
   back after: a 2048^3 matmul and a conv1d against float64, inside and outside.
3. ``aoti_cuda``: a tiny bundle with CUDA AOTInductor packages, its parity gate (now true fp32), and its
   raw outputs against the torch model in float64 with the host's TF32 on: with ``fp32_math`` (the
   backend) and, for contrast, without it.
4. ``ort_placement``: whether this onnxruntime reports node placement (the API the GPU sessions use).

TensorRT and onnxruntime-gpu are not on the lent GPU machines: their paths are covered by the fakes in
tests/fake_gpu.py and tests/runtime/test_backend_{tensorrt,onnxruntime}.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _host_allows_tf32(torch) -> None:
    """What a host program may do before calling us: TF32 for matmuls and convolutions."""
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"


def check_cuda_python(torch) -> dict:
    from deramos_rt.backends import gpu_name
    from deramos_rt.backends.tensorrt import _Cuda, compute_capability

    cuda = _Cuda(0)
    try:
        data = np.arange(1 << 20, dtype=np.float32)
        cuda.upload("x", data)
        first = cuda._buffers["x"]
        cuda.upload("x", data[:1000])  # fits: the same buffer
        back = cuda.download({"y": ("x", (1000,), np.float32)})["y"]
        reused = cuda._buffers["x"] == first
    finally:
        cuda.close()
    capability = compute_capability(0)
    torch_capability = torch.cuda.get_device_capability(0)
    name = gpu_name(0)
    ok = bool(np.array_equal(back, data[:1000]) and reused and capability == tuple(torch_capability)
              and name == torch.cuda.get_device_name(0))
    return {"status": "passed" if ok else "failed", "capability": list(capability), "gpu_name": name,
            "torch_gpu_name": torch.cuda.get_device_name(0), "round_trip_equal": bool(np.array_equal(back, data[:1000])),
            "buffer_reused": reused}


def check_tf32_switch(torch) -> dict:
    from deramos_rt.backends.aoti import fp32_math

    _host_allows_tf32(torch)
    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(2048, 2048, device="cuda", generator=gen)
    b = torch.randn(2048, 2048, device="cuda", generator=gen)
    exact = (a.double() @ b.double())
    x = torch.randn(8, 64, 4000, device="cuda", generator=gen)
    w = torch.randn(128, 64, 9, device="cuda", generator=gen)
    conv_exact = torch.nn.functional.conv1d(x.double(), w.double())

    def errors():
        mm = float(((a @ b).double() - exact).abs().max() / exact.abs().max())
        conv = float((torch.nn.functional.conv1d(x, w).double() - conv_exact).abs().max() / conv_exact.abs().max())
        return mm, conv

    outside = errors()
    with fp32_math(torch):
        inside = errors()
    restored = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    ok = inside[0] < 1e-5 and inside[1] < 1e-5 and restored == ("tf32", "tf32")
    return {"status": "passed" if ok else "failed",
            "relative_error_host_tf32": {"matmul": outside[0], "conv": outside[1]},
            "relative_error_fp32_math": {"matmul": inside[0], "conv": inside[1]}, "restored": list(restored)}


def _raw_errors(backend, parts, manifest, torch) -> dict:
    """Max |backend - torch float64| / max |torch float64| per graph on seeded inputs (batch 3, 5 tokens).

    fp32 lands near 1e-6 of the outputs' scale, TF32 (10-bit mantissa) near 1e-3.
    """
    from deramos_rt.backends.onnxruntime import manifest_feed

    out = {}
    for graph, part in zip(("audio", "text", "ta"), parts):
        feed = manifest_feed(manifest, graph, batch=3, tokens=5)
        got = getattr(backend, f"run_{graph}")(*feed.values())
        got = got if isinstance(got, tuple) else (got,)
        with torch.no_grad():
            ref = part.double()(*[torch.from_numpy(v) if v.dtype == np.int64 else torch.from_numpy(v).double()
                                  for v in feed.values()])
        ref = ref if isinstance(ref, tuple) else (ref,)
        out[graph] = max(float(np.abs(g.astype(np.float64) - r.numpy()).max() / max(np.abs(r.numpy()).max(), 1e-12))
                         for g, r in zip(got, ref))
    return out


def check_aoti_cuda(torch, work: Path) -> dict:
    import deramos_rt.backends.aoti as aoti_backend
    from deramos_rt.bundle import load_bundle
    from export.testing import tiny_bundle
    from training.checkpoint import load_run
    from training.split import split_model

    torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = "none"
    start = time.perf_counter()
    bundle_dir = tiny_bundle(work / "aoti", aoti=True, aoti_device="cuda", slim=False, parity_files=2, parity_random=6)
    built = round(time.perf_counter() - start, 1)
    bundle = load_bundle(bundle_dir)
    parity = json.loads((bundle_dir / "parity.json").read_text()).get("aoti", {})
    result = {"build_seconds": built, "aoti_section": {k: v for k, v in (bundle.manifest["aoti"] or {}).items()
                                                       if k in ("device", "isa", "gpu", "torch_version")},
              "parity": {k: v for k, v in parity.items() if k != "detail"}}
    if not bundle.manifest["aoti"]:
        return {**result, "status": "failed: the packages were dropped"}
    model, _ = load_run(bundle_dir.parent / "run")
    parts = split_model(model.eval())
    _host_allows_tf32(torch)
    backend = aoti_backend.AotiBackend(bundle)
    result["raw_relative_fp32_math"] = _raw_errors(backend, parts, bundle.manifest, torch)
    real = aoti_backend.fp32_math
    aoti_backend.fp32_math = lambda torch: __import__("contextlib").nullcontext()  # what the old code did
    try:
        result["raw_relative_host_tf32"] = _raw_errors(backend, parts, bundle.manifest, torch)
    finally:
        aoti_backend.fp32_math = real
    backend.close()
    ok = parity.get("status") == "passed" and max(result["raw_relative_fp32_math"].values()) < 1e-4
    return {**result, "status": "passed" if ok else "failed"}


def check_ort_placement() -> dict:
    import onnxruntime as ort

    has = hasattr(ort.InferenceSession, "get_provider_graph_assignment_info")
    return {"status": "passed" if has else "failed: this onnxruntime cannot report node placement",
            "onnxruntime": ort.__version__, "providers": ort.get_available_providers()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".cache/gpu-checks-27"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "checks_27.json"
    import torch

    results = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    parts = [("cuda_python", lambda: check_cuda_python(torch)), ("tf32_switch", lambda: check_tf32_switch(torch)),
             ("aoti_cuda", lambda: check_aoti_cuda(torch, args.out)), ("ort_placement", check_ort_placement)]
    for name, run in parts:
        if not torch.cuda.is_available() and name != "ort_placement":
            results[name] = {"status": "skipped: no CUDA GPU"}
        else:
            try:
                results[name] = run()
            except Exception as exc:  # one part failing must not hide the others
                results[name] = {"status": f"failed: {type(exc).__name__}: {exc}",
                                 "trace": traceback.format_exc()[-2000:]}
        print(f"[gpu_checks_27] {name}: {json.dumps(results[name])[:2000]}", flush=True)
        path.write_text(json.dumps(results, indent=1) + "\n")
    failed = [n for n, _ in parts if str(results[n]["status"]).startswith("failed")]
    print(f"[gpu_checks_27] {'FAILED: ' + ', '.join(failed) if failed else 'all passed or skipped'}; {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
