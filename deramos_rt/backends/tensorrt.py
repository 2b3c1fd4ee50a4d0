"""TensorRT backend (TensorRT 10 Python API) and the engine builder it shares with ``export.tensorrt``.

A plan only loads on the TensorRT version and GPU compute capability it was built for, so a bundle keeps
engines under ``tensorrt/<key>/`` with ``key = trt<version>-sm<major><minor>`` and the manifest records
both. At load the backend picks the entry matching this machine; when none matches it rebuilds the
engines from the bundle's ONNX graphs into a cache folder (or, with ``rebuild=False``, refuses with the
reason). tensorrt and cuda-python are imported lazily: neither can be installed on every machine.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from deramos_rt.backends.base import BackendInfo
from deramos_rt.backends.onnxruntime import parse_device, profile_shapes
from deramos_rt.bundle import GRAPHS, Bundle
from deramos_rt.errors import DeramosError
from deramos_rt.trust import require_native_trust

log = logging.getLogger(__name__)
WORKSPACE_BYTES = 4 << 30
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


def compute_capability(device_index: int = 0) -> tuple[int, int]:
    """The GPU's compute capability through cuda-python (errors are returned there, not raised)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise DeramosError("cuda-python is needed to query the GPU (pip install cuda-python)") from exc
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


def engine_file(graph: str, precision: str) -> str:
    return f"{graph}.{precision}.plan"


