"""TensorRT backend (TensorRT 10 Python API) and the engine builder it shares with ``export.tensorrt``.

A plan only loads on the TensorRT version and GPU compute capability it was built for, so a bundle keeps
engines under ``tensorrt/<key>/`` with ``key = trt<version>-sm<major><minor>`` and the manifest records
both. At load the backend picks the entry matching this machine. When none matches it rebuilds the
engines from the bundle's ONNX graphs into a cache folder keyed by TensorRT version, compute capability
and GPU model, and checks them against ONNX Runtime fp32 on the CPU (the limits export applies) before
their first use; a rebuild that misses them is deleted and refused. ``rebuild=False`` refuses instead of
rebuilding. Engines are built without TF32 (TensorRT allows it by default), so fp32 means fp32.

Every call binds every I/O tensor of the engine by name, checks each TensorRT return value
(``set_input_shape`` is False outside the optimisation profile), splits batches above the profile's
maximum (``max_batch``) and reuses its device buffers across calls. tensorrt and cuda-python are imported
lazily: neither can be installed on every machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deramos_rt.backends.base import BackendInfo, in_chunks
from deramos_rt.backends.onnxruntime import manifest_feed, parse_device, profile_shapes
from deramos_rt.bundle import GRAPHS, Bundle
from deramos_rt.errors import DeramosError
from deramos_rt.trust import require_native_trust

log = logging.getLogger(__name__)
WORKSPACE_BYTES = 4 << 30
# Largest |engine - ONNX Runtime fp32 on the CPU| over a graph's outputs, per precision (export and rebuild).
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2}
# What build_plan makes; a change here makes earlier rebuilt engines stale. 2: TF32 cleared.
BUILD_RECIPE = 2
INSTALL_HINT = ("TensorRT 10 is needed (pip install 'tensorrt-cu12>=10,<11' cuda-python on a CUDA machine; "
                "TensorRT 11 dropped the FP16 builder flag this bundle format uses)")


def import_tensorrt():
    """The ``tensorrt`` module (major version 10), or a DeramosError saying why not."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # a stub wheel fails on its missing shared libraries
        raise DeramosError(f"tensorrt is not usable here ({exc}); {INSTALL_HINT}") from exc
    if not str(trt.__version__).startswith("10."):
        raise DeramosError(f"tensorrt {trt.__version__} is installed; {INSTALL_HINT}")
    return trt


def cuda_runtime():
    """cuda-python's runtime module (its calls return their errors as values)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise DeramosError("cuda-python is needed to drive the GPU for TensorRT (pip install cuda-python)") from exc
    return cudart


def check_cuda(result, what: str):
    """The value of a cuda-python call (``(err, value)`` or ``(err,)``), or a DeramosError naming the call."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise DeramosError(f"CUDA call {what} failed: {err}")
    return rest[0] if rest else None


def set_device(index: int) -> None:
    """Make GPU ``index`` this thread's current device (the CUDA runtime keeps one per thread)."""
    check_cuda(cuda_runtime().cudaSetDevice(index), f"cudaSetDevice({index})")


def compute_capability(device_index: int = 0) -> tuple[int, int]:
    """The GPU's compute capability through cuda-python."""
    cudart = cuda_runtime()
    attr = cudart.cudaDeviceAttr
    values = []
    for which in (attr.cudaDevAttrComputeCapabilityMajor, attr.cudaDevAttrComputeCapabilityMinor):
        err, value = cudart.cudaDeviceGetAttribute(which, device_index)
        if int(err) != 0:
            raise DeramosError(f"no usable CUDA GPU {device_index}: {err}")
        values.append(int(value))
    return values[0], values[1]


def engine_key(trt_version: str, capability: tuple[int, int]) -> str:
    """``trt10.16.1-sm90`` for TensorRT 10.16.1 on a compute capability 9.0 GPU."""
    return f"trt{trt_version}-sm{capability[0]}{capability[1]}"


def rebuild_key(trt_version: str, capability: tuple[int, int], gpu: str | None) -> str:
    """The cache folder of engines rebuilt here: :func:`engine_key` plus the GPU model."""
    slug = "".join(c if c.isalnum() else "-" for c in (gpu or "gpu").lower()).strip("-")
    return f"{engine_key(trt_version, capability)}-{slug}"


