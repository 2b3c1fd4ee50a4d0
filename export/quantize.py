"""Derived variants of the fp32 graphs: int8 for CPUs, fp16 for GPUs.

* int8: ONNX Runtime dynamic quantisation of the encoders' weight MatMul / Gemm nodes (weights int8,
  activations quantised per call). On transformers it is several times more accurate than static QDQ
  quantisation (docs/serving notes), and it needs no calibration data. Activation x activation MatMuls
  (attention scores) stay fp32. The recipe's options (:class:`Int8Options`: per-channel or per-tensor
  weights, ``reduce_range``, which op types and nodes) are chosen at export by :func:`tune_int8`: every
  alternative is timed on this CPU and the fastest that passes the int8 parity limits is kept; the choice,
  what was tried and the CPU's features go into the manifest. ``reduce_range`` (7-bit weights) keeps the
  U8S8 kernels of CPUs without VNNI from saturating; full-range weights are only tried on a VNNI CPU and
  are then recorded as needing VNNI (``auto`` passes such int8 graphs over elsewhere).
* fp16: ``onnxruntime.transformers.float16`` with fp32 inputs and outputs (Casts at the edges), and the
  numerically touchy parts kept fp32: normalisation, softmax, reductions, exp/log/pow, and the audio front
  end up to its log (power spectra overflow fp16's 65504).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from deramos_rt.backends.calibration import VNNI_FLAGS, cpu_features, order_with_margin  # noqa: F401 (re-export)

log = logging.getLogger(__name__)

RECIPES = {
    "fp16": "onnxruntime.transformers.float16: keep_io_types, fp32 kept for norms/softmax/reductions/front end",
}
# Op types whose nodes an int8 recipe may quantise (ConvInteger only when an alternative asks for Conv).
INT8_KERNEL_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "ConvInteger")
# Ops kept in fp32 in the fp16 graphs (on top of ONNX Runtime's default block list).
FP16_FP32_OPS = ["LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceMax", "Pow", "Sqrt", "Exp",
                 "Log", "Erf", "InstanceNormalization", "BatchNormalization"]


@dataclasses.dataclass(frozen=True)
class Int8Options:
    """One dynamic-int8 recipe.

    Attributes:
        per_channel: one weight scale per output channel (else one per tensor).
        reduce_range: 7-bit weights (safe on CPUs without VNNI; not needed with VNNI).
        conv: also quantise the encoder's weight Convs (ConvInteger).
        nodes: ``all`` encoder weight products, or ``large`` (those with at least the median weight size).
    """

    per_channel: bool = True
    reduce_range: bool = True
    conv: bool = False
    nodes: str = "all"

    @property
    def label(self) -> str:
        return (f"{'pc' if self.per_channel else 'pt'}-{'rr' if self.reduce_range else 'full'}"
                f"{'-conv' if self.conv else ''}{'-large' if self.nodes == 'large' else ''}")

    @property
    def op_types(self) -> tuple[str, ...]:
        return ("MatMul", "Gemm", "Conv") if self.conv else ("MatMul", "Gemm")

    def describe(self) -> str:
        """The recipe in words (the manifest's ``recipe``)."""
        return (f"onnxruntime.quantization.quantize_dynamic: encoder {'+'.join(self.op_types)} weights QInt8 "
                f"{'per channel' if self.per_channel else 'per tensor'}, "
                f"{'reduce_range (7-bit)' if self.reduce_range else 'full range (needs VNNI)'}, "
                f"{'every' if self.nodes == 'all' else 'the larger half of the'} weight products; encoders under "
                "16 MB, audio front-end projection, heads and TA graph fp32")


DEFAULT_INT8 = Int8Options()
RECIPES["int8"] = DEFAULT_INT8.describe()


def int8_alternatives(vnni: bool, has_conv: bool) -> list[Int8Options]:
    """The recipes :func:`tune_int8` times, today's default first.

    Full-range weights only where the build CPU has VNNI (elsewhere they can saturate); Conv quantisation
    only for encoders with weight Convs. The ``large``-nodes recipes are a fallback for when none of these
    pass the parity limits (see :func:`tune_int8`).
    """
    ranges = (True, False) if vnni else (True,)
    out = [Int8Options(per_channel=pc, reduce_range=rr) for rr in ranges for pc in (True, False)]
    if has_conv:
        out.append(Int8Options(per_channel=True, reduce_range=not vnni, conv=True))
    return out


def encoder_weight_nodes(path: str | Path, op_types=("MatMul", "Gemm")) -> list[str]:
    """Nodes of ``op_types`` in the frozen encoder (``/encoder/...``) whose second input is a weight."""
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in op_types
            and n.name.startswith("/encoder/") and len(n.input) > 1 and n.input[1] in weights]