def mismatch_reason(entry: dict[str, Any], trt_version: str, capability: tuple[int, int]) -> str | None:
    """Why an engine entry cannot run here (None when it can)."""
    if entry["trt_version"] != trt_version:
        return f"engines were built with TensorRT {entry['trt_version']}, this is TensorRT {trt_version}"
    if tuple(entry["compute_capability"]) != tuple(capability):
        built = ".".join(map(str, entry["compute_capability"]))
        return f"engines were built for compute capability {built}, this GPU has {capability[0]}.{capability[1]}"
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
               timing_cache: str | Path | None = None, workspace: int = WORKSPACE_BYTES) -> bytes:
    """Build a serialised engine from an ONNX graph.

    Args:
        trt: the tensorrt module.
        onnx_path: the graph (external data next to it is found through the path).
        shapes: ``{input: (min, opt, max)}`` for every dynamic input (one optimisation profile).
        fp16: allow fp16 kernels (weakly typed network, ``BuilderFlag.FP16``).
        timing_cache: file to read and update with kernel timings (faster rebuilds).
        workspace: builder workspace limit in bytes.

    Raises:
        DeramosError: the parser or the builder failed (their messages included).
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DeramosError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise DeramosError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)")
    if cache_path:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def default_cache_dir(bundle: Bundle) -> Path:
    from deramos_rt.models import cache_root

    base = cache_root()
    return base / "tensorrt" / bundle.sha256[:16]


class TensorRTBackend:
    """Runs a bundle's TensorRT engines (fp16 or fp32) on one GPU.

    Args:
        bundle: a loaded bundle.
        device: ``cuda`` (default) or ``cuda:N``.
        precision: ``fp16`` (default) or ``fp32``.
        threads: unused (the engines run on the GPU); accepted so every backend opens the same way.
        rebuild: rebuild engines from the ONNX graphs when the bundle has none for this TensorRT / GPU.
        cache_dir: where rebuilt engines are kept (default ``~/.cache/deramos_rt/tensorrt/<bundle>``).
        trust_bundle: the user trusts this bundle's engines for this run (else it must be in the trust
            store: :mod:`deramos_rt.trust`).

    Raises:
        DeramosError: an untrusted bundle (checked before TensorRT is imported), TensorRT or CUDA unusable,
            or no engine for this machine and ``rebuild`` is off.
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
        capability = compute_capability(index)
        self._trt, self._index = trt, index
        self._cuda = _Cuda(index)
        plans, origin = self._plans(bundle, precision, trt, capability, rebuild, cache_dir)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engines, self._contexts = {}, {}
        for graph in GRAPHS:
            engine = runtime.deserialize_cuda_engine(plans[graph])
            if engine is None:
                raise DeramosError(f"TensorRT could not load the {graph} engine ({origin}); delete it to rebuild")
            self._engines[graph] = engine
            self._contexts[graph] = engine.create_execution_context()
        self._outputs = {g: [o["name"] for o in bundle.manifest["graphs"][g]["outputs"]] for g in GRAPHS}
        self.info = BackendInfo("tensorrt", precision, f"cuda:{index}",
                                f"TensorRT {trt.__version__}, sm{capability[0]}{capability[1]}, {origin}")

    def _plans(self, bundle, precision, trt, capability, rebuild, cache_dir) -> tuple[dict[str, bytes], str]:
        entry, reason = select_engines(bundle.manifest, precision, trt.__version__, capability)
        if entry is not None:
            return {g: bundle.path(entry["files"][g]).read_bytes() for g in GRAPHS}, "bundle engines"
        if not rebuild:
            raise DeramosError(f"no TensorRT engine in {bundle.root} fits this machine ({reason}); rebuild is off")
        folder = Path(cache_dir or default_cache_dir(bundle)) / engine_key(trt.__version__, capability)
        plans = {}
        for graph in GRAPHS:
            path = folder / engine_file(graph, precision)
            if not path.is_file():
                log.info("building the %s TensorRT engine (%s)", graph, reason)
                path.parent.mkdir(parents=True, exist_ok=True)
                source = bundle.graph_path("fp32", graph)
                plan = build_plan(trt, source, profile_shapes(bundle.manifest, graph), precision == "fp16",
                                  folder / "timing.cache")
                path.write_bytes(plan)
            plans[graph] = path.read_bytes()
        return plans, f"rebuilt in {folder} ({reason})"

    def _run(self, graph: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        trt, engine, ctx = self._trt, self._engines[graph], self._contexts[graph]
        buffers = []
        for name, array in feed.items():
            ctx.set_input_shape(name, array.shape)
            ptr = self._cuda.to_device(np.ascontiguousarray(array))
            buffers.append(ptr)
            ctx.set_tensor_address(name, ptr)
        outputs = []
        for name in self._outputs[graph]:
            shape = tuple(ctx.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            ptr = self._cuda.alloc(int(np.prod(shape)) * dtype.itemsize)
            buffers.append(ptr)
            ctx.set_tensor_address(name, ptr)
            outputs.append((ptr, shape, dtype))
        try:
            if not ctx.execute_async_v3(self._cuda.stream):
                raise DeramosError(f"TensorRT failed to run the {graph} engine")
            return [self._cuda.to_host(ptr, shape, dtype) for ptr, shape, dtype in outputs]
        finally:
            for ptr in buffers:
                self._cuda.free(ptr)

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
        self._contexts.clear()
        self._engines.clear()
        self._cuda.close()


class _Cuda:
    """The few cuda-python runtime calls the backend needs (errors come back as values: checked here)."""

    def __init__(self, index: int):
        from cuda.bindings import runtime as cudart

        self._rt = cudart
        self._check(cudart.cudaSetDevice(index), "cudaSetDevice")
        self.stream = int(self._check(cudart.cudaStreamCreate(), "cudaStreamCreate"))

    def _check(self, result, what: str):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise DeramosError(f"CUDA call {what} failed: {err}")
        return rest[0] if rest else None

    def alloc(self, nbytes: int) -> int:
        return int(self._check(self._rt.cudaMalloc(max(1, nbytes)), "cudaMalloc"))

    def to_device(self, array: np.ndarray) -> int:
        ptr = self.alloc(array.nbytes)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._rt.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, kind, self.stream), "cudaMemcpy")
        return ptr

    def to_host(self, ptr: int, shape: tuple, dtype: np.dtype) -> np.ndarray:
        out = np.empty(shape, dtype)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._rt.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, kind, self.stream), "cudaMemcpy")
        self._check(self._rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return out

    def free(self, ptr: int) -> None:
        self._check(self._rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        self._check(self._rt.cudaFree(ptr), "cudaFree")

    def close(self) -> None:
        if self.stream:
            self._rt.cudaStreamDestroy(self.stream)
            self.stream = 0
