"""Backend registry and the ``auto`` choice.

Backends are named here by module path only, so importing this package loads no inference library; a
backend's module imports its library when it is opened. :func:`open_backend` turns (source, name, device,
precision) into an open backend; ``auto`` tries the fastest candidates first and logs which one it took
and why each faster one was passed over.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from deramos_rt.errors import DeramosError

log = logging.getLogger("deramos.backends")


@dataclass(frozen=True)
class BackendSpec:
    """Where a backend lives and what it needs.

    Attributes:
        module, cls: the class that implements it.
        packages: importable modules it needs.
        extra: the pip extra that installs them.
        source: ``"bundle"`` or ``"run"`` (a training run directory).
    """

    module: str
    cls: str
    packages: tuple[str, ...]
    extra: str
    source: str


BACKENDS: dict[str, BackendSpec] = {
    "onnxruntime": BackendSpec("deramos_rt.backends.onnxruntime", "OnnxRuntimeBackend", ("onnxruntime",),
                               "cpu (or gpu for onnxruntime-gpu; never both)", "bundle"),
    "tensorrt": BackendSpec("deramos_rt.backends.tensorrt", "TensorRTBackend", ("tensorrt",),
                            "none: install tensorrt-cu12>=10,<11 from NVIDIA's index", "bundle"),
    "aoti": BackendSpec("deramos_rt.backends.aoti", "AotiBackend", ("torch",), "train", "bundle"),
    "torch": BackendSpec("deramos_rt.backends.torch", "TorchBackend", ("torch", "transformers", "safetensors"),
                         "train", "run"),
}
NAMES = (*BACKENDS, "auto")


def missing_packages(name: str) -> list[str]:
    """The packages backend ``name`` needs that are not installed (found without importing them)."""
    return [p for p in BACKENDS[name].packages if importlib.util.find_spec(p) is None]


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
    return [n for n, s in BACKENDS.items()
            if not missing_packages(n) and importlib.util.find_spec(s.module) is not None]


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


def open_backend(name: str, source, device: str | None = None, precision: str | None = None,
                 threads: int | None = None):
    """Open backend ``name`` on ``source`` (a :class:`deramos_rt.bundle.Bundle` or a run directory Path).

    Args:
        name: a key of :data:`BACKENDS` or ``"auto"``.
        source: a loaded bundle, or a run directory (torch only).
        device: ``cpu``, ``cuda``, ``cuda:N`` or None (the backend's best).
        precision: ``fp32``, ``int8``, ``fp16``, ``bf16`` or None (the backend's default).
        threads: CPU threads for the backend (None: its default).

    Raises:
        DeramosError: unknown name, missing package, source of the wrong kind, or nothing works (auto).
    """
    is_run = isinstance(source, Path)
    if name == "auto":
        return _auto(source, is_run, device, precision, threads)
    if name not in BACKENDS:
        raise DeramosError(f"unknown backend {name!r}; choose one of: {', '.join(NAMES)}")
    wanted = BACKENDS[name].source
    if wanted == "run" and not is_run:
        raise DeramosError(f"backend {name!r} runs a training run directory, not a bundle ({source.root}); "
                           "pass --bundle RUN_DIR or choose onnxruntime / aoti / tensorrt")
    if wanted == "bundle" and is_run:
        raise DeramosError(f"backend {name!r} runs a bundle, but {source} is a run directory: build one with "
                           f"python -m export.build_engine --run {source} --out BUNDLE, or use --backend torch")
    cls = backend_class(name)
    return _construct(name, cls, source, device, precision, threads)


def _construct(name, cls, source, device, precision, threads):
    if name == "onnxruntime":
        return cls(source, precision or "fp32", device or "cpu", threads or 0)
    if name == "torch":
        return cls(source, device=device, precision=precision)
    return cls(source, precision=precision, device=device)


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


def _auto(source, is_run: bool, device, precision, threads):
    if is_run:
        log.info("auto: backend torch (%s is a training run directory; build a bundle for a faster backend)", source)
        return open_backend("torch", source, device, precision, threads)
    from deramos_rt.backends.calibration import cpu_key, measured_order

    candidates, order = measured_order(source.manifest, cpu_key(), _auto_candidates(source, device, precision))
    log.info("auto: %s", order)
    passed = []
    for name, dev, prec, why in candidates:
        try:
            backend = open_backend(name, source, dev, prec, threads)
        except DeramosError as exc:
            passed.append(f"{name} {prec} on {dev}: {exc}")
            continue
        log.info("auto: backend %s %s on %s (%s)", name, prec, dev, why)
        for line in passed:
            log.info("auto: passed over %s", line)
        return backend
    raise DeramosError("no backend works here for bundle " f"{source.root}: " + "; ".join(passed or ["no candidate"]))
