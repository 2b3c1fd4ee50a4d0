"""Strict stand-ins for TensorRT 10's Python API and cuda-python's runtime, for machines without a GPU.

They answer the calls the project makes the way the real libraries do, failures included (checked
against TensorRT's ``python/src/infer/pyCore.cpp`` / ``NvInferRuntime.h`` and cuda-python's runtime):

* cuda-python returns ``(cudaError_t, value...)`` tuples and never raises; the current device is per
  thread (``cudaSetDevice``); device memory is checked on every copy (size, freed pointers, stream).
* ``IOptimizationProfile.set_shape`` raises RuntimeError when min / opt / max disagree (rank, or not
  min <= opt <= max); ``add_optimization_profile`` returns -1 for an empty or invalid profile;
  ``build_serialized_network`` returns None (no exception) when a dynamic input has no profile or a
  profile contradicts a fixed dimension.
* ``BuilderFlag.TF32`` is on in a new builder config, as in TensorRT; ``set_timing_cache`` returns False
  for a cache made on a GPU of another compute capability (unless told to ignore the mismatch).
* ``deserialize_cuda_engine`` returns None for a plan of another TensorRT version or compute capability.
* ``IExecutionContext.set_input_shape`` returns False for a shape outside the profile (or of the wrong
  rank); ``execute_async_v3`` returns False unless every input shape is set, every I/O tensor has an
  address big enough for it, the stream is live and the calling thread's device is the engine's.

An engine runs its ONNX graph with ONNX Runtime on the CPU, reading its inputs from and writing its
outputs to the fake device memory, so a backend driven through these fakes computes real numbers.
"""

from __future__ import annotations

import base64
import collections
import ctypes
import enum
import importlib.machinery
import json
import threading
import types
from pathlib import Path

import numpy as np


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # importlib.util.find_spec needs one
    module.__dict__.update(attrs)
    return module


# ------------------------------------------------------------------------------------------- cuda-python


class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's own name
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400


class _Stream:
    """cuda-python's ``cudaStream_t``: ``int(stream)`` is the handle."""

    def __init__(self, handle: int):
        self._handle = handle

    def __int__(self) -> int:
        return self._handle


class FakeCudaRuntime:
    """``cuda.bindings.runtime``: devices, per-thread current device, streams and checked device memory.

    Args:
        capabilities: ``{device index: (major, minor)}``.
        names: ``{device index: model name}``.
    """

    cudaDeviceAttr = types.SimpleNamespace(cudaDevAttrComputeCapabilityMajor=75, cudaDevAttrComputeCapabilityMinor=76)
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self, capabilities: dict[int, tuple[int, int]], names: dict[int, str] | None = None):
        self.capabilities = dict(capabilities)
        self.names = names or {i: f"NVIDIA Fake GPU sm{a}{b}" for i, (a, b) in self.capabilities.items()}
        self._local = threading.local()
        self.memory: dict[int, tuple[np.ndarray, int]] = {}  # address -> (bytes, device)
        self.streams: set[int] = set()
        self.calls = collections.Counter()
        self._next_stream = 0x5000

    def current(self) -> int:
        return getattr(self._local, "device", 0)

    def current_capability(self) -> tuple[int, int]:
        return self.capabilities[self.current()]

    def cudaSetDevice(self, device):
        self.calls["cudaSetDevice"] += 1
        if device not in self.capabilities:
            return (cudaError_t.cudaErrorInvalidDevice,)
        self._local.device = device
        return (cudaError_t.cudaSuccess,)

    def cudaDeviceGetAttribute(self, attr, device):
        if device not in self.capabilities:
            return cudaError_t.cudaErrorInvalidDevice, 0
        major, minor = self.capabilities[device]
        return cudaError_t.cudaSuccess, major if attr == 75 else minor

    def cudaGetDeviceProperties(self, device):
        if device not in self.capabilities:
            return cudaError_t.cudaErrorInvalidDevice, None
        return cudaError_t.cudaSuccess, types.SimpleNamespace(name=self.names[device].encode() + b"\x00\x00")

    def cudaStreamCreate(self):
        self._next_stream += 16
        self.streams.add(self._next_stream)
        return cudaError_t.cudaSuccess, _Stream(self._next_stream)

    def cudaStreamDestroy(self, stream):
        if int(stream) not in self.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        self.streams.discard(int(stream))
        return (cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream):
        self.calls["cudaStreamSynchronize"] += 1
        ok = int(stream) in self.streams
        return (cudaError_t.cudaSuccess if ok else cudaError_t.cudaErrorInvalidResourceHandle,)

    def cudaMalloc(self, size):
        self.calls["cudaMalloc"] += 1
        if size <= 0:
            return cudaError_t.cudaErrorInvalidValue, 0
        block = np.zeros(int(size), np.uint8)
        self.memory[block.ctypes.data] = (block, self.current())
        return cudaError_t.cudaSuccess, block.ctypes.data

    def cudaFree(self, address):
        self.calls["cudaFree"] += 1
        if self.memory.pop(int(address), None) is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (cudaError_t.cudaSuccess,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        self.calls["cudaMemcpyAsync"] += 1
        device_side = dst if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice else src
        if int(stream) not in self.streams or not self.fits(device_side, count):
            return (cudaError_t.cudaErrorInvalidValue,)
        ctypes.memmove(int(dst), int(src), int(count))
        return (cudaError_t.cudaSuccess,)

    def fits(self, address: int, count: int) -> bool:
        """Whether ``count`` bytes from ``address`` lie inside one live allocation."""
        block = self.memory.get(int(address))
        return block is not None and count <= block[0].nbytes

    def view(self, address: int, dtype, shape) -> np.ndarray:
        """A numpy view of device memory (the engine's reads and writes)."""
        block = self.memory[int(address)][0]
        count = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return block[:count].view(dtype).reshape(shape)


# ---------------------------------------------------------------------------------------------- tensorrt


class DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class BuilderFlag(enum.Enum):
    FP16 = "FP16"
    TF32 = "TF32"
    INT8 = "INT8"


ORT_TYPES = {"tensor(float)": DataType.FLOAT, "tensor(float16)": DataType.HALF, "tensor(int64)": DataType.INT64,
             "tensor(int32)": DataType.INT32, "tensor(bool)": DataType.BOOL}
PLAN_MAGIC = "FAKE-TRT-PLAN"


class _Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, severity=2):
        self.severity = severity