def engine_file(graph: str, precision: str) -> str:
    return f"{graph}.{precision}.plan"


def mismatch_reason(entry: dict[str, Any], trt_version: str, capability: tuple[int, int]) -> str | None:
    """Why an engine entry cannot run here (None when it can)."""
    if entry["trt_version"] != trt_version:
        return f"engines were built with TensorRT {entry['trt_version']}, this is TensorRT {trt_version}"
    if tuple(entry["compute_capability"]) != tuple(capability):
        built = ".".join(map(str, entry["compute_capability"]))
        return f"engines were built for compute capability {built}, this GPU has {capability[0]}.{capability[1]}"
    if entry.get("tf32", True):
        return "engines were built with TensorRT's TF32 default (not fp32 throughout)"
    return None


def select_engines(manifest: dict[str, Any], precision: str, trt_version: str,
                   capability: tuple[int, int]) -> tuple[dict[str, Any] | None, str]:
    """The manifest's engine entry for this TensorRT and GPU, or (None, why none fits)."""
    reasons = []
    for entry in manifest.get("tensorrt") or []:
        if entry["precision"] != precision:
            continue
        reason = mismatch_reason(entry, trt_version, capability)
        if reason is None:
            return entry, ""
        reasons.append(reason)
    return None, "; ".join(reasons) or f"the bundle has no {precision} TensorRT engines"


def build_plan(trt, onnx_path: str | Path, shapes: dict[str, tuple], fp16: bool,
               timing_cache: str | Path | None = None, workspace: int = WORKSPACE_BYTES,
               device_index: int = 0) -> bytes:
    """Build a serialised engine from an ONNX graph, on GPU ``device_index``.

    Args:
        trt: the tensorrt module.
        onnx_path: the graph (external data next to it is found through the path).
        shapes: ``{input: (min, opt, max)}`` for every dynamic input (one optimisation profile).
        fp16: allow fp16 kernels (weakly typed network, ``BuilderFlag.FP16``); TF32 is never allowed.
        timing_cache: file to read and update with kernel timings (faster rebuilds); a cache made on
            another GPU or TensorRT is replaced.
        workspace: builder workspace limit in bytes.
        device_index: the GPU that builds (and times) the kernels; the engine runs on GPUs like it.

    Raises:
        DeramosError: the parser, the profile or the builder failed (their messages included).
    """
    set_device(device_index)  # the builder times kernels on this thread's current GPU
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors))
        raise DeramosError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    # TensorRT lets fp32 layers use TF32 (10-bit mantissa) unless told not to: fp32 means fp32.
    config.clear_flag(trt.BuilderFlag.TF32)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    _add_profile(builder, config, shapes, onnx_path)
    cache_path = Path(timing_cache) if timing_cache else None
    _use_timing_cache(config, cache_path)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise DeramosError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)")
    if cache_path:
        _write(cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def _add_profile(builder, config, shapes: dict[str, tuple], onnx_path) -> None:
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        try:
            profile.set_shape(name, low, opt, high)
        except RuntimeError as exc:  # the binding raises when min / opt / max disagree
            raise DeramosError(f"TensorRT refused the profile {low} / {opt} / {high} of input {name!r} of "
                               f"{onnx_path}: {exc}") from exc
    if config.add_optimization_profile(profile) < 0:
        raise DeramosError(f"TensorRT refused the optimisation profile {shapes} for {onnx_path}")


def _use_timing_cache(config, path: Path | None) -> None:
    """Start from the saved timing cache; one from another GPU or TensorRT is refused: start afresh."""
    data = path.read_bytes() if path and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, False):
        return
    log.warning("timing cache %s was made on another GPU or TensorRT version: starting a new one", path)
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise DeramosError("TensorRT refused a new, empty timing cache")


