"""ONNX Runtime backend: the bundle's three graphs in three InferenceSessions.

Devices: ``cpu`` (CPU provider), ``cuda`` / ``cuda:N`` (CUDA provider) and ``tensorrt`` / ``tensorrt:N``
(ONNX Runtime's TensorRT provider, CUDA behind it). ONNX Runtime does not fail when a requested provider
is missing: it warns and runs on the CPU. That would make a user's "GPU" figures CPU figures, so the
active providers are read back from every session and a GPU request that ended on the CPU is an error.
Sessions are created with ``enable_fallback=0``: ONNX Runtime would otherwise catch a provider failure
inside ``run()``, print "Falling back" and finish the job on the CPU. Node placement is counted once per
GPU session and logged, and a GPU session that placed nothing on the GPU is an error. ``fp32`` on CUDA is
true fp32 (``use_tf32=0``); ONNX Runtime's TensorRT provider has no TF32 switch, so it runs fp16 only.
docs/serving.md lists what each precision computes on each backend.

onnxruntime is imported inside the class, so ``import deramos_rt`` never needs it.
"""

from __future__ import annotations

import collections
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from deramos_rt.backends.base import BackendInfo, in_chunks
from deramos_rt.backends.ort_device import OrtDeviceIO, is_device_value
from deramos_rt.bundle import GRAPHS, Bundle
from deramos_rt.errors import DeramosError

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
GPU_EPS = (CUDA_EP, TRT_EP)
# Session-creation errors that mean the graph file itself is bad (ONNX Runtime's pybind error types).
BAD_MODEL_ERRORS = ("InvalidProtobuf", "NoSuchFile", "InvalidGraph")
RECORD_PLACEMENT = "session.record_ep_graph_assignment_info"
# Batch profile used when a bundle's manifest gives none (min, opt, max).
DEFAULT_BATCH_PROFILE = (1, 16, 64)
INSTALL_HINT = ("install the 'cpu' extra (pip install 'deramos_rt[cpu]', package onnxruntime) or, for GPUs, the "
                "'gpu' extra (package onnxruntime-gpu); never both: they overwrite each other")


def parse_device(device: str) -> tuple[str, int]:
    """``"cpu"`` -> ("cpu", 0); ``"cuda:1"`` -> ("cuda", 1); ``"tensorrt"`` -> ("tensorrt", 0)."""
    kind, _, index = str(device).partition(":")
    if kind not in ("cpu", "cuda", "tensorrt") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise DeramosError(f"unknown device {device!r} for the onnxruntime backend; use cpu, cuda, cuda:N, "
                           "tensorrt or tensorrt:N")
    return kind, int(index or 0)


