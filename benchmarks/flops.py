"""Counted FLOPs of the three model parts (``training.split``) and the matrix-product shapes that carry them.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (as ``benchmarks/muq_cpu.py`` does) on
one clip and one prompt. The ``quantisable`` share is the FLOPs of products with a weight matrix
(``aten.mm`` / ``aten.addmm``: every ``nn.Linear`` and attention projection), which the int8 bundle runs
as ``MatMulInteger``; convolutions and activation-by-activation products (``bmm``, attention) stay fp32.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

WEIGHT_PRODUCTS = ("mm", "addmm")


class _ShapeRecorder(TorchDispatchMode):
    """Records (m, k, n) -> FLOPs of every 2-D weight product that runs under it."""

    def __init__(self):
        super().__init__()
        self.shapes: dict[tuple[int, int, int], float] = defaultdict(float)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in WEIGHT_PRODUCTS:
            a, b = (args[0], args[1]) if name == "mm" else (args[1], args[2])
            m, k = a.shape
            n = b.shape[1]
            self.shapes[(int(m), int(k), int(n))] += 2.0 * m * k * n
        return func(*args, **(kwargs or {}))


def count(module, *inputs) -> dict:
    """FLOPs of ``module(*inputs)``: total, weight-product (quantisable) share and product shapes.

    Returns:
        ``{"flops", "quantisable_flops", "by_op": {op: flops}, "shapes": {(m, k, n): flops}}``.
    """
    counter = FlopCounterMode(display=False)
    recorder = _ShapeRecorder()
    with torch.inference_mode(), recorder, counter:
        module(*inputs)
    by_op = {str(op).split(".")[-1] if "." in str(op) else str(op): float(v)
             for op, v in counter.get_flop_counts().get("Global", {}).items()}
    quantisable = sum(v for op, v in by_op.items() if op in WEIGHT_PRODUCTS)
    return {"flops": float(counter.get_total_flops()), "quantisable_flops": float(quantisable),
            "by_op": by_op, "shapes": dict(recorder.shapes)}


def model_flops(audio_part, text_part, ta_part, tokenizer, num_samples: int, prompt: str,
                device: str = "cpu") -> dict:
    """Counted FLOPs of one clip through the audio part, one prompt through the text part and one TA pair.

    Returns:
        ``{"audio": count, "text": count, "ta": count, "tokens": prompt length in tokens}`` (see :func:`count`).
    """
    wave = (0.1 * torch.randn(1, num_samples, generator=torch.Generator().manual_seed(0))).to(device)
    tokens = tokenizer([prompt])
    ids = torch.from_numpy(tokens.input_ids).to(device)
    mask = torch.from_numpy(tokens.attention_mask).to(device)
    audio = count(audio_part, wave)
    with torch.inference_mode():
        _, audio_x = audio_part(wave)
        text_x = text_part(ids, mask)
    return {"audio": audio, "text": count(text_part, ids, mask), "ta": count(ta_part, audio_x, text_x, mask),
            "tokens": int(mask.sum())}


def per_clip(flops: dict, clips_per_prompt: float) -> dict[str, float]:
    """FLOPs per clip of a job where each distinct prompt serves ``clips_per_prompt`` clips.

    Returns:
        ``{"total", "quantisable", "audio", "ta", "text"}`` (text amortised over its clips).
    """
    text = flops["text"]["flops"] / clips_per_prompt
    total = flops["audio"]["flops"] + flops["ta"]["flops"] + text
    quantisable = (flops["audio"]["quantisable_flops"] + flops["ta"]["quantisable_flops"]
                   + flops["text"]["quantisable_flops"] / clips_per_prompt)
    return {"total": total, "quantisable": quantisable, "audio": flops["audio"]["flops"],
            "ta": flops["ta"]["flops"], "text": text}


def bound_clips_per_s(per: dict[str, float], fp32_rate: float, int8_rate: float | None = None) -> float:
    """Clips/s if every FLOP ran at the measured GEMM rate (GFLOP/s): the FLOP-bound limit.

    For int8 graphs the quantisable share runs at ``int8_rate`` and the rest at ``fp32_rate``.
    """
    if int8_rate:
        seconds = per["quantisable"] / (int8_rate * 1e9) + (per["total"] - per["quantisable"]) / (fp32_rate * 1e9)
    else:
        seconds = per["total"] / (fp32_rate * 1e9)
    return 1.0 / seconds


def shapes_at_batch(shapes: dict[tuple[int, int, int], float], batch: int) -> dict[tuple[int, int, int], float]:
    """The product shapes of a batch-1 count scaled to ``batch`` rows of clips (m grows, k and n stay)."""
    return {(m * batch, k, n): f * batch for (m, k, n), f in shapes.items()}