class _ParserError:
    def __init__(self, text: str):
        self._text = text

    def desc(self) -> str:
        return self._text

    def __str__(self) -> str:
        return f"In node -1 (parse): {self._text}"


class _Network:
    def __init__(self):
        self.tensors: list[dict] = []  # {"name", "mode", "dtype", "dims", "symbols"}
        self.onnx = None

    def dynamic_inputs(self) -> list[dict]:
        return [t for t in self.tensors if t["mode"] == "INPUT" and -1 in t["dims"]]


class _Profile:
    def __init__(self):
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name, low, opt, high):
        low, opt, high = (tuple(int(d) for d in s) for s in (low, opt, high))
        if not len(low) == len(opt) == len(high):
            raise RuntimeError("Shape provided for opt is inconsistent with other shapes.")
        if any(d < 0 for d in low) or not all(a <= b <= c for a, b, c in zip(low, opt, high)):
            raise RuntimeError("Shape provided for max is inconsistent with other shapes.")
        self.shapes[name] = (low, opt, high)


class _TimingCache:
    def __init__(self, capability):
        self.capability = tuple(capability)

    def serialize(self) -> bytes:
        return b"FAKE-TIMING:" + json.dumps(list(self.capability)).encode()


class _Config:
    def __init__(self, fake):
        self._fake = fake
        self.flags = {BuilderFlag.TF32}  # TensorRT's default: fp32 layers may use TF32
        self.profiles: list[_Profile] = []
        self.pool = {}
        self.timing_cache = None

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def get_flag(self, flag) -> bool:
        return flag in self.flags

    def set_memory_pool_limit(self, pool, size):
        self.pool[pool] = int(size)

    def add_optimization_profile(self, profile) -> int:
        if not profile.shapes or self._fake.refuse_profiles:
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data):
        data = bytes(data)
        if not data:
            return _TimingCache(self._fake.cuda.current_capability())
        if not data.startswith(b"FAKE-TIMING:"):
            return None
        return _TimingCache(json.loads(data[len(b"FAKE-TIMING:"):]))

    def set_timing_cache(self, cache, ignore_mismatch) -> bool:
        if cache.capability != tuple(self._fake.cuda.current_capability()) and not ignore_mismatch:
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self):
        return self.timing_cache


