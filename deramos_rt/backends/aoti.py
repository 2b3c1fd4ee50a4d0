"""The AOTInductor backend: a bundle's compiled packages ``aoti/{audio,text,ta}.pt2``.

Needs torch (``torch._inductor.aoti_load_package``) but not the training code. A package is compiled for
one torch version, one CPU instruction set or GPU, and one device; a mismatch is refused up front rather
than failing inside the compiled code.
"""

from __future__ import annotations

import numpy as np

from deramos_rt.backends.base import BackendInfo
from deramos_rt.bundle import GRAPHS
from deramos_rt.errors import DeramosError


class AotiBackend:
    """Run the bundle's AOTInductor packages.

    Args:
        bundle: a loaded :class:`deramos_rt.bundle.Bundle` whose manifest has an ``aoti`` section.
        precision: must match the packages' (None: theirs).
        device: must be the packages' device type (None: theirs).
    """

    def __init__(self, bundle, precision: str | None = None, device: str | None = None):
        import torch
        import torch._inductor

        aoti = bundle.manifest.get("aoti")
        if not aoti:
            raise DeramosError(f"bundle {bundle.root} has no AOTInductor packages (rebuild it with AOTI enabled)")
        built_for = aoti.get("device", "cpu")
        device = device or built_for
        if device.split(":")[0] != built_for.split(":")[0]:
            raise DeramosError(f"bundle {bundle.root}'s AOTInductor packages were compiled for {built_for}, not {device}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise DeramosError(f"device {device!r} requested but this torch sees no CUDA GPU")
        if aoti.get("torch_version") and aoti["torch_version"] != torch.__version__:
            raise DeramosError(f"bundle {bundle.root}'s AOTInductor packages need torch {aoti['torch_version']}, "
                               f"this is {torch.__version__}: use the onnxruntime backend or rebuild the bundle")
        package_precision = aoti.get("precision", "fp32")
        if precision not in (None, package_precision):
            raise DeramosError(f"bundle {bundle.root}'s AOTInductor packages are {package_precision}, not {precision}")
        self._torch = torch
        self._device = torch.device(device)
        self._graphs = {}
        for graph in GRAPHS:
            path = bundle.path(aoti["files"][graph])
            try:
                self._graphs[graph] = torch._inductor.aoti_load_package(str(path))
            except Exception as exc:  # a compiled package fails with RuntimeError or OSError variants
                raise DeramosError(f"cannot load AOTInductor package {path}: {exc}") from exc
        self.info = BackendInfo("aoti", package_precision, str(self._device),
                                f"torch {torch.__version__}, packages for {aoti.get('isa') or built_for}")

    def _run(self, graph: str, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        torch = self._torch
        tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(self._device) for a in arrays]
        with torch.inference_mode():
            out = self._graphs[graph](*tensors)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return tuple(o.float().cpu().numpy() for o in outs)

    def run_audio(self, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mi, audio_x = self._run("audio", waveform.astype(np.float32, copy=False))
        return mi, audio_x

    def run_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._run("text", input_ids.astype(np.int64), attention_mask.astype(np.int64))[0]

    def run_ta(self, audio_x: np.ndarray, text_x: np.ndarray, text_mask: np.ndarray) -> np.ndarray:
        return self._run("ta", audio_x.astype(np.float32, copy=False), text_x.astype(np.float32, copy=False),
                         text_mask.astype(np.int64))[0]

    def close(self) -> None:
        self._graphs = {}