# Encoders with fewer weight bytes than this stay fp32 in the int8 variant: they cost little time, and a
# small encoder's quantisation error showed in the scores (0.15 MOS on the default model's 64-d audio).
MIN_QUANT_BYTES = 16_000_000


def _weight_sizes(path: Path, nodes: list[str]) -> dict[str, int]:
    """Bytes of each node's weight (its second input)."""
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    sizes = {t.name: 4 * int(np.prod(t.dims)) for t in model.graph.initializer}
    wanted = set(nodes)
    return {n.name: sizes.get(n.input[1], 0) for n in model.graph.node if n.name in wanted}


def _weight_bytes(path: Path, nodes: list[str]) -> int:
    return sum(_weight_sizes(path, nodes).values())


def select_nodes(path: str | Path, keep_first: bool, options: Int8Options = DEFAULT_INT8) -> list[str]:
    """The nodes of ``path`` an int8 recipe quantises (see :func:`to_int8`)."""
    path = Path(path)
    nodes = encoder_weight_nodes(path, options.op_types)
    if keep_first:
        # The audio encoder's first weight product reads the front end's (log-)spectral features, whose
        # wide dynamic range per-tensor 8-bit activations resolve poorly (0.2 MOS on the default model).
        nodes = nodes[1:]
    if options.nodes == "large" and nodes:
        sizes = _weight_sizes(path, nodes)
        median = float(np.median(list(sizes.values())))
        nodes = [n for n in nodes if sizes.get(n, 0) >= median]
    return nodes


def to_int8(src: str | Path, dst: str | Path, keep_first: bool = False, min_bytes: int = MIN_QUANT_BYTES,
            options: Int8Options = DEFAULT_INT8) -> Path:
    """Dynamic int8 quantisation of the encoder's weight products of ``src`` into ``dst``.

    ``keep_first`` leaves the first of those nodes fp32 (for audio graphs: the product with the front end).
    Graphs whose quantisable weights total less than ``min_bytes`` are not quantised (``src`` is returned).

    The trained heads stay fp32: they cost little time, and they are where the scores are formed (on
    models whose scores vary little, their quantisation noise alone reorders clips). A graph with no encoder
    (the TA graph) is not quantised at all: ``src`` itself is returned and the int8 variant shares it.
    """
    src, dst = Path(src), Path(dst)
    if _weight_bytes(src, encoder_weight_nodes(src)) < min_bytes:
        return src
    nodes = select_nodes(src, keep_first, options)
    if not nodes:
        return src
    return quantize_nodes(src, dst, nodes, options)


