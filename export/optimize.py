"""Graph rewrites for ONNX Runtime's CPU provider, found with its profiler, and the size rule for onnxslim.

Profiling the built-in model's audio graph (``SessionOptions.enable_profiling``, batch 8) put a third of
its kernel time in one node: the front end's 63-tap low-pass FIR, a 1-channel ``Conv`` with stride 4 on
the 160,000-sample waveform. ONNX Runtime runs it as im2col + a matrix product with one output column:
memory-bound, at a few GFLOP/s. :func:`fir_as_matmul` computes the same filter as one well-shaped matrix
product: the padded signal is cut into blocks of ``stride x M`` samples, each row joins ``b`` consecutive
blocks (reshape + shifted slices + concat, no gather), and a fixed (b x stride x M, M) banded matrix holding
the taps gives M outputs per row. That is a few times more multiply-adds than the direct filter but runs
at GEMM speed (3.6x faster for this node on a 2-core AVX-512 CPU, ``python -m export.optimize --profile``).
Only standard ops are used, so TensorRT and the CUDA provider run the rewritten graph too.

Every rewrite is checked by the caller's ``check`` (the rewritten graph's outputs against the original's)
and dropped, with a log line, when it changes them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# onnxslim's checks peaked near 14 GB on MuQ-large's 1.3 GB audio graph: graphs above this are slimmed only
# when asked (``--slim``).
SLIM_MAX_BYTES = 1_000_000_000
FIR_MIN_TAPS = 16  # shorter filters cost little and gain nothing from the rewrite
FIR_BLOCK = 16  # outputs per matrix row (M): 8-32 measured alike, 64+ slower (the band matrix grows)


def slim_allowed(path: str | Path, large: bool) -> bool:
    """True when ``path`` may go through onnxslim: at most :data:`SLIM_MAX_BYTES`, or ``large`` (``--slim``)."""
    from export.graphs import graph_files

    size = sum(p.stat().st_size for p in graph_files(path))
    if size > SLIM_MAX_BYTES and not large:
        log.info("not simplifying %s with onnxslim: %.2f GB > %.0f GB, where onnxslim's checks need many GB of "
                 "memory (pass --slim to simplify it anyway)", Path(path).name, size / 1e9, SLIM_MAX_BYTES / 1e9)
        return False
    return True


def optimize_graph(path: str | Path, check) -> list[str]:
    """Apply the rewrites to the graph at ``path`` in place when ``check`` accepts the result.

    Args:
        path: a single-file ONNX graph (graphs with external data are left alone: none of them has a FIR).
        check: ``check(candidate_path) -> str | None``: None when the candidate's outputs equal the original's.

    Returns:
        The rewrites applied (e.g. ``["fir_as_matmul:/encoder/Conv"]``); [] when none applied or none was kept.
    """
    import onnx

    from export.graphs import graph_files

    path = Path(path)
    if len(graph_files(path)) > 1:
        return []
    model = onnx.load_model(str(path))
    applied = fir_as_matmul(model)
    if not applied:
        return []
    candidate = path.with_name(path.stem + ".opt.onnx")
    onnx.save_model(model, str(candidate))
    reason = check(candidate)
    if reason is not None:
        log.warning("graph rewrite %s changed %s's outputs (%s); keeping the graph as exported", applied, path.name,
                    reason)
        candidate.unlink()
        return []
    os.replace(candidate, path)
    log.info("rewrote %s: %s", path.name, ", ".join(applied))
    return applied


# ------------------------------------------------------------------------------------------- FIR rewrite

def _constants(model) -> dict[str, np.ndarray]:
    """Initializers and Constant-node tensors by name."""
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
    return out


def _static_dims(model) -> dict[str, list]:
    """Value name -> dims (ints, or None for symbolic) from ONNX shape inference."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in values}