def _write(path: Path, data: bytes) -> None:
    """Write a file whole or not at all (a temporary beside it, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    part.write_bytes(data)
    os.replace(part, path)


def default_cache_dir(bundle: Bundle) -> Path:
    from deramos_rt.models import cache_root

    base = cache_root()
    return base / "tensorrt" / bundle.sha256[:16]


def build_recipe(manifest: dict[str, Any], precision: str, workspace: int = WORKSPACE_BYTES) -> dict[str, Any]:
    """Everything that decides what a rebuilt engine computes (a cached engine must match it)."""
    return {"recipe": BUILD_RECIPE, "precision": precision, "tf32": False, "workspace": int(workspace),
            "profiles": {g: {n: [list(s) for s in rows] for n, rows in profile_shapes(manifest, g).items()}
                         for g in GRAPHS}}


class RebuiltEngines:
    """Engines rebuilt on this machine: ``FOLDER/<graph>.<precision>.plan`` and ``check.<precision>.json``.

    The check record names the recipe, each plan's sha256 and the measured errors; plans are used only
    with a passed record that matches them, so a stale, half-written or unchecked plan is rebuilt.
    """

    def __init__(self, folder: Path, precision: str, recipe: dict[str, Any]):
        self.folder, self.precision, self.recipe = Path(folder), precision, recipe
        self.record_path = self.folder / f"check.{precision}.json"

    def plan_path(self, graph: str) -> Path:
        return self.folder / engine_file(graph, self.precision)

    def load(self) -> dict[str, bytes] | None:
        """The checked plans, or None when any is missing, stale or unchecked."""
        try:
            record = json.loads(self.record_path.read_text())
            plans = {g: self.plan_path(g).read_bytes() for g in GRAPHS}
        except (OSError, ValueError):
            return None
        hashes = {g: hashlib.sha256(p).hexdigest() for g, p in plans.items()}
        if record.get("status") != "passed" or record.get("recipe") != self.recipe or record.get("plans") != hashes:
            return None
        return plans

    def save(self, plans: dict[str, bytes]) -> None:
        self.record_path.unlink(missing_ok=True)
        for graph, plan in plans.items():
            _write(self.plan_path(graph), plan)

    def record(self, plans: dict[str, bytes], errors: dict[str, float]) -> None:
        hashes = {g: hashlib.sha256(p).hexdigest() for g, p in plans.items()}
        record = {"status": "passed", "recipe": self.recipe, "plans": hashes, "max_abs": errors,
                  "tolerance": TOLERANCE[self.precision], "reference": "onnxruntime fp32, CPU provider"}
        _write(self.record_path, (json.dumps(record, indent=1) + "\n").encode())

    def discard(self) -> None:
        self.record_path.unlink(missing_ok=True)
        for graph in GRAPHS:
            self.plan_path(graph).unlink(missing_ok=True)


def engine_errors(backend, reference, feeds: dict[str, dict[str, np.ndarray]], precision: str) -> dict[str, float]:
    """Max |backend - reference| per graph on ``feeds``; a DeramosError when over :data:`TOLERANCE`.

    Args:
        backend: the TensorRT backend under test.
        reference: a backend giving the reference outputs (ONNX Runtime fp32 on the CPU).
        feeds: ``{graph: {input name: array}}`` in the graph's input order.
        precision: the engines' precision (picks the limit).
    """
    errors = {}
    for graph, feed in feeds.items():
        ref = getattr(reference, f"run_{graph}")(*feed.values())
        got = getattr(backend, f"run_{graph}")(*feed.values())
        ref, got = (ref, got) if isinstance(ref, tuple) else ((ref,), (got,))
        errors[graph] = max(float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
                            for a, b in zip(ref, got))
        if not errors[graph] <= TOLERANCE[precision]:  # NaN fails too
            raise DeramosError(f"TensorRT {precision} {graph} engine differs from ONNX Runtime fp32 by "
                               f"{errors[graph]:.3g} (limit {TOLERANCE[precision]})")
    return errors


@dataclass(frozen=True)
class EngineIO:
    """An engine's I/O tensors, read from the engine itself and checked against the bundle's graph.

    Attributes:
        inputs, outputs: every input / output tensor name of the engine (all get addresses).
        returned: the outputs the graph contract returns, in the manifest's order.
        dtypes: numpy dtype of every I/O tensor, as the engine has it.
        profiles: ``{input: (min, opt, max)}`` of profile 0.
        max_batch: the largest batch every input's profile takes.
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    returned: tuple[str, ...]
    dtypes: dict[str, np.dtype]
    profiles: dict[str, tuple]
    max_batch: int


