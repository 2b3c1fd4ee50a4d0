"""The AOTInductor backend: a bundle's compiled packages ``aoti/{audio,text,ta}.pt2``.

Needs torch (``torch._inductor.aoti_load_package``) but not the training code: the weights are inside the
packages. A package is machine code for one torch version, one device type and, on the CPU, the
instruction set of the machine that compiled it (or, on CUDA, one GPU architecture); loading it elsewhere
can crash the process instead of raising, so every mismatch is refused up front, in one line, from the
manifest alone (:func:`check_compatible`). CUDA packages carry host code too, compiled for the build
machine's CPU, so the instruction-set check applies to them as well.

The packages are fp32 and gated as such; on CUDA, TF32 is switched off for matmuls and convolutions while
they run (:func:`fp32_math`), so "fp32" is fp32 whatever the host program set.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from deramos_rt.backends.base import BackendInfo, in_chunks
from deramos_rt.bundle import GRAPHS
from deramos_rt.errors import DeramosError
from deramos_rt.trust import require_native_trust

# CPU features compiled code may use (gcc -march=native on the build machine picks from these).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def cpu_isa(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The :data:`ISA_FLAGS` this CPU has, from the first ``flags`` line of /proc/cpuinfo ([] if unreadable)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            return [f for f in ISA_FLAGS if f in flags]
    return []


def check_compatible(aoti: dict[str, Any] | None, root, device: str | None, precision: str | None,
                     torch_version: str, isa: list[str], gpu_capability: str | None) -> str:
    """The device to run on, or a DeramosError naming the first mismatch.

    Args:
        aoti: the manifest's ``aoti`` section.
        root: the bundle folder (for messages).
        device: the requested device (None: the packages' device).
        precision: the requested precision (None: the packages').
        torch_version: this process's ``torch.__version__``.
        isa: this CPU's :func:`cpu_isa`.
        gpu_capability: ``"major.minor"`` of the GPU to run on, None when torch sees no GPU.
    """
    if not aoti:
        raise DeramosError(f"bundle {root} has no AOTInductor packages (rebuild it with: python -m "
                           "export.build_engine --aoti)")
    built_for = aoti.get("device", "cpu")
    device = device or built_for
    if device.split(":")[0] != built_for:
        raise DeramosError(f"bundle {root}'s AOTInductor packages were compiled for {built_for}, not {device}: "
                           "use the onnxruntime backend or rebuild the bundle with --aoti-device "
                           f"{device.split(':')[0]}")
    if aoti.get("torch_version") != torch_version:
        raise DeramosError(f"bundle {root}'s AOTInductor packages were compiled by torch {aoti.get('torch_version')}, "
                           f"this is torch {torch_version}: use the onnxruntime backend or rebuild the bundle")
    package_precision = aoti.get("precision", "fp32")
    if precision not in (None, package_precision):
        raise DeramosError(f"bundle {root}'s AOTInductor packages are {package_precision}, not {precision}")
    lacking = [f for f in aoti.get("isa", []) if f not in isa]
    if lacking:
        host = " (CUDA packages carry host code for it too)" if built_for != "cpu" else ""
        raise DeramosError(f"bundle {root}'s AOTInductor packages were compiled for a CPU with "
                           f"{', '.join(aoti['isa'])}{host}; this CPU lacks {', '.join(lacking)}: use the "
                           "onnxruntime backend or rebuild the bundle on this machine")
    if built_for != "cpu":
        if gpu_capability is None:
            raise DeramosError(f"device {device!r} requested but this torch sees no CUDA GPU")
        wanted = (aoti.get("gpu") or {}).get("compute_capability")
        if wanted and wanted != gpu_capability:
            raise DeramosError(f"bundle {root}'s AOTInductor packages were compiled for GPUs of compute capability "
                               f"{wanted}, this GPU is {gpu_capability}: rebuild the bundle on this GPU")
    return device


@contextlib.contextmanager
def fp32_math(torch):
    """TF32 off for CUDA matmuls and cuDNN convolutions inside the block, the caller's setting restored after.

    cuBLAS and cuDNN read these switches at call time (torch allows TF32 in cuDNN convolutions by
    default, and a host program may allow it for matmuls). torch 2.9+ has per-backend ``fp32_precision``
    switches and refuses reads of the older ``allow_tf32`` ones once the two are mixed, so the newer are
    used where they exist.
    """
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(cudnn, "conv"):
        switches = [(matmul, "fp32_precision", "ieee"), (cudnn.conv, "fp32_precision", "ieee")]
    else:
        switches = [(matmul, "allow_tf32", False), (cudnn, "allow_tf32", False)]
    saved = [getattr(owner, name) for owner, name, _ in switches]
    for owner, name, value in switches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(switches, saved):
            setattr(owner, name, value)


class AotiBackend:
    """Run the bundle's AOTInductor packages.

    Args:
        bundle: a loaded :class:`deramos_rt.bundle.Bundle` whose manifest has an ``aoti`` section.
        device: must be the packages' device type (None: theirs).
        precision: must match the packages' (None: theirs).
        threads: torch's CPU threads while the backend is open (None: torch's default).
        trust_bundle: the user trusts this bundle's native code for this run (else it must be in the trust
            store: :mod:`deramos_rt.trust`).

    Attributes:
        max_batch: the packages' largest batch (the manifest's ``aoti.batch``; None: no limit). The
            compiled code does not check it, so larger calls are split here.

    Raises:
        DeramosError: an untrusted bundle (checked before anything is read), no packages, a torch version /
            device / CPU instruction set / GPU mismatch, or a package that does not load (named).
    """

    def __init__(self, bundle, device: str | None = None, precision: str | None = None, threads: int | None = None,
                 *, trust_bundle: bool = False):
        require_native_trust(bundle, "AOTInductor packages", trust_bundle)
        import torch
        import torch._inductor

        from deramos_rt.backends.torch import TorchDevicePath, TorchThreads

        aoti = bundle.manifest.get("aoti")
        capability = None
        if torch.cuda.is_available() and (device or (aoti or {}).get("device", "cpu")).startswith("cuda"):
            index = torch.device(device or "cuda").index or 0
            capability = "{}.{}".format(*torch.cuda.get_device_capability(index))
        device = check_compatible(aoti, bundle.root, device, precision, torch.__version__, cpu_isa(), capability)
        self._torch = torch
        self._device = torch.device(device)
        self._graphs = {}
        for graph in GRAPHS:
            path = bundle.path(aoti["files"][graph])
            try:
                if self._device.type == "cuda":
                    self._graphs[graph] = torch._inductor.aoti_load_package(
                        str(path), device_index=self._device.index or 0)
                else:
                    self._graphs[graph] = torch._inductor.aoti_load_package(str(path))
            except Exception as exc:  # a compiled package fails with RuntimeError or OSError variants
                raise DeramosError(f"cannot load AOTInductor package {path}: {exc}") from exc
        self.max_batch = (aoti.get("batch") or [None, None])[1]
        self._threads = TorchThreads(torch, threads)
        # On CUDA: batches prepared on the GPU, the audio graph in the Scorer's audio thread (backends.torch).
        self.device_path = TorchDevicePath(torch, self._device, lambda wave: self._call("audio", wave), graphs=False)
        self.overlaps_batches = self.device_path.on_gpu
        where = aoti.get("gpu", {}).get("name") if self._device.type == "cuda" else " ".join(aoti.get("isa", []))
        self.info = BackendInfo("aoti", aoti.get("precision", "fp32"), str(self._device),
                                f"torch {torch.__version__}, packages for {where or aoti['device']}")

    def input_stage(self, protocol):
        return self.device_path.stage(protocol) if self.device_path.on_gpu else None

    def job_threads(self, threads: int | None):
        return self._threads.job(threads)

    def _call(self, graph: str, *tensors):
        torch = self._torch
        # The packages are fp32 and gated as such: TF32 (matmul and cuDNN) stays off while they run on CUDA.
        math = fp32_math(torch) if self._device.type == "cuda" else contextlib.nullcontext()
        with torch.inference_mode(), math:
            out = self._graphs[graph](*tensors)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def _run(self, graph: str, *arrays) -> tuple[np.ndarray, ...]:
        from deramos_rt.backends.torch import to_device, to_host

        def once(part: dict) -> tuple[np.ndarray, ...]:
            outs = self._call(graph, *[to_device(self._torch, a, self._device) for a in part.values()])
            return tuple(to_host(o) for o in outs)

        return tuple(in_chunks(once, dict(enumerate(arrays)), self.max_batch))

    def run_audio(self, waveform) -> tuple[np.ndarray, np.ndarray]:
        from deramos_rt.backends.torch import Staged

        if isinstance(waveform, Staged):
            return self.device_path.run_audio(waveform)
        mi, audio_x = self._run("audio", waveform.astype(np.float32, copy=False))
        return mi, audio_x

    def run_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._run("text", input_ids.astype(np.int64), attention_mask.astype(np.int64))[0]

    def run_ta(self, audio_x, text_x: np.ndarray, text_mask: np.ndarray) -> np.ndarray:
        if isinstance(audio_x, self._torch.Tensor):
            self.device_path.adopt(audio_x)
        else:
            audio_x = audio_x.astype(np.float32, copy=False)
        return self._run("ta", audio_x, text_x.astype(np.float32, copy=False), text_mask.astype(np.int64))[0]

    def close(self) -> None:
        self._graphs = {}
        self._threads.restore()