def profile_ranges(manifest: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of every symbolic axis: ``batch`` from the manifest's profile, ``tokens`` up to
    the tokenizer's truncation length."""
    profile = manifest.get("profile") or {}
    max_tokens = int(manifest["text"]["max_tokens"])
    batch = tuple(int(v) for v in profile.get("batch", DEFAULT_BATCH_PROFILE))
    tokens = tuple(int(v) for v in profile.get("tokens", (1, min(32, max_tokens), max_tokens)))
    return {"batch": batch, "tokens": tokens}


def profile_shapes(manifest: dict[str, Any], graph: str) -> dict[str, tuple[tuple[int, ...], ...]]:
    """``{input name: (min shape, opt shape, max shape)}`` for every input of ``graph`` with a symbolic axis.

    Raises:
        DeramosError: an input has a symbolic axis the profile does not know.
    """
    ranges = profile_ranges(manifest)
    shapes = {}
    for spec in manifest["graphs"][graph]["inputs"]:
        dims = spec["shape"]
        if all(isinstance(d, int) for d in dims):
            continue
        rows = []
        for which in range(3):
            row = []
            for d in dims:
                if isinstance(d, int):
                    row.append(d)
                elif d in ranges:
                    row.append(ranges[d][which])
                else:
                    raise DeramosError(f"graph {graph!r} input {spec['name']!r} has symbolic axis {d!r} with no "
                                       f"profile range (known: {', '.join(ranges)})")
            rows.append(tuple(row))
        shapes[spec["name"]] = tuple(rows)
    return shapes


def trt_profile_options(manifest: dict[str, Any], graph: str) -> dict[str, str]:
    """The TensorRT provider's ``trt_profile_{min,opt,max}_shapes`` strings (``"name:1x16,mask:1x16"``)."""
    shapes = profile_shapes(manifest, graph)
    out = {}
    for i, key in enumerate(("min", "opt", "max")):
        out[f"trt_profile_{key}_shapes"] = ",".join(
            f"{name}:{'x'.join(str(d) for d in rows[i])}" for name, rows in shapes.items())
    return out


def batch_limit(manifest: dict[str, Any]) -> int:
    """The largest batch of the manifest's optimisation profile (what TensorRT engines are built for)."""
    return profile_ranges(manifest)["batch"][2]


def probe_feed(inputs: list[tuple[str, str, list]], sizes: dict[str, int], seed: int = 0,
               id_high: int = 100) -> dict[str, np.ndarray]:
    """Seeded inputs for a graph, to compare two runtimes on: int64 masks are ones, other int64 inputs
    token ids in [min(5, id_high - 1), id_high), floats small normal values.

    Args:
        inputs: ``(name, dtype, shape)`` per input; ``dtype`` contains ``int64`` or not; symbolic dims are
            names of ``sizes``.
        sizes: a size for every symbolic axis, e.g. ``{"batch": 3, "tokens": 5}``.
        seed: the generator's seed.
        id_high: one past the largest token id (the vocabulary size or less).
    """
    rng = np.random.default_rng(seed)
    feed = {}
    for name, dtype, dims in inputs:
        shape = [d if isinstance(d, int) else sizes[d] for d in dims]
        if "int64" in dtype:
            feed[name] = np.ones(shape, np.int64) if "mask" in name else \
                rng.integers(min(5, id_high - 1), id_high, shape).astype(np.int64)
        else:
            feed[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return feed


def manifest_feed(manifest: dict[str, Any], graph: str, batch: int = 3, tokens: int = 5, seed: int = 0):
    """:func:`probe_feed` for a bundle graph, its sizes kept inside the manifest's profile and vocabulary."""
    ranges = profile_ranges(manifest)
    sizes = {"batch": max(1, min(batch, ranges["batch"][2])), "tokens": max(1, min(tokens, ranges["tokens"][2]))}
    specs = [(s["name"], s["dtype"], s["shape"]) for s in manifest["graphs"][graph]["inputs"]]
    return probe_feed(specs, sizes, seed, id_high=min(100, int(manifest["text"].get("vocab_size") or 100)))


def default_cache_dir(bundle: Bundle) -> Path:
    """Per-bundle cache folder for provider engine caches (``$DERAMOS_CACHE`` or ``~/.cache/deramos_rt``)."""
    from deramos_rt.models import cache_root

    base = cache_root()
    return base / "ort-tensorrt" / bundle.sha256[:16]


def tensorrt_library_version() -> str | None:
    """The TensorRT library ONNX Runtime's TensorRT provider will load (None when it cannot be told).

    The dynamic loader resolves ``libnvinfer.so.10`` the same way for us and for the provider, so its
    ``getInferLibVersion()`` (NvInferRuntimeBase.h) names the library in use; pip metadata is the fallback.
    """
    import ctypes
    from importlib import metadata

    try:
        return f"lib{int(ctypes.CDLL('libnvinfer.so.10').getInferLibVersion())}"
    except (OSError, AttributeError):
        pass
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-libs", "tensorrt-cu12-libs"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def provider_cache_key(ort_version: str, trt_version: str | None, gpu: str | None) -> str | None:
    """The engine-cache folder name for one ONNX Runtime, TensorRT and GPU (None when one is unknown).

    The provider's own cache names hash the graph but not these three, and a stale engine from another
    TensorRT or GPU fails or, worse, runs: every change of them gets a fresh folder.
    """
    if not trt_version or not gpu:
        return None
    slug = re.sub(r"[^a-z0-9.]+", "-", gpu.lower()).strip("-")
    return f"ort{ort_version}-trt{trt_version}-{slug}"


def _one_line(exc: BaseException, limit: int = 600) -> str:
    text = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OnnxRuntimeBackend:
    """Runs a bundle's ONNX graphs with ONNX Runtime.

    Args:
        bundle: a loaded :class:`deramos_rt.bundle.Bundle`.
        device: ``cpu`` (default), ``cuda``, ``cuda:N``, ``tensorrt`` or ``tensorrt:N``.
        precision: ``fp32`` (default; true fp32 on CUDA, ``use_tf32=0``), ``int8`` (CPU only) or ``fp16``
            (GPU only; the default on ``tensorrt``, which cannot run fp32 without TF32).
        threads: intra-op threads per session (None or 0: ONNX Runtime's default, one per core).
        cache_dir: where the TensorRT provider keeps its engine and timing caches (one folder per ONNX
            Runtime version, TensorRT version and GPU model inside it).
        allow_fp16_cpu: let fp16 graphs run on the CPU provider (export parity checks only: slow, and
            not a serving configuration).

    Attributes:
        max_batch: the largest batch one call may take (the TensorRT provider's profile), None: no limit.

    Raises:
        DeramosError: onnxruntime missing, an unknown / absent / unsuitable precision, a GPU device whose
            provider is not active or placed no node, an unreadable graph file (named), or a provider that
            failed to start (its own message).
    """

    def __init__(self, bundle: Bundle, device: str | None = None, precision: str | None = None,
                 threads: int | None = None, *, cache_dir: str | Path | None = None, allow_fp16_cpu: bool = False):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise DeramosError(f"the onnxruntime backend needs ONNX Runtime: {INSTALL_HINT}") from exc
        self._ort = ort
        self.bundle = bundle
        kind, index = parse_device(device or "cpu")
        precision, threads = precision or ("fp16" if kind == "tensorrt" else "fp32"), threads or 0
        _check_precision(bundle, precision, "cuda" if allow_fp16_cpu and precision == "fp16" else kind)
        self._cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(bundle)
        self._outputs = {g: [o["name"] for o in bundle.manifest["graphs"][g]["outputs"]] for g in GRAPHS}
        self.max_batch = batch_limit(bundle.manifest) if kind == "tensorrt" else None
        # ONNX Runtime 1.31's CPU layout pass (NchwcTransformer, ORT_ENABLE_ALL) segfaults while loading an
        # ensemble's fp16 TA graph; fp16 on the CPU is the parity gate's fallback only, so it skips that pass.
        self._level = "ORT_ENABLE_EXTENDED" if precision == "fp16" and kind == "cpu" else "ORT_ENABLE_ALL"
        self._sessions, placements = {}, {}
        for graph in GRAPHS:
            providers = self._providers(kind, index, precision, graph)
            self._sessions[graph] = self._session(bundle.graph_path(precision, graph), providers, threads, kind)
            _check_active(kind, self._sessions[graph].get_providers(), graph)
            placements[graph] = _check_placement(kind, self._sessions[graph], graph)
        # Dynamic int8 quantisation takes one activation scale per tensor, over the whole batch: a clip's
        # (or prompt's) scores would then depend on its batch mates. Quantised graphs run one item at a time.
        self._per_item = {g for g in GRAPHS if precision == "int8" and "fp32" in bundle.variants
                          and bundle.graph_path("int8", g) != bundle.graph_path("fp32", g)}
        active = self._sessions["audio"].get_providers()
        name = "cpu" if kind == "cpu" else f"{kind}:{index}"
        placed = "".join(f"; {g} {p}" for g, p in placements.items() if p)
        self.info = BackendInfo("onnxruntime", precision, name,
                                f"providers={','.join(active)}; onnxruntime {ort.__version__}{placed}")
        # GPU providers: batches prepared on the device, audio_x kept there (backends/ort_device.py).
        self._device_io = None if kind == "cpu" else OrtDeviceIO(
            ort, self._sessions, self._outputs, self._providers(kind, index, precision, "audio"), "cuda", index)
        self.overlaps_batches = self._device_io is not None

    def input_stage(self, protocol):
        return self._device_io.stage(protocol) if self._device_io else None

    def _providers(self, kind: str, index: int, precision: str, graph: str) -> list:
        if kind == "cpu":
            return [CPU_EP]
        available = self._ort.get_available_providers()
        wanted = CUDA_EP if kind == "cuda" else TRT_EP
        if wanted not in available:
            raise DeramosError(f"device {kind!r} needs ONNX Runtime's {wanted}, but this onnxruntime "
                               f"{self._ort.__version__} offers only {', '.join(available)}: install the 'gpu' "
                               "extra (onnxruntime-gpu, and not onnxruntime beside it) on a machine with CUDA")
        cuda = (CUDA_EP, cuda_options(index, precision))
        if kind == "cuda":
            return [cuda, CPU_EP]
        return [(TRT_EP, self._trt_options(index, precision, graph)), cuda, CPU_EP]

    def _trt_options(self, index: int, precision: str, graph: str) -> dict[str, Any]:
        """The TensorRT provider's options: fp16, the bundle's profile, and caches only where they are keyed."""
        options = {
            "device_id": index,
            "trt_fp16_enable": precision == "fp16",
            "trt_max_workspace_size": 4 << 30,
            **trt_profile_options(self.bundle.manifest, graph),
        }
        from deramos_rt.backends import gpu_name

        key = provider_cache_key(self._ort.__version__, tensorrt_library_version(), gpu_name(index))
        if key is None:
            log.warning("TensorRT provider engine cache off: the TensorRT version or the GPU model cannot be "
                        "told here, and an engine cached for another one must never be reused")
            return options
        cache = self._cache_dir / key / graph
        cache.mkdir(parents=True, exist_ok=True)
        return {**options, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)}

    def _session(self, path: Path, providers: list, threads: int, kind: str = "cpu"):
        ort = self._ort
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, self._level)
        options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3  # errors only; provider fallbacks are checked below, not logged
        # The three graphs run in turn: a session's threads left spinning after its run take the cores the
        # next session and the decode threads need (spinning off: 1.5-2x model-only on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if kind != "cpu":
            options.add_session_config_entry(RECORD_PLACEMENT, "1")
        try:
            # enable_fallback=0: a provider that fails (now or inside run()) is an error, never a CPU retry.
            return ort.InferenceSession(str(path), sess_options=options, providers=providers, enable_fallback=0)
        except Exception as exc:  # ORT raises its own pybind types (InvalidProtobuf, Fail, EPFail, ...)
            if type(exc).__name__ in BAD_MODEL_ERRORS:
                raise DeramosError(f"ONNX Runtime cannot load graph file {path} (corrupt, truncated or not an "
                                   f"ONNX model?): {_one_line(exc)}") from exc
            names = ", ".join(p[0] if isinstance(p, tuple) else p for p in providers)
            raise DeramosError(f"ONNX Runtime could not create a session for {path} with {names}: "
                               f"{_one_line(exc)}") from exc

    def run_audio(self, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._device_io and is_device_value(waveform):
            return self._device_io.run_audio(waveform)
        wave = np.ascontiguousarray(waveform, dtype=np.float32)
        if wave.ndim != 2:
            raise DeramosError(f"run_audio expects a (batch, samples) waveform array, got shape {wave.shape}")
        if "audio" in self._per_item and len(wave) > 1:
            rows = [self._run("audio", {"waveform": wave[i:i + 1]}) for i in range(len(wave))]
            return tuple(np.concatenate(parts) for parts in zip(*rows))
        mi, audio_x = self._run("audio", {"waveform": wave})
        return mi, audio_x

    def run_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64)}
        if "text" in self._per_item:
            return self._text_per_item(feed["input_ids"], feed["attention_mask"])
        return self._run("text", feed)[0]

    def _text_per_item(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Each prompt alone and without padding (padding positions would enter the quantisation scale)."""
        rows = []
        for i in range(len(ids)):
            real = max(int(mask[i].sum()), 1)
            rows.append(self._run("text", {"input_ids": ids[i:i + 1, :real], "attention_mask": mask[i:i + 1, :real]})[0])
        # The token axis is second to last: text_x is (B, L, d), or (B, M, L, d) for an ensemble bundle.
        out = np.zeros((len(ids), *rows[0].shape[1:-2], ids.shape[1], rows[0].shape[-1]), dtype=np.float32)
        for i, row in enumerate(rows):
            out[i, ..., : row.shape[-2], :] = row[0]
        return out

    def run_ta(self, audio_x: np.ndarray, text_x: np.ndarray, text_mask: np.ndarray) -> np.ndarray:
        if self._device_io and is_device_value(audio_x):
            return self._device_io.run_ta(audio_x, text_x, text_mask)
        feed = {"audio_x": np.ascontiguousarray(audio_x, dtype=np.float32),
                "text_x": np.ascontiguousarray(text_x, dtype=np.float32),
                "text_mask": np.ascontiguousarray(text_mask, dtype=np.int64)}
        return self._run("ta", feed)[0]

    def _run(self, graph: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return in_chunks(lambda part: self._run_once(graph, part), feed, self.max_batch)

    def _run_once(self, graph: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        session = self._sessions[graph]
        try:
            return session.run(self._outputs[graph], feed)
        except Exception as exc:  # with fallback off a failing provider raises here (EPFail, Fail, ...)
            raise DeramosError(f"ONNX Runtime failed running the {graph} graph on "
                               f"{','.join(session.get_providers())}: {_one_line(exc)}") from exc

    def close(self) -> None:
        self._sessions.clear()


def cuda_options(index: int, precision: str) -> dict[str, Any]:
    """The CUDA provider's options (names as in ONNX Runtime's cuda_execution_provider_info.cc)."""
    return {
        "device_id": index,
        # Exhaustive search benchmarks conv algorithms per new shape (slow first calls); the
        # heuristic pick is stable and good for the audio front ends' strided convs.
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kNextPowerOfTwo",
        "do_copy_in_default_stream": True,
        # The provider's default is TF32 matmuls and convolutions (10-bit mantissa): fp32 means fp32.
        "use_tf32": 0 if precision == "fp32" else 1,
    }


def _check_precision(bundle: Bundle, precision: str, kind: str) -> None:
    from deramos_rt.bundle import PRECISIONS

    if precision not in PRECISIONS:
        raise DeramosError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "fp16" and kind == "cpu":
        raise DeramosError("the fp16 graphs are for GPUs: ONNX Runtime's CPU provider runs fp16 slowly or not "
                           "at all; use precision fp32 or int8 on the CPU")
    if precision == "int8" and kind != "cpu":
        raise DeramosError("the int8 graphs (dynamic quantisation) are for the CPU provider: use fp16 or fp32 on "
                           f"device {kind!r}")
    if precision == "fp32" and kind == "tensorrt":
        raise DeramosError("ONNX Runtime's TensorRT provider has no option to turn TensorRT's TF32 default off, "
                           "so its fp32 would compute TF32: use precision fp16 on device tensorrt, device cuda for "
                           "true fp32, or --backend tensorrt (fp32 engines built without TF32)")
    bundle.graph_path(precision, "audio")  # raises, naming the variants the bundle has


def _check_active(kind: str, active: list[str], graph: str) -> None:
    """A GPU request that ONNX Runtime silently served from the CPU is an error, never a fallback."""
    wanted = {"cuda": CUDA_EP, "tensorrt": TRT_EP}.get(kind)
    if wanted and wanted not in active:
        raise DeramosError(f"device {kind!r} was asked for but ONNX Runtime activated only {', '.join(active)} "
                           f"for the {graph} graph "
                           f"({wanted} failed to start: check the CUDA / cuDNN / TensorRT libraries); refusing "
                           "to run on the CPU instead")


def node_placement(session) -> tuple[collections.Counter, collections.Counter] | None:
    """(nodes per provider, op types of the nodes on the CPU provider), None when ONNX Runtime cannot say."""
    try:
        subgraphs = session.get_provider_graph_assignment_info()
    except Exception as exc:  # an onnxruntime before the API (AttributeError) or without the entry (Fail)
        log.debug("node placement unknown: %s", _one_line(exc))
        return None
    nodes, cpu_ops = collections.Counter(), collections.Counter()
    for subgraph in subgraphs:
        assigned = subgraph.get_nodes()
        nodes[subgraph.ep_name] += len(assigned)
        if subgraph.ep_name == CPU_EP:
            cpu_ops.update(node.op_type for node in assigned)
    return nodes, cpu_ops


def _check_placement(kind: str, session, graph: str) -> str:
    """Log where a GPU session's nodes run ("" on the CPU); a GPU session with no node on the GPU is an error.

    The CPU provider takes the nodes the GPU providers do not (shape arithmetic, unsupported ops) without
    a word, so the counts are logged once per session.
    """
    if kind == "cpu":
        return ""
    placement = node_placement(session)
    if placement is None:
        log.warning("%s graph: this onnxruntime cannot report node placement; only its active providers "
                    "were checked", graph)
        return ""
    nodes, cpu_ops = placement
    on_gpu = sum(nodes[ep] for ep in GPU_EPS)
    counts = ", ".join(f"{n} on {ep}" for ep, n in nodes.most_common())
    if on_gpu == 0:
        raise DeramosError(f"device {kind!r}: ONNX Runtime placed none of the {graph} graph's nodes on the GPU "
                           f"({counts}); refusing to run it on the CPU")
    ops = ", ".join(f"{op} x{n}" for op, n in cpu_ops.most_common(6))
    log.info("onnxruntime %s graph: %s%s", graph, counts, f" (CPU: {ops})" if ops else "")
    return f"{on_gpu}/{sum(nodes.values())} nodes on the GPU"