def quantize_nodes(src: str | Path, dst: str | Path, nodes: list[str], options: Int8Options = DEFAULT_INT8) -> Path:
    """Quantise exactly ``nodes`` of ``src`` with ``options`` into ``dst``, whatever their size.

    Raises:
        RuntimeError: the result holds no int8 kernel node (nothing was quantised).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.graphs import graph_files

    src, dst = Path(src), Path(dst)
    external = len(graph_files(src)) > 1
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs a line per tensor (and a pre-processing hint) on the root logger
    try:
        quantize_dynamic(src, dst, op_types_to_quantize=list(options.op_types), per_channel=options.per_channel,
                         reduce_range=options.reduce_range, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                         use_external_data_format=external, extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    if external:  # the quantiser names external data after the output; make it one file next to the graph
        from export.graphs import load_model, save_model

        save_model(load_model(dst), dst)
    if not int8_kernel_nodes(dst):
        raise RuntimeError(f"quantising {len(nodes)} node(s) of {src.name} produced no int8 kernel node")
    return dst


def int8_kernel_nodes(path: str | Path) -> int:
    """How many int8 kernel nodes (:data:`INT8_KERNEL_OPS`) a graph holds: 0 means it is not int8 at all."""
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    return sum(1 for n in model.graph.node if n.op_type in INT8_KERNEL_OPS)


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


# ------------------------------------------------------------------------------------------ int8 tuning

def tune_int8(model, tokenizer, work: str | Path, manifest: dict, files: int = 8, random_clips: int = 24,
              repeats: int = 5) -> dict | None:
    """Choose the int8 recipe of a bundle being built: the fastest alternative that passes the int8 limits.

    Every alternative of :func:`int8_alternatives` is quantised, timed on this CPU through the runtime's
    own backend (interleaved, median of ``repeats``), then checked fastest first against the torch model on
    the parity gate's own inputs (``files`` generated files + ``random_clips`` signals) and limits; the first
    that passes is kept. When none does, the ``large``-nodes recipe is tried; failing that the default stays
    (and the gate drops int8 with its reason). The kept graphs replace ``<graph>.int8.onnx``; the manifest's
    int8 entry gets ``recipe`` and ``quantisation`` (choice, what was tried, timings, CPU features) and is
    written.

    Args:
        model, tokenizer: the torch model and its tokenizer (the parity reference).
        work: the bundle folder being built (manifest written, int8 graphs made with the default recipe).
        manifest: its manifest, updated in place.
        files, random_clips: the parity gate's inputs.
        repeats: timing rounds (3 at most where one call takes over 2 s: MuQ-large).

    Returns:
        The ``quantisation`` record, or None when the bundle has no int8 variant.
    """
    from deramos_rt.bundle import GRAPHS, write_manifest

    work = Path(work)
    entry = manifest.get("variants", {}).get("int8")
    if entry is None:
        return None
    fp32 = manifest["variants"]["fp32"]["files"]
    graphs = [g for g in GRAPHS if entry["files"][g] != fp32[g]]
    features = cpu_features()
    record = {"cpu": features, "graphs": graphs, "tried": []}
    if not graphs:
        entry["quantisation"] = {**record, "choice": None, "why": "no graph is large enough to quantise"}
        return entry["quantisation"]
    vnni = any(features.get(f) for f in VNNI_FLAGS)
    has_conv = any(encoder_weight_nodes(work / fp32[g], ("Conv",)) for g in graphs)
    made = {DEFAULT_INT8: {g: work / entry["files"][g] for g in graphs}}
    for options in int8_alternatives(vnni, has_conv)[1:]:
        _add_alternative(work, fp32, graphs, options, made, record)
    seconds = _time_alternatives(work, manifest, made, repeats)
    check = _parity_checker(model, tokenizer, work, manifest, files, random_clips)
    # Fastest first; the portable default (earlier in the list) wins a difference inside the timing noise.
    order = order_with_margin(list(made), lambda o: 1.0 / float(np.median(seconds[o])))
    chosen = _first_passing(order, made, check, seconds, record)
    if chosen is None:
        fallback = Int8Options(nodes="large")
        if _add_alternative(work, fp32, graphs, fallback, made, record):
            chosen = _first_passing([fallback], made, check, {}, record)
    chosen = chosen or DEFAULT_INT8
    _keep(work, graphs, made, chosen)
    entry["recipe"] = chosen.describe()
    entry["quantisation"] = {**record, "choice": dataclasses.asdict(chosen), "label": chosen.label,
                             "needs_vnni": not chosen.reduce_range,
                             "timing": f"model-only seconds per call of the quantised graphs ({' + '.join(graphs)}; 2 "
                                       f"items), median of {len(next(iter(seconds.values())))} interleaved rounds of at "
                                       "least 0.2 s; order: fastest first, the default recipe first within 5 %"}
    log.info("int8 recipe %s (%s)", chosen.label, ", ".join(f"{t['label']}: {t.get('parity', t.get('error'))}"
                                                           for t in record["tried"]))
    write_manifest(work, manifest)
    return entry["quantisation"]


def _add_alternative(work: Path, fp32: dict, graphs: list[str], options: Int8Options, made: dict,
                     record: dict) -> bool:
    """Quantise ``graphs`` with ``options`` into ``<graph>.int8.<label>.onnx``; a failure is recorded, not raised."""
    try:
        made[options] = {g: quantize_nodes(work / fp32[g], work / f"{g}.int8.{options.label}.onnx",
                                           select_nodes(work / fp32[g], g == "audio", options), options)
                         for g in graphs}
        return True
    except Exception as exc:  # the quantiser raises many types (unsupported node, no int8 kernel): skip it
        record["tried"].append({"label": options.label, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
        _remove_files(work.glob(f"*.int8.{options.label}.onnx*"))
        return False


def _bundle_with(work: Path, manifest: dict, files: dict[str, Path]):
    """A Bundle object whose int8 variant uses ``files`` (graph -> path) for the quantised graphs."""
    import copy

    from deramos_rt.bundle import building_view

    trial = copy.deepcopy(manifest)
    trial["variants"]["int8"]["files"].update({g: p.name for g, p in files.items()})
    return building_view(work, trial, "int8-tuning")


def _time_alternatives(work: Path, manifest: dict, made: dict, repeats: int, round_s: float = 0.2) -> dict:
    """{options: [seconds per call, one per round]} of the quantised graphs through the runtime's backend
    (2 clips and / or 2 prompts per call), rounds interleaved, each at least ``round_s`` long."""
    from deramos_rt.backends.onnxruntime import OnnxRuntimeBackend
    from export.calibrate import interleave, per_call

    backends = {o: OnnxRuntimeBackend(_bundle_with(work, manifest, files), precision="int8", device="cpu")
                for o, files in made.items()}
    bundle = next(iter(backends.values())).bundle
    waves = (0.1 * np.random.default_rng(0).standard_normal((2, bundle.protocol.num_samples))).astype(np.float32)
    tokens = bundle.tokenizer()(["a calm piano piece with a slow tempo", "loud rock song with drums"])
    graphs = next(iter(made.values())).keys()

    def call(backend):
        def run() -> None:
            if "audio" in graphs:
                backend.run_audio(waves)
            if "text" in graphs:
                backend.run_text(tokens.input_ids, tokens.attention_mask)
        return run

    try:
        warm = max(per_call(call(b), 0.0) for b in backends.values())  # warm-up
        repeats = min(repeats, 3) if warm > 2.0 else repeats
        return interleave({o: (lambda b=b: per_call(call(b), round_s)) for o, b in backends.items()}, repeats)
    finally:
        for backend in backends.values():
            backend.close()


def _parity_checker(model, tokenizer, work: Path, manifest: dict, files: int, random_clips: int):
    """check(files) -> None when an int8 alternative meets the int8 limits on the gate's inputs, else why not."""
    import tempfile

    from deramos_rt.backends.onnxruntime import OnnxRuntimeBackend
    from deramos_rt.bundle import building_view
    from export import verify

    protocol = building_view(work, manifest, "int8-tuning").protocol
    with tempfile.TemporaryDirectory() as tmp:
        inputs = verify.parity_inputs(protocol, tmp, files=files, random_clips=random_clips)
    reference = verify.torch_scores(model, inputs, tokenizer)

    def check(graph_files: dict[str, Path]) -> str | None:
        bundle = _bundle_with(work, manifest, graph_files)
        backend = OnnxRuntimeBackend(bundle, precision="int8", device="cpu")
        members = manifest["model"].get("members")  # an ensemble: every member is gated, as in export.parity
        try:
            got = verify.backend_scores(backend, inputs, bundle.tokenizer(), bundle.bins, ensemble=bool(members))
        finally:
            backend.close()
        names = [m["name"] for m in members] if members else None
        return verify.gate("int8", verify.compare_scores(reference, got, names))
    return check


