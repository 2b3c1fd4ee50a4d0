"""Parity of an exported graph with its torch module, on seeded random inputs, per batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def compare_onnx(backbone: torch.nn.Module, onnx_path: str | Path, batch_sizes=(1, 2), seed: int = 0) -> dict:
    """Run torch and ONNX Runtime (CPU) on the same waveforms.

    Returns:
        ``{batch_size: {"max_abs": float, "max_rel": float}}`` where ``max_rel`` is the max absolute error
        divided by the max absolute torch output.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    report = {}
    for batch in batch_sizes:
        wave = (0.1 * torch.randn(batch, backbone.contract.num_samples, generator=generator)).float()
        with torch.no_grad():
            expected = backbone.eval()(wave).numpy()
        got = session.run(["hidden"], {"waveform": wave.numpy()})[0]
        err = float(np.abs(got - expected).max())
        report[batch] = {"max_abs": err, "max_rel": err / float(np.abs(expected).max())}
    return report
