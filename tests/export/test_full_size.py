"""Graphs written with ONNX external data (cheap: a tiny model with the threshold lowered), and (slow: about
ten minutes on two cores) the paper's model at full size, MuQ-large + roberta-base with random weights,
exported, gated and scored like the torch model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("onnxruntime")

from deramos_rt.bundle import load_bundle  # noqa: E402
from deramos_rt.errors import DeramosError  # noqa: E402
from deramos_rt.scorer import Scorer  # noqa: E402
from export import graphs  # noqa: E402
from export.testing import ROBERTA_VOCAB_SIZE, roberta_tokenizer_folder, tiny_bundle, write_full_size_run  # noqa: E402


def _clips(folder, rate, seconds=(3.0, 5.0)):
    rng = np.random.default_rng(0)
    out = []
    for i, (length, prompt) in enumerate(zip(seconds, ("a calm piano piece with strings", "loud drums"))):
        t = np.arange(int(rate * length)) / rate
        wave = 0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t) + 0.05 * rng.standard_normal(t.size)
        path = folder / f"clip{i}.wav"
        sf.write(path, wave.astype(np.float32), rate)
        out.append((str(path), prompt))
    return out


def _max_delta(a, b):
    return max(abs(x.mi - y.mi) for x, y in zip(a, b)), max(abs(x.ta - y.ta) for x, y in zip(a, b))


def test_external_data_graphs_are_listed_hashed_and_score(tmp_path, monkeypatch):
    """Over graphs.EXTERNAL_DATA_BYTES (1.8 GB) weights go to ``<graph>.data``: lowered here to one byte."""
    monkeypatch.setattr(graphs, "EXTERNAL_DATA_BYTES", 1)
    out = tiny_bundle(tmp_path, parity_files=2, parity_random=4)
    bundle = load_bundle(out)
    fp32 = bundle.variants["fp32"]
    data = [name for name in fp32["files_all"] if name.endswith(".onnx.data")]
    assert data and all(fp32["slimmed"].values())  # every slimmed graph was re-saved with external data
    for name in data:
        assert (out / name).stat().st_size > 1000
        assert bundle.manifest["files"][name]["bytes"] == (out / name).stat().st_size
    assert json.loads((out / "parity.json").read_text())["variants"]["fp32"]["status"] == "passed"
    clips = _clips(tmp_path, 16000)
    reference = Scorer(tmp_path / "run", backend="torch", decode_workers=0).score(clips)
    exported = Scorer(out, backend="onnxruntime", precision="fp32", decode_workers=0).score(clips)
    assert max(_max_delta(reference, exported)) < 1e-5
    raw = bytearray((out / data[0]).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (out / data[0]).write_bytes(bytes(raw))
    with pytest.raises(DeramosError, match=f"{data[0]} does not match its sha256"):
        load_bundle(out)


@pytest.mark.slow
def test_full_size_paper_model_exports_and_scores_like_torch(tmp_path):
    from export.build_engine import build_bundle

    tokenizer = roberta_tokenizer_folder(tmp_path / "tokenizer")
    run = write_full_size_run(tmp_path / "run", tokenizer)
    out = build_bundle(run, tmp_path / "bundle", ("fp32",), slim=False, parity_files=1, parity_random=1)
    bundle = load_bundle(out)
    manifest = bundle.manifest
    assert manifest["text"]["vocab_size"] == ROBERTA_VOCAB_SIZE and manifest["audio"]["sample_rate"] == 24000
    assert manifest["audio"]["resampler"] == "torchaudio"
    audio_bytes = manifest["files"]["audio.fp32.onnx"]["bytes"]
    assert 1.0e9 < audio_bytes < graphs.EXTERNAL_DATA_BYTES  # MuQ-large: one file, under protobuf's limit
    audio_x = manifest["graphs"]["audio"]["outputs"][1]["shape"]
    assert audio_x[0] == "batch" and audio_x[2] == 768  # TA keys/values at ta_dim
    parity = json.loads((out / "parity.json").read_text())["variants"]["fp32"]
    assert parity["status"] == "passed", parity["status"]
    clips = _clips(tmp_path, 44100)
    reference = Scorer(run, backend="torch", decode_workers=0).score(clips)
    exported = Scorer(out, backend="onnxruntime", precision="fp32", decode_workers=0).score(clips)
    mi, ta = _max_delta(reference, exported)
    assert mi < 1e-3 and ta < 1e-3, (mi, ta)