def _first_passing(order: list[Int8Options], made: dict, check, seconds: dict, record: dict):
    """The first recipe of ``order`` whose graphs pass ``check``; each one checked is recorded."""
    for options in order:
        reason = check(made[options])
        timing = seconds.get(options)
        record["tried"].append({"label": options.label, "options": dataclasses.asdict(options),
                                "seconds_median": round(float(np.median(timing)), 5) if timing else None,
                                "seconds_range": [round(min(timing), 5), round(max(timing), 5)] if timing else None,
                                "parity": "passed" if reason is None else f"failed: {reason}"})
        if reason is None:
            for other in order[order.index(options) + 1:]:
                if other in seconds:
                    record["tried"].append({"label": other.label, "options": dataclasses.asdict(other),
                                            "seconds_median": round(float(np.median(seconds[other])), 5),
                                            "parity": "not checked: after the kept recipe in speed order"})
            return options
    return None


def _keep(work: Path, graphs: list[str], made: dict, chosen: Int8Options) -> None:
    """Make ``chosen``'s graphs the ``<graph>.int8.onnx`` files and delete every other alternative's."""
    from export.graphs import graph_files, load_model, save_model

    for options, files in made.items():
        if options == chosen or options == DEFAULT_INT8:
            continue
        _remove_files(p for g in graphs for p in graph_files(files[g]))
    if chosen == DEFAULT_INT8:
        return
    for g in graphs:
        src, dst = made[chosen][g], work / f"{g}.int8.onnx"
        old = graph_files(dst)
        parts = graph_files(src)
        _remove_files(old)
        if len(parts) == 1:
            os.replace(src, dst)
        else:  # external data: re-save so the data file is named after the final graph
            save_model(load_model(src), dst)
            _remove_files(parts)


def _remove_files(paths) -> None:
    for path in paths:
        Path(path).unlink(missing_ok=True)
