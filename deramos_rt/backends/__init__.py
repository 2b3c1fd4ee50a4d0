"""Backend registry and the ``auto`` choice.

Backends are named here by module path only, so importing this package loads no inference library; a
backend's module imports its library when it is opened. Every backend class has one constructor,
``Backend(source, device=None, precision=None, threads=None)``, and fills in its own defaults.
:func:`open_backend` turns (name, source, device, precision, threads) into an open backend; ``auto`` tries
the fastest candidates first and logs which one it took and why each faster one was passed over (at
WARNING when it ends on the CPU after a GPU candidate failed). docs/serving.md describes the GPU paths.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from deramos_rt.errors import DeramosError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendSpec:
    """Where a backend lives and what it needs.

    Attributes:
        module, cls: the class that implements it.
        packages: importable modules it needs.
        extra: the pip extra that installs them.
        source: the model source kind it runs: ``"bundle"`` or ``"run"`` (a training run directory).
    """

    module: str
    cls: str
    packages: tuple[str, ...]
    extra: str
    source: str


BACKENDS: dict[str, BackendSpec] = {
    "onnxruntime": BackendSpec("deramos_rt.backends.onnxruntime", "OnnxRuntimeBackend", ("onnxruntime",),
                               "cpu (or gpu for onnxruntime-gpu; never both)", "bundle"),
    # TensorRT's Python API has no memory or stream calls: the backend makes them through cuda-python.
    "tensorrt": BackendSpec("deramos_rt.backends.tensorrt", "TensorRTBackend", ("tensorrt", "cuda.bindings"),
                            "none: install tensorrt-cu12>=10,<11 from NVIDIA's index and cuda-python (module "
                            "cuda.bindings)", "bundle"),
    "aoti": BackendSpec("deramos_rt.backends.aoti", "AotiBackend", ("torch",), "train", "bundle"),
    "torch": BackendSpec("deramos_rt.backends.torch", "TorchBackend", ("torch", "transformers", "safetensors"),
                         "train", "run"),
}
NAMES = (*BACKENDS, "auto")
# Backends that load a bundle's compiled code: only from a trusted bundle (deramos_rt.trust).
NATIVE = {"tensorrt": "TensorRT engines", "aoti": "AOTInductor packages"}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (found without importing it; a dotted name imports its parents)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or a module without a spec
        return False


def missing_packages(name: str) -> list[str]:
    """The packages backend ``name`` needs that are not installed (found without importing them)."""
    return [p for p in BACKENDS[name].packages if not installed(p)]


def backend_class(name: str):
    """The class of backend ``name``; a clear error naming the package and extra when it is missing."""
    if name not in BACKENDS:
        raise DeramosError(f"unknown backend {name!r}; choose one of: {', '.join(NAMES)}")
    spec = BACKENDS[name]
    missing = missing_packages(name)
    if missing:
        raise DeramosError(f"backend {name!r} needs {', '.join(missing)} (extra: {spec.extra}); "
                           f"installed backends: {', '.join(available()) or 'none'}")
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        if exc.name == spec.module:
            raise DeramosError(f"backend {name!r} is not part of this deramos_rt installation ({spec.module})") from exc
        raise DeramosError(f"backend {name!r} cannot load: {exc}") from exc
    return getattr(module, spec.cls)


def available() -> list[str]:
    """Backends whose packages are installed (their modules may still fail at open time)."""
    return [n for n, s in BACKENDS.items() if not missing_packages(n) and installed(s.module)]


def cuda_requested(device: str | None) -> bool:
    return device is not None and device.startswith("cuda")


def torch_cuda_available() -> bool:
    """True when torch is installed and sees a GPU (imports torch: call only when choosing a GPU path)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def ort_providers() -> list[str]:
    """ONNX Runtime's available providers ([] when it is not installed)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def gpu_present() -> bool:
    """A cheap look for an NVIDIA GPU without importing any framework."""
    return Path("/proc/driver/nvidia/gpus").is_dir() and os.environ.get("CUDA_VISIBLE_DEVICES") not in ("", "-1")


def gpu_name(index: int = 0, proc: str | Path = "/proc/driver/nvidia/gpus") -> str | None:
    """The model name of CUDA device ``index`` (None when nothing can tell it).

    cuda-python numbers devices as CUDA does; without it the driver's /proc files name the models but not
    CUDA's order, so every model present is named (the name still changes whenever the hardware does).
    """
    try:
        from cuda.bindings import runtime as cudart

        err, prop = cudart.cudaGetDeviceProperties(index)
        if int(err) == 0:
            name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
            return name.split("\x00")[0].strip() or None
    except ImportError:
        pass
    models = set()
    for info in sorted(Path(proc).glob("*/information")):
        try:
            text = info.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model" and value.strip():
                models.add(value.strip())
    return "+".join(sorted(models)) or None


def open_backend(name: str, source, device: str | None = None, precision: str | None = None,
                 threads: int | None = None, trust_bundle: bool = False):
    """Open backend ``name`` on ``source`` (a bundle or a run source, see :mod:`deramos_rt.source`).

    Args:
        name: a key of :data:`BACKENDS` or ``"auto"``.
        source: a loaded :class:`~deramos_rt.bundle.Bundle` or a :class:`~deramos_rt.source.RunSource`.
        device: ``cpu``, ``cuda``, ``cuda:N`` or None (the backend's default).
        precision: ``fp32``, ``int8``, ``fp16``, ``bf16`` or None (the backend's default).
        threads: CPU threads for the backend (None: its default).
        trust_bundle: let tensorrt / aoti load this bundle's native code although it is not in the trust store.

    Raises:
        DeramosError: unknown name, missing package, source of the wrong kind, an untrusted bundle's native
            code, or nothing works (auto).
    """
    if name == "auto":
        return _auto(source, device, precision, threads, trust_bundle)
    if name not in BACKENDS:
        raise DeramosError(f"unknown backend {name!r}; choose one of: {', '.join(NAMES)}")
    wanted = BACKENDS[name].source
    if wanted != source.kind:
        raise DeramosError(_wrong_kind(name, source))
    native = {}
    if name in NATIVE:  # native code only on the user's word: refused before its packages are even looked at
        from deramos_rt.trust import require_native_trust

        require_native_trust(source, NATIVE[name], trust_bundle)
        native = {"trust_bundle": trust_bundle}
    return backend_class(name)(source, device=device, precision=precision, threads=threads, **native)


def _wrong_kind(name: str, source) -> str:
    if source.kind == "bundle":
        return (f"backend {name!r} runs a training run directory, not a bundle ({source.root}); "
                "pass --bundle RUN_DIR or choose onnxruntime / aoti / tensorrt")
    return (f"backend {name!r} runs a bundle, but {source.root} is a run directory: build one with "
            f"python -m export.build_engine --run {source.root} --out BUNDLE, or use --backend torch")


def _auto_candidates(bundle, device: str | None, precision: str | None) -> list[tuple[str, str, str, str]]:
    """(backend, device, precision, why) in order of expected speed, for what this machine has."""
    cpu_only = device == "cpu"
    gpu = not cpu_only and (cuda_requested(device) or gpu_present())
    out = []
    if gpu and bundle.manifest.get("tensorrt"):
        out.append(("tensorrt", device or "cuda", precision or "fp16", "a GPU and the bundle's TensorRT engines"))
    if gpu and "CUDAExecutionProvider" in ort_providers():
        out.append(("onnxruntime", device or "cuda", precision or "fp32", "onnxruntime's CUDA provider"))
    aoti = bundle.manifest.get("aoti") or {}
    if gpu and aoti.get("device", "").startswith("cuda"):
        out.append(("aoti", device or "cuda", precision or "fp32", "the bundle's CUDA AOTInductor packages"))
    if not cuda_requested(device):
        int8 = bundle.variants.get("int8")
        if precision in (None, "int8") and int8 and _parity_held(int8):
            out.append(("onnxruntime", "cpu", "int8", "CPU; the bundle kept int8 graphs whose parity held"))
        out.append(("onnxruntime", "cpu", precision if precision in ("fp32", "fp16") else "fp32",
                    "CPU; onnxruntime fp32 is the portable choice"))
        if aoti.get("device") == "cpu" and precision in (None, "fp32"):
            out.append(("aoti", "cpu", "fp32", "CPU; the bundle's AOTInductor CPU packages"))
    return out


def _parity_held(variant: dict) -> bool:
    """The export's parity verdict on a variant; a variant without a verdict is not trusted for auto."""
    parity = variant.get("parity")
    return isinstance(parity, dict) and parity.get("status") == "passed"


def _auto(source, device, precision, threads, trust_bundle=False):
    if source.kind == "run":
        log.info("auto: backend torch (%s is a training run directory; build a bundle for a faster backend)", source.root)
        return open_backend("torch", source, device, precision, threads)
    from deramos_rt.backends.calibration import cpu_key, measured_order

    candidates, order = measured_order(source.manifest, cpu_key(), _auto_candidates(source, device, precision))
    log.info("auto: %s", order)
    passed, skipped = [], []
    for name, dev, prec, why in candidates:
        if name in NATIVE:
            from deramos_rt.trust import native_refusal

            refusal = native_refusal(source, NATIVE[name], trust_bundle)
            if refusal:  # native code only on the user's word: skip it, say why, go on to the ONNX graphs
                log.warning("auto: skipping %s (%s): %s", name, why, refusal)
                skipped.append(f"{name}: the bundle is not trusted to run native code (--trust-bundle)")
                continue
        try:
            backend = open_backend(name, source, dev, prec, threads, trust_bundle)
        except DeramosError as exc:
            passed.append((f"{name} {prec} on {dev}: {exc}", cuda_requested(dev)))
            continue
        log.info("auto: backend %s %s on %s (%s)", name, prec, dev, why)
        # Ending on the CPU after every GPU candidate failed is a slow surprise: say so, and why.
        gpu_failed = not cuda_requested(dev) and any(on_gpu for _, on_gpu in passed)
        for line, _ in passed:
            log.log(logging.WARNING if gpu_failed else logging.INFO, "auto: passed over %s", line)
        return backend
    reasons = [line for line, _ in passed] + skipped or ["no candidate"]
    raise DeramosError(f"no backend works here for bundle {source.root}: " + "; ".join(reasons))