def engine_io(trt, engine, spec: dict[str, Any], graph: str) -> EngineIO:
    """Read and check an engine's tensors against the manifest's ``graphs[graph]`` spec.

    Raises:
        DeramosError: the engine's inputs are not the graph's, an output is missing, or an input dtype
            differs from the graph's.
    """
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    outputs = tuple(n for n in names if n not in inputs)
    wanted_in = [s["name"] for s in spec["inputs"]]
    wanted_out = tuple(s["name"] for s in spec["outputs"])
    if sorted(inputs) != sorted(wanted_in) or not set(wanted_out) <= set(outputs):
        raise DeramosError(f"the {graph} engine's tensors (in: {', '.join(inputs)}; out: {', '.join(outputs)}) are "
                           f"not the bundle graph's (in: {', '.join(wanted_in)}; out: {', '.join(wanted_out)})")
    dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
    for s in spec["inputs"]:
        if dtypes[s["name"]] != np.dtype(s["dtype"]):
            raise DeramosError(f"the {graph} engine takes {s['name']} as {dtypes[s['name']]}, the bundle graph as "
                               f"{s['dtype']}")
    profiles = {n: _profile(engine, n) for n in inputs}
    max_batch = min(p[2][0] for p in profiles.values())
    return EngineIO(inputs, outputs, wanted_out, dtypes, profiles, max_batch)


def _profile(engine, name: str) -> tuple:
    """(min, opt, max) of an input in profile 0; an input without dynamic axes has its one shape."""
    dims = [tuple(int(d) for d in shape) for shape in engine.get_tensor_profile_shape(name, 0)]
    if len(dims) == 3 and all(dims):
        return tuple(dims)
    fixed = tuple(int(d) for d in engine.get_tensor_shape(name))
    return fixed, fixed, fixed


