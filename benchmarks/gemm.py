"""Measured matrix-multiply rates at a model's own shapes, per library and precision.

The FLOP-bound limits of the report divide counted FLOPs by these rates, so they are measured in the same
run as the throughput they bound: CPUs here differ (AVX2 only vs AVX-512 VNNI) by 2-5x.

* torch: ``x @ w.T`` (what ``nn.Linear`` runs), fp32 on CPU; fp32 / tf32-off, bf16 and fp16 on CUDA.
* ONNX Runtime fp32: a one-node ``MatMul`` graph with the weight as an initializer (as exported graphs hold it).
* ONNX Runtime int8: the same graph quantised with the bundle's own int8 recipe options
  (``export.quantize.quantize_nodes``: dynamic quantisation, ``DynamicQuantizeLinear`` + ``MatMulInteger``,
  which ONNX Runtime fuses into ``DynamicQuantizeMatMul``), whatever the graph's size: the bundle's size
  threshold would leave a one-MatMul probe fp32 and make its "int8" rate an fp32 rate. The quantised
  graph must hold int8 kernel nodes before it is timed (else :class:`NotInt8` is raised).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


class NotInt8(RuntimeError):
    """The "int8" probe graph holds no int8 kernel node: its rate would be an fp32 rate."""


def _best_rate(fn, flop: float, min_seconds: float, repeats: int = 3) -> float:
    """GFLOP/s of ``fn`` (best of ``repeats`` timed loops of at least ``min_seconds``), after a warm-up."""
    fn()
    best = 0.0
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = max(best, calls * flop / elapsed / 1e9)
    return best


def torch_cpu_rate(m: int, k: int, n: int, threads: int | None = None, min_seconds: float = 0.2) -> float:
    """GFLOP/s of an fp32 (m, k) @ (k, n) product in torch on the CPU."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen)
    with torch.inference_mode():
        return _best_rate(lambda: x @ w.T, 2.0 * m * k * n, min_seconds)


def matmul_graph(k: int, n: int, path: Path, seed: int = 0) -> Path:
    """A one-node ONNX ``MatMul`` (dynamic rows) with a constant (k, n) fp32 weight."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(seed).standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="gemm")], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def int8_probe(fp32: Path, dst: Path, options=None) -> Path:
    """The probe graph quantised with ``options`` (an ``export.quantize.Int8Options``; None: the default
    recipe), checked to hold int8 kernel nodes."""
    from export.quantize import DEFAULT_INT8, int8_kernel_nodes, quantize_nodes

    try:
        path = quantize_nodes(fp32, dst, ["gemm"], options or DEFAULT_INT8)
    except RuntimeError as exc:
        raise NotInt8(str(exc)) from exc
    if not int8_kernel_nodes(path):
        raise NotInt8(f"{path.name} holds no MatMulInteger / DynamicQuantizeMatMul node")
    return path


def ort_session(path: Path, threads: int = 0):
    """A CPU session set up as the runtime's onnxruntime backend sets its sessions up."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_rates(m: int, k: int, n: int, threads: int = 0, int8: bool = True,
              min_seconds: float = 0.2, int8_options=None) -> dict[str, float]:
    """GFLOP/s (GOP/s for int8) of ONNX Runtime's CPU MatMul at (m, k) x (k, n): ``fp32`` and ``int8``."""
    out = {}
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = matmul_graph(k, n, Path(tmp) / "gemm.fp32.onnx")
        paths = {"fp32": fp32}
        if int8:
            paths["int8"] = int8_probe(fp32, Path(tmp) / "gemm.int8.onnx", int8_options)
        for precision, path in paths.items():
            session = ort_session(path, threads)
            out[precision] = _best_rate(lambda s=session: s.run(None, {"x": x}), 2.0 * m * k * n, min_seconds)
    return out


def cuda_rates(m: int, k: int, n: int, min_seconds: float = 0.2) -> dict[str, float]:
    """GFLOP/s of torch matmul on CUDA at (m, k) x (k, n) for fp32 (TF32 off), tf32, bf16 and fp16."""
    import torch

    out = {}
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                              ("bf16", torch.bfloat16, False), ("fp16", torch.float16, False)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        w = torch.randn(n, k, device="cuda", dtype=dtype)

        def run():
            y = x @ w.T
            torch.cuda.synchronize()
            return y

        with torch.inference_mode():
            out[name] = _round(_best_rate(run, 2.0 * m * k * n, min_seconds))
    torch.backends.cuda.matmul.allow_tf32 = False
    return out


def dominant_shapes(shapes: dict[tuple[int, int, int], float], top: int = 2) -> list[tuple[int, int, int]]:
    """The (m, k, n) shapes that carry the most FLOPs (from :func:`benchmarks.flops.count`)."""
    return [s for s, _ in sorted(shapes.items(), key=lambda kv: -kv[1])[:top]]


PEAK_SHAPE = (1024, 1024, 1024)


def _round(rate: float) -> float:
    return float(f"{rate:.4g}")


def measure_cpu(shapes: list[tuple[int, int, int]], threads: int = 0, int8: bool = True,
                min_seconds: float = 0.2, peak: tuple[int, int, int] = PEAK_SHAPE, int8_options=None) -> dict:
    """Rates at each shape (plus :data:`PEAK_SHAPE`, a large square product that shows each library's
    best) and the best per library / precision.

    Args:
        int8_options: the bundle's int8 recipe (``export.quantize.Int8Options``; None: the default recipe).

    Returns:
        ``{"shapes": [{"m", "k", "n", "torch_fp32", "ort_fp32", "ort_int8"}], "best": {"torch_fp32": ...,
        "ort_fp32": ..., "ort_int8": ..., "fp32": max of the fp32 ones, "int8": ...}, "int8_recipe": label}``
        in GFLOP/s (GOP/s for int8).
    """
    rows = []
    for m, k, n in list(dict.fromkeys([*shapes, peak])):
        row = {"m": m, "k": k, "n": n, "torch_fp32": _round(torch_cpu_rate(m, k, n, None, min_seconds))}
        for precision, rate in ort_rates(m, k, n, threads, int8, min_seconds, int8_options).items():
            row[f"ort_{precision}"] = _round(rate)
        rows.append(row)
    out = {"shapes": rows, "best": _best(rows)}
    if int8:
        from export.quantize import DEFAULT_INT8

        out["int8_recipe"] = (int8_options or DEFAULT_INT8).label
    return out


def _best(rows: list[dict]) -> dict:
    best = {key: max(r[key] for r in rows) for key in rows[0] if key not in ("m", "k", "n")} if rows else {}
    if best:
        best["fp32"] = max(best["torch_fp32"], best.get("ort_fp32", 0.0))
        if "ort_int8" in best:
            best["int8"] = best["ort_int8"]
            best["int8_over_fp32"] = round(best["ort_int8"] / best["ort_fp32"], 2)
    return best


def best_of(runs: list[dict]) -> dict:
    """One :func:`measure_cpu` result from several (interleaved rounds): each rate's best over the rounds.

    A peak rate is best estimated by the fastest observation: on a shared machine a round measured while
    another job ran only shows less than the hardware does, and a limit must not be set too low.
    """
    good = [r for r in runs if "shapes" in r]
    if not good:
        return runs[0] if runs else {}
    rows = []
    for i, first in enumerate(good[0]["shapes"]):
        row = dict(first)
        for key in row:
            if key not in ("m", "k", "n"):
                row[key] = max(r["shapes"][i][key] for r in good)
        rows.append(row)
    return {**good[0], "shapes": rows, "best": _best(rows), "rounds": len(good)}
