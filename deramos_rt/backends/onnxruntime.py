"""ONNX Runtime backend: the bundle's three graphs in three InferenceSessions.

Devices: ``cpu`` (CPU provider), ``cuda`` / ``cuda:N`` (CUDA provider) and ``tensorrt`` / ``tensorrt:N``
(ONNX Runtime's TensorRT provider, CUDA behind it). ONNX Runtime does not fail when a requested provider
is missing: it warns and runs on the CPU. That would make a user's "GPU" figures CPU figures, so the
active providers are read back from every session and a GPU request that ended on the CPU is an error.

onnxruntime is imported inside the class, so ``import deramos_rt`` never needs it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from deramos_rt.backends.base import BackendInfo
from deramos_rt.backends.ort_device import OrtDeviceIO, is_device_value
from deramos_rt.bundle import GRAPHS, Bundle
from deramos_rt.errors import DeramosError

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
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


def default_cache_dir(bundle: Bundle) -> Path:
    """Per-bundle cache folder for provider engine caches (``$DERAMOS_CACHE`` or ``~/.cache/deramos_rt``)."""
    base = Path(os.environ.get("DERAMOS_CACHE", Path.home() / ".cache" / "deramos_rt"))
    return base / "ort-tensorrt" / bundle.sha256[:16]


class OnnxRuntimeBackend:
    """Runs a bundle's ONNX graphs with ONNX Runtime.

    Args:
        bundle: a loaded :class:`deramos_rt.bundle.Bundle`.
        device: ``cpu`` (default), ``cuda``, ``cuda:N``, ``tensorrt`` or ``tensorrt:N``.
        precision: ``fp32`` (default), ``int8`` (CPU only) or ``fp16`` (GPU only).
        threads: intra-op threads per session (None or 0: ONNX Runtime's default, one per core).
        cache_dir: where the TensorRT provider keeps its engine and timing caches.
        allow_fp16_cpu: let fp16 graphs run on the CPU provider (export parity checks only: slow, and
            not a serving configuration).

    Raises:
        DeramosError: onnxruntime missing, an unknown / absent / unsuitable precision, a GPU device whose
            provider is not active, or an unreadable graph file (named).
    """

    def __init__(self, bundle: Bundle, device: str | None = None, precision: str | None = None,
                 threads: int | None = None, *, cache_dir: str | Path | None = None, allow_fp16_cpu: bool = False):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise DeramosError(f"the onnxruntime backend needs ONNX Runtime: {INSTALL_HINT}") from exc
        self._ort = ort
        self.bundle = bundle
        device, precision, threads = device or "cpu", precision or "fp32", threads or 0
        kind, index = parse_device(device)
        _check_precision(bundle, precision, "cuda" if allow_fp16_cpu and precision == "fp16" else kind)
        self._cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(bundle)
        self._outputs = {g: [o["name"] for o in bundle.manifest["graphs"][g]["outputs"]] for g in GRAPHS}
        self._sessions = {}
        for graph in GRAPHS:
            providers = self._providers(kind, index, precision, graph)
            self._sessions[graph] = self._session(bundle.graph_path(precision, graph), providers, threads)
            _check_active(kind, self._sessions[graph].get_providers(), graph)
        # Dynamic int8 quantisation takes one activation scale per tensor, over the whole batch: a clip's
        # (or prompt's) scores would then depend on its batch mates. Quantised graphs run one item at a time.
        self._per_item = {g for g in GRAPHS if precision == "int8" and "fp32" in bundle.variants
                          and bundle.graph_path("int8", g) != bundle.graph_path("fp32", g)}
        active = self._sessions["audio"].get_providers()
        name = "cpu" if kind == "cpu" else f"{kind}:{index}"
        self.info = BackendInfo("onnxruntime", precision, name,
                                f"providers={','.join(active)}; onnxruntime {ort.__version__}")
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
        cuda = (CUDA_EP, {
            "device_id": index,
            # Exhaustive search benchmarks conv algorithms per new shape (slow first calls); the
            # heuristic pick is stable and good for the audio front ends' strided convs.
            "cudnn_conv_algo_search": "HEURISTIC",
            "arena_extend_strategy": "kNextPowerOfTwo",
            "do_copy_in_default_stream": True,
        })
        if kind == "cuda":
            return [cuda, CPU_EP]
        cache = self._cache_dir / graph
        cache.mkdir(parents=True, exist_ok=True)
        trt = {
            "device_id": index,
            "trt_fp16_enable": precision == "fp16",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_max_workspace_size": 4 << 30,
            **trt_profile_options(self.bundle.manifest, graph),
        }
        return [(TRT_EP, trt), cuda, CPU_EP]

    def _session(self, path: Path, providers: list, threads: int):
        ort = self._ort
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3  # errors only; provider fallbacks are checked below, not logged
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own pybind types (InvalidProtobuf, Fail, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DeramosError(f"ONNX Runtime cannot load graph file {path} (corrupt, truncated or not an ONNX "
                               f"model?): {first}") from exc

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
        out = np.zeros((len(ids), ids.shape[1], rows[0].shape[-1]), dtype=np.float32)
        for i, row in enumerate(rows):
            out[i, : row.shape[1]] = row[0]
        return out

    def run_ta(self, audio_x: np.ndarray, text_x: np.ndarray, text_mask: np.ndarray) -> np.ndarray:
        if self._device_io and is_device_value(audio_x):
            return self._device_io.run_ta(audio_x, text_x, text_mask)
        feed = {"audio_x": np.ascontiguousarray(audio_x, dtype=np.float32),
                "text_x": np.ascontiguousarray(text_x, dtype=np.float32),
                "text_mask": np.ascontiguousarray(text_mask, dtype=np.int64)}
        return self._run("ta", feed)[0]

    def _run(self, graph: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._sessions[graph].run(self._outputs[graph], feed)

    def close(self) -> None:
        self._sessions.clear()


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
    bundle.graph_path(precision, "audio")  # raises, naming the variants the bundle has


def _check_active(kind: str, active: list[str], graph: str) -> None:
    """A GPU request that ONNX Runtime silently served from the CPU is an error, never a fallback."""
    wanted = {"cuda": CUDA_EP, "tensorrt": TRT_EP}.get(kind)
    if wanted and wanted not in active:
        raise DeramosError(f"device {kind!r} was asked for but ONNX Runtime activated only {', '.join(active)} "
                           f"for the {graph} graph "
                           f"({wanted} failed to start: check the CUDA / cuDNN / TensorRT libraries); refusing "
                           "to run on the CPU instead")