class TensorRTBackend:
    """Runs a bundle's TensorRT engines (fp16 or fp32) on one GPU.

    Args:
        bundle: a loaded bundle.
        device: ``cuda`` (default) or ``cuda:N``.
        precision: ``fp16`` (default) or ``fp32`` (TF32 off).
        threads: unused (the engines run on the GPU); accepted so every backend opens the same way.
        rebuild: rebuild (and check) engines from the ONNX graphs when the bundle has none for this
            TensorRT / GPU; False: refuse instead.
        cache_dir: where rebuilt engines are kept (default ``~/.cache/deramos_rt/tensorrt/<bundle>``).
        trust_bundle: the user trusts this bundle's engines for this run (else it must be in the trust
            store: :mod:`deramos_rt.trust`).

    Attributes:
        max_batch: the largest batch the engines' optimisation profiles take; larger calls are split.

    Raises:
        DeramosError: an untrusted bundle (checked before TensorRT is imported), TensorRT or CUDA unusable, no
            engine for this machine and ``rebuild`` is off, a rebuilt engine that failed its check, or engines
            that do not match the bundle's graphs.
    """

    def __init__(self, bundle: Bundle, device: str | None = None, precision: str | None = None,
                 threads: int | None = None, *, rebuild: bool = True, cache_dir: str | Path | None = None,
                 trust_bundle: bool = False):
        require_native_trust(bundle, "TensorRT engines", trust_bundle)
        device, precision = device or "cuda", precision or "fp16"
        kind, index = parse_device(device)
        if kind != "cuda":
            raise DeramosError(f"the tensorrt backend runs on cuda devices, not {device!r}")
        if precision not in ("fp16", "fp32"):
            raise DeramosError(f"the tensorrt backend builds fp16 or fp32 engines, not {precision!r}")
        trt = import_tensorrt()
        self._trt, self._index = trt, index
        self._cuda = self._runtime = None
        self._engines, self._contexts, self._io = {}, {}, {}
        self._split_logged = False
        try:
            self._open(bundle, precision, rebuild, cache_dir)
        except BaseException:  # nothing half-open stays behind: contexts, engines, buffers, stream
            self.close()
            raise

    def _open(self, bundle: Bundle, precision: str, rebuild: bool, cache_dir) -> None:
        self._cuda = _Cuda(self._index)
        capability = self._cuda.capability()
        plans, origin, rebuilt = self._plans(bundle, precision, capability, rebuild, cache_dir)
        self._load(bundle, plans, origin)
        self.max_batch = min(io.max_batch for io in self._io.values())
        if rebuilt is not None:
            self._check_rebuilt(bundle, precision, plans, rebuilt)
            origin = f"{origin}, checked against ONNX Runtime"
        trt = self._trt
        self.info = BackendInfo("tensorrt", precision, f"cuda:{self._index}",
                                f"TensorRT {trt.__version__}, sm{capability[0]}{capability[1]}, {origin}; "
                                f"batch <= {self.max_batch}")

    def _plans(self, bundle, precision, capability, rebuild, cache_dir):
        """(plans, where they come from, the RebuiltEngines to check before use or None)."""
        trt = self._trt
        entry, reason = select_engines(bundle.manifest, precision, trt.__version__, capability)
        if entry is not None:
            return {g: bundle.path(entry["files"][g]).read_bytes() for g in GRAPHS}, "bundle engines", None
        if not rebuild:
            raise DeramosError(f"no TensorRT engine in {bundle.root} fits this machine ({reason}); rebuild is off")
        from deramos_rt.backends import gpu_name

        key = rebuild_key(trt.__version__, capability, gpu_name(self._index))
        cache = RebuiltEngines(Path(cache_dir or default_cache_dir(bundle)) / key, precision,
                               build_recipe(bundle.manifest, precision))
        plans = cache.load()
        if plans is not None:
            return plans, f"engines rebuilt and checked earlier in {cache.folder}", None
        log.warning("building TensorRT %s engines for this machine (%s); they are checked against ONNX Runtime "
                    "fp32 before use", precision, reason)
        plans = {g: build_plan(trt, bundle.graph_path("fp32", g), profile_shapes(bundle.manifest, g),
                               precision == "fp16", cache.folder / "timing.cache", device_index=self._index)
                 for g in GRAPHS}
        cache.save(plans)
        return plans, f"rebuilt in {cache.folder} ({reason})", cache

    def _load(self, bundle: Bundle, plans: dict[str, bytes], origin: str) -> None:
        trt = self._trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # must outlive its engines
        for graph in GRAPHS:
            engine = self._runtime.deserialize_cuda_engine(plans[graph])
            if engine is None:
                raise DeramosError(f"TensorRT could not load the {graph} engine ({origin}; the TensorRT log above "
                                   "says why)")
            self._engines[graph] = engine
            self._io[graph] = engine_io(trt, engine, bundle.manifest["graphs"][graph], graph)
            context = engine.create_execution_context()
            if context is None:
                raise DeramosError(f"TensorRT could not create an execution context for the {graph} engine "
                                   "(out of GPU memory?)")
            self._contexts[graph] = context

    def _check_rebuilt(self, bundle: Bundle, precision: str, plans: dict[str, bytes], cache: RebuiltEngines):
        """Export's engine check on engines rebuilt here; a failure deletes them."""
        from deramos_rt.backends.onnxruntime import OnnxRuntimeBackend

        try:
            reference = OnnxRuntimeBackend(bundle, "cpu", "fp32")
        except DeramosError as exc:
            cache.discard()
            raise DeramosError(f"engines rebuilt here are checked against ONNX Runtime before use: {exc}") from exc
        feeds = {g: manifest_feed(bundle.manifest, g, batch=3, tokens=5) for g in GRAPHS}
        try:
            errors = engine_errors(self, reference, feeds, precision)
        except DeramosError as exc:
            cache.discard()
            raise DeramosError(f"{exc}: the engines rebuilt in {cache.folder} were deleted; use --backend "
                               "onnxruntime") from exc
        finally:
            reference.close()
        cache.record(plans, errors)
        log.info("rebuilt TensorRT engines checked: max |delta| %s", errors)

    def _run(self, graph: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = len(next(iter(feed.values())))
        if rows > self.max_batch and not self._split_logged:
            log.info("TensorRT engines take at most %d rows per call: larger batches are split", self.max_batch)
            self._split_logged = True
        return in_chunks(lambda part: self._run_once(graph, part), feed, self.max_batch)

    def _run_once(self, graph: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        context, io, cuda = self._contexts[graph], self._io[graph], self._cuda
        cuda.activate()  # the calling thread may not be the one that opened the backend
        for name in io.inputs:
            array = np.ascontiguousarray(feed[name], dtype=io.dtypes[name])
            if not context.set_input_shape(name, array.shape):
                low, _, high = io.profiles[name]
                raise DeramosError(f"the {graph} engine takes {name} shapes from {low} to {high}, not {array.shape}")
            self._bind(context, graph, name, cuda.upload((graph, name), array))
        shapes = {}
        for name in io.outputs:
            shapes[name] = tuple(int(d) for d in context.get_tensor_shape(name))
            if min(shapes[name], default=0) < 0:
                raise DeramosError(f"TensorRT left the {graph} engine's output {name} shape open: {shapes[name]}")
            nbytes = int(np.prod(shapes[name])) * io.dtypes[name].itemsize
            self._bind(context, graph, name, cuda.buffer((graph, name), nbytes))
        if not context.execute_async_v3(cuda.stream):
            raise DeramosError(f"TensorRT failed to run the {graph} engine (see the TensorRT log above)")
        host = cuda.download({n: ((graph, n), shapes[n], io.dtypes[n]) for n in io.returned})
        return [host[n].astype(np.float32, copy=False) for n in io.returned]

    @staticmethod
    def _bind(context, graph: str, name: str, address: int) -> None:
        if not context.set_tensor_address(name, address):
            raise DeramosError(f"TensorRT refused the address of the {graph} engine's tensor {name}")

    def run_audio(self, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mi, audio_x = self._run("audio", {"waveform": np.asarray(waveform, np.float32)})
        return mi, audio_x

    def run_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._run("text", {"input_ids": np.asarray(input_ids, np.int64),
                                  "attention_mask": np.asarray(attention_mask, np.int64)})[0]

    def run_ta(self, audio_x: np.ndarray, text_x: np.ndarray, text_mask: np.ndarray) -> np.ndarray:
        return self._run("ta", {"audio_x": np.asarray(audio_x, np.float32), "text_x": np.asarray(text_x, np.float32),
                                "text_mask": np.asarray(text_mask, np.int64)})[0]

    def close(self) -> None:
        # Contexts before engines before the runtime: each needs the next one alive.
        self._contexts.clear()
        self._engines.clear()
        self._runtime = None
        if self._cuda is not None:
            self._cuda.close()


class _Cuda:
    """The stream, the reused device buffers and the few cuda-python calls the backend makes."""

    def __init__(self, index: int):
        self._rt = cuda_runtime()
        self.index, self.stream = index, 0
        self._buffers: dict[Any, tuple[int, int]] = {}  # key -> (address, bytes)
        self.activate()
        self.stream = int(check_cuda(self._rt.cudaStreamCreate(), "cudaStreamCreate"))

    def activate(self) -> None:
        check_cuda(self._rt.cudaSetDevice(self.index), f"cudaSetDevice({self.index})")

    def capability(self) -> tuple[int, int]:
        return compute_capability(self.index)

    def buffer(self, key, nbytes: int) -> int:
        """A device buffer of at least ``nbytes`` for ``key``, kept for the next call (grown when short).

        Every call ends with a stream synchronisation, so no buffer is in use between calls.
        """
        address, size = self._buffers.get(key, (0, 0))
        if size >= nbytes:
            return address
        if address:
            check_cuda(self._rt.cudaFree(address), "cudaFree")
            del self._buffers[key]
        size = max(1, nbytes)
        address = int(check_cuda(self._rt.cudaMalloc(size), "cudaMalloc"))
        self._buffers[key] = (address, size)
        return address

    def upload(self, key, array: np.ndarray) -> int:
        address = self.buffer(key, array.nbytes)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        check_cuda(self._rt.cudaMemcpyAsync(address, array.ctypes.data, array.nbytes, kind, self.stream),
                   "cudaMemcpyAsync")
        return address

    def download(self, items: dict[str, tuple]) -> dict[str, np.ndarray]:
        """``{name: (buffer key, shape, dtype)}`` copied to new host arrays, then one synchronisation."""
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        out = {}
        for name, (key, shape, dtype) in items.items():
            out[name] = np.empty(shape, dtype)
            address = self._buffers[key][0]
            check_cuda(self._rt.cudaMemcpyAsync(out[name].ctypes.data, address, out[name].nbytes, kind, self.stream),
                       "cudaMemcpyAsync")
        check_cuda(self._rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return out

    def close(self) -> None:
        """Free the buffers and the stream (errors are not raised: this runs on failure paths too)."""
        if self.stream:
            self._rt.cudaStreamSynchronize(self.stream)
        for address, _ in self._buffers.values():
            self._rt.cudaFree(address)
        self._buffers.clear()
        if self.stream:
            self._rt.cudaStreamDestroy(self.stream)
            self.stream = 0
