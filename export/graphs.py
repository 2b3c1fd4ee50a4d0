"""ONNX graphs, one function per graph. This issue's graph: a frozen audio encoder, waveform -> hidden.

The legacy TorchScript exporter (``dynamo=False``, opset 17) is used: every project front end computes its
STFT as a strided conv1d, so nothing needs the dynamo exporter, and the legacy exporter keeps a dynamic
batch axis from a batch-2 example without specialising it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)
OPSET = 17


def export_audio_encoder(backbone: torch.nn.Module, path: str | Path, opset: int = OPSET,
                         dynamic_batch: bool = True) -> Path:
    """Export ``waveform (B, N) float32 -> hidden (B, T, D)`` for an audio backbone.

    Args:
        backbone: an :class:`training.backbones.AudioBackbone` (its contract gives N).
        path: output ``.onnx`` file; weights over 2 GB go to external data next to it.
        opset: ONNX opset for the legacy exporter.
        dynamic_batch: keep the batch axis symbolic (``batch``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    backbone = backbone.eval()
    example = torch.zeros(2, backbone.contract.num_samples)
    axes = {"waveform": {0: "batch"}, "hidden": {0: "batch"}} if dynamic_batch else None
    # nn.TransformerEncoderLayer's fused inference fast path has no ONNX export: use the plain ops.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            torch.onnx.export(backbone, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["waveform"], output_names=["hidden"], dynamic_axes=axes)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    backbone.eval()  # the exporter can leave modules in training mode
    log.info("exported %s (opset %d, dynamic batch %s)", path, opset, dynamic_batch)
    return path