def _fir_plan(node, constants: dict, dims: dict) -> dict | None:
    """The parameters of a 1-in, 1-out channel, 1-D Conv with constant taps and a static length, else None."""
    attrs = {a.name: a for a in node.attribute}
    weight = constants.get(node.input[1]) if len(node.input) > 1 else None
    shape = dims.get(node.input[0])
    if weight is None or weight.ndim != 3 or weight.shape[:2] != (1, 1) or weight.shape[2] < FIR_MIN_TAPS:
        return None
    if not shape or len(shape) != 3 or shape[1] != 1 or not shape[2]:
        return None
    group = attrs["group"].i if "group" in attrs else 1
    dilations = list(attrs["dilations"].ints) if "dilations" in attrs else []
    if group != 1 or any(d != 1 for d in dilations):
        return None
    if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"", b"NOTSET"):
        return None
    bias = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and bias is None:
        return None
    taps, length = int(weight.shape[2]), int(shape[2])
    stride = int(attrs["strides"].ints[0]) if "strides" in attrs else 1
    pads = list(attrs["pads"].ints) if "pads" in attrs else [0, 0]
    outputs = (length + pads[0] + pads[1] - taps) // stride + 1
    block = FIR_BLOCK
    rows = -(-outputs // block)
    hop = stride * block
    per_row = -(-(stride * (block - 1) + taps) // hop)
    right = (rows + per_row - 1) * hop - length - pads[0]
    if outputs < 1 or right < 0:
        return None
    return {"taps": weight.reshape(-1).astype(np.float32), "length": length, "stride": stride, "left": pads[0],
            "right": right, "outputs": outputs, "rows": rows, "hop": hop, "per_row": per_row, "block": block,
            "bias": None if bias is None else float(np.asarray(bias).reshape(-1)[0])}


def band_matrix(taps: np.ndarray, stride: int, block: int, width: int) -> np.ndarray:
    """(width, block) matrix whose column j holds the taps from row ``stride * j``: a row of ``width`` input
    samples times it gives ``block`` consecutive outputs of the strided filter (cross-correlation, as Conv)."""
    out = np.zeros((width, block), np.float32)
    for j in range(block):
        out[stride * j: stride * j + len(taps), j] = taps
    return out


def _fir_nodes(node, plan: dict) -> tuple[list, list]:
    """Nodes and initializers that compute ``node``'s output with one matrix product.

    With blocks X (B, R + b - 1, hop) of the padded signal and the band matrix split into ``b`` slabs of
    ``hop`` rows, output row r is sum_i X[r + i] @ slab_i. One product X @ [slab_0 | ... | slab_b-1] then
    shifted column groups added: the signal is read once by the product, never copied into wider rows.
    """
    from onnx import helper, numpy_helper

    p = f"{node.name or node.output[0]}/fir"
    rows, block, hop, per_row = plan["rows"], plan["block"], plan["hop"], plan["per_row"]
    band = band_matrix(plan["taps"], plan["stride"], block, per_row * hop)
    slabs = np.concatenate([band[i * hop:(i + 1) * hop] for i in range(per_row)], axis=1)  # (hop, b * block)

    def const(name, value, dtype=np.int64):
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), f"{p}/{name}")

    inits = [const("flat", [0, plan["length"]]), const("pads", [0, plan["left"], 0, plan["right"]]),
             const("blocks", [0, rows + per_row - 1, hop]), const("axes", [1, 2]),
             numpy_helper.from_array(slabs, f"{p}/slabs"), const("joined", [0, 1, rows * block]),
             const("zero", [0]), const("count", [plan["outputs"]]), const("axis2", [2])]
    nodes = [helper.make_node("Reshape", [node.input[0], f"{p}/flat"], [f"{p}/x"], name=f"{p}/Reshape"),
             helper.make_node("Pad", [f"{p}/x", f"{p}/pads"], [f"{p}/padded"], name=f"{p}/Pad"),
             helper.make_node("Reshape", [f"{p}/padded", f"{p}/blocks"], [f"{p}/blk"], name=f"{p}/Blocks"),
             helper.make_node("MatMul", [f"{p}/blk", f"{p}/slabs"], [f"{p}/mm"], name=f"{p}/MatMul")]
    total = None
    for i in range(per_row):
        inits += [const(f"s{i}", [i, i * block]), const(f"e{i}", [i + rows, (i + 1) * block])]
        part = f"{p}/part{i}"
        nodes.append(helper.make_node("Slice", [f"{p}/mm", f"{p}/s{i}", f"{p}/e{i}", f"{p}/axes"], [part],
                                      name=f"{p}/Slice{i}"))
        if total is not None:
            nodes.append(helper.make_node("Add", [total, part], [f"{p}/sum{i}"], name=f"{p}/Add{i}"))
            part = f"{p}/sum{i}"
        total = part
    cropped = node.output[0] if plan["bias"] is None else f"{p}/nobias"
    nodes += [helper.make_node("Reshape", [total, f"{p}/joined"], [f"{p}/full"], name=f"{p}/Joined"),
              helper.make_node("Slice", [f"{p}/full", f"{p}/zero", f"{p}/count", f"{p}/axis2"], [cropped],
                               name=f"{p}/Crop")]
    if plan["bias"] is not None:
        inits.append(numpy_helper.from_array(np.asarray([plan["bias"]], np.float32), f"{p}/bias"))
        nodes.append(helper.make_node("Add", [cropped, f"{p}/bias"], [node.output[0]], name=f"{p}/Bias"))
    return nodes, inits


