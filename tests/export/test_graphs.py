import pytest
import torch

from training.backbones import create_backbone

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from export.graphs import export_audio_encoder  # noqa: E402
from export.verify import compare_onnx  # noqa: E402


@pytest.mark.parametrize("name,options", [("muq", {"size": "tiny", "clip_seconds": 2.0}),
                                          ("tiny", {"clip_seconds": 1.0})])
def test_audio_encoder_exports_with_dynamic_batch_and_matches_torch(tmp_path, name, options):
    torch.manual_seed(0)
    backbone = create_backbone("audio", name, **options).eval()
    path = export_audio_encoder(backbone, tmp_path / f"{name}.onnx")
    report = compare_onnx(backbone, path, batch_sizes=(1, 3))
    for batch, errors in report.items():
        assert errors["max_rel"] < 1e-3, (batch, errors)