class FakeTensorRT:
    """The ``tensorrt`` module's surface the project uses; engines run their ONNX graph with ONNX Runtime.

    Attributes:
        built: one dict per built plan (its JSON), in order.
        extra_outputs: ``{graph file stem prefix: name}``: engines get one more output than their graph.
        input_dtypes: ``{input name: DataType}`` overriding an engine's input dtype.
        perturb: added to every engine output (a wrong engine).
        refuse_profiles: ``add_optimization_profile`` returns -1.
    """

    Logger = _Logger
    DataType, TensorIOMode, BuilderFlag = DataType, TensorIOMode, BuilderFlag
    MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

    def __init__(self, cuda: FakeCudaRuntime, version: str = "10.16.1"):
        self.cuda, self.__version__ = cuda, version
        self.built: list[dict] = []
        self.extra_outputs: dict[str, str] = {}
        self.input_dtypes: dict[str, DataType] = {}
        self.perturb = 0.0
        self.refuse_profiles = False
        self.executions = collections.Counter()
        fake = self

        class Builder:
            def __init__(self, logger):
                self.logger = logger

            def create_network(self, flags=0):
                if not isinstance(flags, int) or flags not in (0, 1 << 1):  # 0 or STRONGLY_TYPED
                    raise TypeError(f"unsupported network flags {flags!r}")
                return _Network()

            def create_builder_config(self):
                return _Config(fake)

            def create_optimization_profile(self):
                return _Profile()

            def build_serialized_network(self, network, config):
                return fake._build(network, config)

        class OnnxParser:
            def __init__(self, network, logger):
                self.network, self.errors = network, []

            @property
            def num_errors(self):
                return len(self.errors)

            def get_error(self, i):
                return self.errors[i]

            def parse_from_file(self, path):
                return fake._parse(self, str(path))

        class Runtime:
            def __init__(self, logger):
                self.logger = logger

            def deserialize_cuda_engine(self, plan):
                return fake._deserialize(bytes(plan))

        self.Builder, self.OnnxParser, self.Runtime = Builder, OnnxParser, Runtime

    @staticmethod
    def nptype(dtype: DataType):
        return np.dtype(dtype.value).type

    def _parse(self, parser, path: str) -> bool:
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as exc:  # the real parser reports bad files through its error list
            parser.errors.append(_ParserError(str(exc).splitlines()[0]))
            return False
        network = parser.network
        network.onnx = path
        for mode, metas in (("INPUT", session.get_inputs()), ("OUTPUT", session.get_outputs())):
            for meta in metas:
                dtype = ORT_TYPES[meta.type]
                if mode == "INPUT":
                    dtype = self.input_dtypes.get(meta.name, dtype)
                network.tensors.append({"name": meta.name, "mode": mode, "dtype": dtype.name,
                                        "dims": [d if isinstance(d, int) else -1 for d in meta.shape],
                                        "symbols": [d if not isinstance(d, int) else None for d in meta.shape]})
        stem = Path(path).name.split(".")[0]
        if stem in self.extra_outputs:
            network.tensors.append({"name": self.extra_outputs[stem], "mode": "OUTPUT", "dtype": "FLOAT",
                                    "dims": [-1], "symbols": ["batch"]})
        return True

    def _build(self, network, config):
        """A plan (bytes), or None as TensorRT gives when the profile does not cover the network."""
        profile = config.profiles[0].shapes if config.profiles else {}
        for tensor in network.dynamic_inputs():
            shapes = profile.get(tensor["name"])
            if shapes is None or any(len(s) != len(tensor["dims"]) for s in shapes):
                return None
            if any(d != -1 and any(s[i] != d for s in shapes) for i, d in enumerate(tensor["dims"])):
                return None
        plan = {"magic": PLAN_MAGIC, "version": self.__version__, "capability": list(self.cuda.current_capability()),
                "onnx": Path(network.onnx).name, "model": base64.b64encode(Path(network.onnx).read_bytes()).decode(),
                "flags": sorted(f.name for f in config.flags), "tensors": network.tensors,
                "profile": {n: [list(s) for s in shapes] for n, shapes in profile.items()},
                "workspace": config.pool.get("WORKSPACE")}
        self.built.append(plan)
        return json.dumps(plan).encode()

    def _deserialize(self, data: bytes):
        try:
            plan = json.loads(data)
        except ValueError:
            return None
        if plan.get("magic") != PLAN_MAGIC or plan["version"] != self.__version__:
            return None
        if tuple(plan["capability"]) != tuple(self.cuda.current_capability()):
            return None  # "generated on an incompatible device"
        return _Engine(self, plan, self.cuda.current())


class _Engine:
    def __init__(self, fake: FakeTensorRT, plan: dict, device: int):
        import onnxruntime as ort

        self.fake, self.plan, self.device = fake, plan, device
        self.tensors = {t["name"]: t for t in plan["tensors"]}
        self.names = list(self.tensors)
        # A plan is self-contained, like a real one: the graph travels inside it.
        self.session = ort.InferenceSession(base64.b64decode(plan["model"]), providers=["CPUExecutionProvider"])

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str):
        tensor = self.tensors.get(name)
        return TensorIOMode.NONE if tensor is None else TensorIOMode[tensor["mode"]]

    def get_tensor_dtype(self, name: str):
        return DataType[self.tensors[name]["dtype"]]

    def get_tensor_shape(self, name: str):
        return list(self.tensors[name]["dims"])

    def get_tensor_profile_shape(self, name: str, profile_index: int):
        if profile_index != 0 or self.tensors[name]["mode"] != "INPUT":
            raise RuntimeError("invalid profile index or not an input")
        return [list(s) for s in self.plan["profile"].get(name, [])]

    def create_execution_context(self):
        return _Context(self)


