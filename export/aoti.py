"""AOTInductor packages of the three parts of ``training/split.py``: ``BUNDLE/aoti/{audio,text,ta}.pt2``.

Each part is captured with ``torch.export.export`` (symbolic ``batch`` on every input, symbolic ``tokens``
on the text length) and compiled with ``torch._inductor.aoti_compile_and_package``; the weights travel
inside the package, so the runtime needs torch but neither the training code nor the run directory.

Two traps are handled here:

* Capturing with an example batch of 1 would specialise the batch to 1 (sizes 0 and 1 are never made
  symbolic), so the examples have batch 2 and 7 tokens while the declared ranges start at 1. With input
  checks on (``AOTI_RUNTIME_CHECK_INPUTS=1``) the compiled code would then refuse batch 1 ("expected >=
  2"); ``aot_inductor.check_lowerbound`` off makes it accept the declared minimum of 1.
* A package is machine code: compiled for this torch version, this device type and, on the CPU, the
  instruction set the compiler picked here. The manifest records all three (:func:`aoti_section`) and
  :class:`deramos_rt.backends.aoti.AotiBackend` refuses a mismatch before loading anything.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

from deramos_rt.backends.aoti import cpu_isa, fp32_math
from deramos_rt.bundle import GRAPHS

log = logging.getLogger(__name__)
FOLDER = "aoti"
INDUCTOR_CONFIGS = {"aot_inductor.check_lowerbound": False}
DEVICES = ("cpu", "cuda")


def default_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _export_plans(model, device: str, max_batch: int | None, max_tokens: int) -> dict[str, tuple]:
    """``{graph: (module, example args, dynamic shapes)}`` for the three parts on ``device``.

    ``model`` (a DeraMos or an ensemble) stays on the CPU: the examples are computed there, and a copy goes
    to ``device``. Each input's symbolic axes are the ones its part declares (``dynamic_axes()``).
    """
    import torch

    from export.graphs import part_examples
    from training.split import AUDIO_INPUTS, TA_INPUTS, TEXT_INPUTS, split_model

    examples = part_examples(*split_model(model)[:2])  # batch 2, 7 tokens: neither size is specialised
    examples = {g: tuple(t.to(device) for t in args) for g, args in examples.items()}
    parts = split_model(model if device == "cpu" else copy.deepcopy(model).to(device))
    batch = torch.export.Dim("batch", min=1, max=max_batch) if max_batch else torch.export.Dim("batch", min=1)
    dims = {"batch": batch, "tokens": torch.export.Dim("tokens", min=1, max=max_tokens)}
    plans = {}
    for graph, part, inputs in zip(GRAPHS, parts, (AUDIO_INPUTS, TEXT_INPUTS, TA_INPUTS)):
        axes = part.dynamic_axes()
        shapes = {name: {dim: dims[axis] for dim, axis in axes[name].items()} for name in inputs}
        plans[graph] = (part, examples[graph], shapes)
    return plans


def build_packages(model, out_dir: str | Path, device: str, max_tokens: int,
                   max_batch: int | None = None) -> dict[str, Any]:
    """Export and compile the three parts into ``out_dir/aoti/{audio,text,ta}.pt2``.

    Args:
        model: the :class:`training.model.DeraMos` (eval, CPU); it is not modified (a copy goes to CUDA).
        out_dir: the bundle folder being built.
        device: ``cpu`` or ``cuda``.
        max_tokens: upper end of the ``tokens`` axis (the tokenizer's truncation length).
        max_batch: upper end of the ``batch`` axis (None: unbounded).

    Returns:
        The manifest's ``aoti`` section (see :func:`aoti_section`) plus ``seconds`` per graph.

    Raises:
        Exception: whatever torch.export or Inductor raises; the caller records it as the reason for
            dropping the packages.
    """
    import torch
    import torch._inductor

    from export.graphs import mha_fastpath_off

    if device not in DEVICES:
        raise ValueError(f"AOTInductor device must be one of {', '.join(DEVICES)}, got {device!r}")
    folder = Path(out_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    files, seconds = {}, {}
    plans = _export_plans(model, device, max_batch, max_tokens)
    for graph, (module, args, shapes) in plans.items():
        start = time.perf_counter()
        # The fused MHA fast path is an opaque op outside export's decomposition; off, the layers trace
        # to plain linear / softmax / layer_norm that Inductor compiles.
        # fp32_math: Inductor picks TF32 or not for its matmul kernels from torch's switches at compile time.
        with mha_fastpath_off(), torch.no_grad(), fp32_math(torch):
            program = torch.export.export(module.eval(), args, dynamic_shapes=shapes)
            path = torch._inductor.aoti_compile_and_package(
                program, package_path=str(folder / f"{graph}.pt2"), inductor_configs=dict(INDUCTOR_CONFIGS))
        files[graph] = Path(path).relative_to(out_dir).as_posix()
        seconds[graph] = round(time.perf_counter() - start, 1)
        log.info("AOTInductor %s package on %s in %.1f s", graph, device, seconds[graph])
    del plans
    if device == "cuda":
        torch.cuda.empty_cache()
    return {**aoti_section(files, device, max_batch, max_tokens), "compile_seconds": seconds}


def aoti_section(files: dict[str, str], device: str, max_batch: int | None, max_tokens: int) -> dict[str, Any]:
    """The manifest's ``aoti`` section for packages built here, now.

    ``isa`` is the CPU instruction-set flags (from /proc/cpuinfo) that compiled CPU code may use; for CUDA
    packages ``gpu`` names the GPU and its compute capability.
    """
    import torch

    missing = [g for g in GRAPHS if g not in files]
    if missing:
        raise ValueError(f"AOTInductor packages missing for: {', '.join(missing)}")
    section = {"files": dict(files), "torch_version": torch.__version__, "device": device, "precision": "fp32",
               "isa": cpu_isa(), "batch": [1, max_batch], "tokens": [1, max_tokens],
               "inductor_configs": dict(INDUCTOR_CONFIGS)}
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        section["gpu"] = {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}
    return section
