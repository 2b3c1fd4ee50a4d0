"""Derived variants of the fp32 graphs: int8 for CPUs, fp16 for GPUs.

* int8: ONNX Runtime dynamic quantisation of the encoders' weight MatMul / Gemm nodes (weights int8 per output
  channel, activations quantised per call). On transformers it is several times more accurate than static
  QDQ quantisation (docs/serving notes), and it needs no calibration data. ``reduce_range`` (7-bit
  weights) keeps the U8S8 kernels from saturating on CPUs without VNNI, where a bundle may be run even
  when it was built on a VNNI machine. Activation x activation MatMuls (attention scores) stay fp32.
* fp16: ``onnxruntime.transformers.float16`` with fp32 inputs and outputs (Casts at the edges), and the
  numerically touchy parts kept fp32: normalisation, softmax, reductions, exp/log/pow, and the audio front
  end up to its log (power spectra overflow fp16's 65504).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

RECIPES = {
    "int8": "onnxruntime.quantization.quantize_dynamic: encoder MatMul+Gemm weights QInt8 per channel, "
            "reduce_range; encoders under 16 MB, audio front-end projection, heads and TA graph fp32",
    "fp16": "onnxruntime.transformers.float16: keep_io_types, fp32 kept for norms/softmax/reductions/front end",
}
# Ops kept in fp32 in the fp16 graphs (on top of ONNX Runtime's default block list).
FP16_FP32_OPS = ["LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceMax", "Pow", "Sqrt", "Exp",
                 "Log", "Erf", "InstanceNormalization", "BatchNormalization"]


def encoder_weight_nodes(path: str | Path) -> list[str]:
    """MatMul / Gemm nodes of the frozen encoder (``/encoder/...``) whose second input is a weight."""
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")
            and n.name.startswith("/encoder/") and len(n.input) > 1 and n.input[1] in weights]


# Encoders with fewer weight bytes than this stay fp32 in the int8 variant: they cost little time, and a
# small encoder's quantisation error showed in the scores (0.15 MOS on the default model's 64-d audio).
MIN_QUANT_BYTES = 16_000_000


def _weight_bytes(path: Path, nodes: list[str]) -> int:
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    sizes = {t.name: 4 * int(np.prod(t.dims)) for t in model.graph.initializer}
    wanted = set(nodes)
    return sum(sizes.get(n.input[1], 0) for n in model.graph.node if n.name in wanted)


def to_int8(src: str | Path, dst: str | Path, keep_first: bool = False, min_bytes: int = MIN_QUANT_BYTES) -> Path:
    """Dynamic int8 quantisation of the encoder's weight MatMul / Gemm nodes of ``src`` into ``dst``.

    ``keep_first`` leaves the first of those nodes fp32 (for audio graphs: the product with the front end).
    Graphs whose quantisable weights total less than ``min_bytes`` are not quantised (``src`` is returned).

    The trained heads stay fp32: they cost little time, and they are where the scores are formed (on
    models whose scores vary little, their quantisation noise alone reorders clips). A graph with no encoder
    (the TA graph) is not quantised at all: ``src`` itself is returned and the int8 variant shares it.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.graphs import graph_files

    src, dst = Path(src), Path(dst)
    nodes = encoder_weight_nodes(src)
    if _weight_bytes(src, nodes) < min_bytes:
        return src
    if keep_first:
        # The audio encoder's first weight product reads the front end's (log-)spectral features, whose
        # wide dynamic range per-tensor 8-bit activations resolve poorly (0.2 MOS on the default model).
        nodes = nodes[1:]
    if not nodes:
        return src
    external = len(graph_files(src)) > 1
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # the quantiser logs a line per tensor on the root logger
    try:
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul", "Gemm"], per_channel=True, reduce_range=True,
                         weight_type=QuantType.QInt8, nodes_to_quantize=nodes, use_external_data_format=external,
                         extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    if external:  # the quantiser names external data after the output; make it one file next to the graph
        from export.graphs import load_model, save_model

        save_model(load_model(dst), dst)
    return dst


def front_end_nodes(model) -> list[str]:
    """Names of the first Log node of a graph and every node it depends on (the audio front end)."""
    nodes = list(model.graph.node)
    producer = {out: node for node in nodes for out in node.output}
    first_log = next((n for n in nodes if n.op_type == "Log"), None)
    if first_log is None:
        return []
    seen, stack = {}, [first_log]
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen[node.name] = node
        stack.extend(producer[i] for i in node.input if i in producer)
    return sorted(seen)


def to_fp16(src: str | Path, dst: str | Path) -> Path:
    """fp16 copy of ``src`` with fp32 inputs/outputs and the touchy ops kept fp32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from export.graphs import load_model, save_model

    model = load_model(src)
    for i, node in enumerate(model.graph.node):  # the block list addresses nodes by name
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=model.ByteSize() > 2e9,
                                         op_block_list=list(DEFAULT_OP_BLOCK_LIST) + FP16_FP32_OPS,
                                         node_block_list=front_end_nodes(model))
    _drop_cast_round_trips(converted)
    save_model(converted, dst)
    return Path(dst)


def _drop_cast_round_trips(model) -> int:
    """Connect fp32 nodes directly where the converter routed a value fp32 -> fp16 -> fp32 between them.

    The converter casts every kept-fp32 node's output to fp16 and back before the next kept-fp32 node, so
    a chain of kept nodes still loses range between its steps (a power spectrum overflows, the log's
    epsilon underflows to 0 and the log gives -inf). Returns the number of round trips removed.
    """
    from onnx import TensorProto

    nodes = list(model.graph.node)
    producer = {out: n for n in nodes for out in n.output}

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    removed = 0
    for node in nodes:
        for i, name in enumerate(node.input):
            up = producer.get(name)
            if up is None or cast_to(up) != TensorProto.FLOAT:
                continue
            mid = producer.get(up.input[0])
            if mid is None or cast_to(mid) != TensorProto.FLOAT16:
                continue
            source = producer.get(mid.input[0])
            # Only bypass when the fp16 value came from a node that computes in fp32 (not another Cast).
            if source is not None and source.op_type != "Cast":
                node.input[i] = mid.input[0]
                removed += 1
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    while True:  # drop the Casts nobody reads any more
        dead = [n for n in model.graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    return removed


def cpu_features() -> dict[str, object]:
    """The CPU model and the SIMD features int8 speed depends on (from /proc/cpuinfo on Linux)."""
    import platform

    flags, model_name = set(), platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "model name":
                model_name = value.strip()
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
    return {"model": model_name, **{f: f in flags for f in wanted}}