class _Context:
    def __init__(self, engine: _Engine):
        self.engine = engine
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape) -> bool:
        tensor = self.engine.tensors.get(name)
        shape = tuple(int(d) for d in shape)
        if tensor is None or tensor["mode"] != "INPUT" or len(shape) != len(tensor["dims"]):
            return False
        if any(d != -1 and d != s for d, s in zip(tensor["dims"], shape)):
            return False
        low, _, high = self.engine.plan["profile"].get(name, (shape, shape, shape))
        if not all(a <= s <= b for a, s, b in zip(low, shape, high)):
            return False
        self.shapes[name] = shape
        return True

    def _symbols(self) -> dict[str, int]:
        sizes = {}
        for name, shape in self.shapes.items():
            for symbol, size in zip(self.engine.tensors[name]["symbols"], shape):
                if symbol:
                    sizes[symbol] = size
        return sizes

    def get_tensor_shape(self, name: str):
        tensor = self.engine.tensors[name]
        if tensor["mode"] == "INPUT":
            return list(self.shapes.get(name, tensor["dims"]))
        sizes = self._symbols()
        return [d if d != -1 else sizes.get(s, -1) for d, s in zip(tensor["dims"], tensor["symbols"])]

    def set_tensor_address(self, name: str, address: int) -> bool:
        if name not in self.engine.tensors:
            return False
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle) -> bool:
        engine, cuda = self.engine, self.engine.fake.cuda
        if not isinstance(stream_handle, int) or stream_handle not in cuda.streams or cuda.current() != engine.device:
            return False
        inputs = [n for n in engine.names if engine.tensors[n]["mode"] == "INPUT"]
        if any(n not in self.shapes for n in inputs) or any(n not in self.addresses for n in engine.names):
            return False
        shapes = {n: tuple(self.get_tensor_shape(n)) for n in engine.names}
        dtypes = {n: np.dtype(DataType[engine.tensors[n]["dtype"]].value) for n in engine.names}
        for n in engine.names:
            if not cuda.fits(self.addresses[n], int(np.prod(shapes[n])) * dtypes[n].itemsize):
                return False
        feed = {n: cuda.view(self.addresses[n], dtypes[n], shapes[n]).copy() for n in inputs}
        feed = {n: a.astype(np.int64) if a.dtype == np.int32 else a for n, a in feed.items()}
        outputs = dict(zip([o.name for o in engine.session.get_outputs()], engine.session.run(None, feed)))
        for name in engine.names:
            if engine.tensors[name]["mode"] != "OUTPUT":
                continue
            value = outputs.get(name, np.zeros(shapes[name], np.float32)) + engine.fake.perturb
            if value.shape != shapes[name]:
                return False
            cuda.view(self.addresses[name], dtypes[name], shapes[name])[...] = value
        engine.fake.executions[engine.plan["onnx"]] += 1
        return True


def install(monkeypatch, capabilities=None, names=None,
            version: str = "10.16.1") -> tuple[FakeTensorRT, FakeCudaRuntime]:
    """Put fake ``tensorrt`` and ``cuda.bindings.runtime`` modules in ``sys.modules`` for one test."""
    cuda = FakeCudaRuntime(capabilities or {0: (9, 0)}, names)
    trt = FakeTensorRT(cuda, version)
    runtime = _module("cuda.bindings.runtime", **{n: getattr(cuda, n) for n in dir(cuda) if n.startswith("cuda")})
    bindings = _module("cuda.bindings", runtime=runtime)
    package = _module("cuda", bindings=bindings)
    module = _module("tensorrt", __version__=version, nptype=trt.nptype, Logger=trt.Logger, Builder=trt.Builder,
                     OnnxParser=trt.OnnxParser, Runtime=trt.Runtime, DataType=DataType, TensorIOMode=TensorIOMode,
                     BuilderFlag=BuilderFlag, MemoryPoolType=trt.MemoryPoolType)
    for name, value in (("cuda", package), ("cuda.bindings", bindings), ("cuda.bindings.runtime", runtime),
                        ("tensorrt", module)):
        monkeypatch.setitem(__import__("sys").modules, name, value)
    return trt, cuda