def fir_as_matmul(model) -> list[str]:
    """Rewrite every long 1-channel FIR ``Conv`` of ``model`` (in place) as a banded matrix product.

    Returns:
        ``["fir_as_matmul:<node name>", ...]`` for the nodes rewritten.
    """
    candidates = [n for n in model.graph.node if n.op_type == "Conv"]
    if not candidates:
        return []
    constants, dims = _constants(model), _static_dims(model)
    new_nodes, applied = [], []
    for node in model.graph.node:
        plan = _fir_plan(node, constants, dims) if node.op_type == "Conv" else None
        if plan is None:
            new_nodes.append(node)
            continue
        nodes, inits = _fir_nodes(node, plan)
        new_nodes.extend(nodes)
        model.graph.initializer.extend(inits)
        applied.append(f"fir_as_matmul:{node.name}")
    if applied:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
        used = {name for n in model.graph.node for name in n.input}
        dead = [t for t in model.graph.initializer if t.name not in used]
        for tensor in dead:  # the replaced Convs' taps
            model.graph.initializer.remove(tensor)
    return applied


# ------------------------------------------------------------------------------------------- profiling

def _session(path: Path, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _kernel_times(profile_file: str, skip_first: bool = True) -> tuple[Counter, Counter, int]:
    """Kernel microseconds by op type and by node from an ONNX Runtime profile, and the calls counted."""
    events = json.loads(Path(profile_file).read_text())
    by_op, by_node, seen = Counter(), Counter(), Counter()
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        name = event["name"][: -len("_kernel_time")]
        seen[name] += 1
        if skip_first and seen[name] == 1:  # the warm-up call
            continue
        by_op[event["args"].get("op_name", "?")] += event["dur"]
        by_node[name] += event["dur"]
    calls = max(seen.values(), default=1) - (1 if skip_first else 0)
    return by_op, by_node, max(calls, 1)


def compare(paths: dict[str, Path], feed: dict[str, np.ndarray], rounds: int = 5, top: int = 8) -> dict:
    """Graphs (e.g. before / after a rewrite) timed in interleaved rounds, then each profiled (interleaved).

    Returns:
        {label: {"ms_per_call": median wall ms, "ms_range", "profile": {"kernel_ms_per_call", "by_op" (share),
        "slowest_nodes" (ms per call)}}}.
    """
    from export.calibrate import interleave

    import time

    sessions = {k: _session(p) for k, p in paths.items()}

    def timed(session):
        def run():
            start = time.perf_counter()
            session.run(None, feed)
            return (time.perf_counter() - start) * 1000
        return run

    for session in sessions.values():
        session.run(None, feed)
    wall = interleave({k: timed(s) for k, s in sessions.items()}, rounds)
    out = {k: {"ms_per_call": round(float(np.median(v)), 3), "ms_range": [round(min(v), 3), round(max(v), 3)]}
           for k, v in wall.items()}
    with tempfile.TemporaryDirectory() as tmp:
        profiled = {k: _session(p, str(Path(tmp) / k)) for k, p in paths.items()}
        interleave({k: (lambda s=s: s.run(None, feed)) for k, s in profiled.items()}, rounds + 1)
        for k, session in profiled.items():
            by_op, by_node, calls = _kernel_times(session.end_profiling())
            total = sum(by_op.values()) or 1
            out[k]["profile"] = {"kernel_ms_per_call": round(total / calls / 1000, 3),
                                 "by_op": {o: round(v / total, 3) for o, v in by_op.most_common(top)},
                                 "slowest_nodes": {n: round(v / calls / 1000, 3) for n, v in by_node.most_common(top)}}
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m export.optimize --profile GRAPH``: profile an audio graph before and after the rewrites."""
    parser = argparse.ArgumentParser(prog="python -m export.optimize", description=main.__doc__.split(": ", 1)[1])
    parser.add_argument("--profile", required=True, type=Path, help="an audio graph (.onnx, input 'waveform')")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    import onnx

    model = onnx.load_model(str(args.profile))
    samples = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    feed = {model.graph.input[0].name: (0.1 * np.random.default_rng(0).standard_normal((args.batch, samples)))
            .astype(np.float32)}
    applied = fir_as_matmul(model)
    with tempfile.TemporaryDirectory() as tmp:
        rewritten = Path(tmp) / "rewritten.onnx"
        onnx.save_model(model, str(rewritten))
        result = compare({"before": args.profile, "after": rewritten}, feed, args.rounds)
    print(json.dumps({"graph": str(args.profile), "batch": args.batch, "rewrites": applied,
                      "load_average": os.getloadavg(), **result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
