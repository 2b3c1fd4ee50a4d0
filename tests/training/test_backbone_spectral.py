"""spectral backbone: what its features mean (tempo, pitch class, mode, level), batch independence,
refusals, the registry, and an ONNX round trip through onnxruntime at batch 1 and 3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deramos_rt.errors import DeramosError
from training.backbones import create_backbone
from training.backbones import spectral as sp

SR = 16_000
SECONDS = 4.0
N = int(SR * SECONDS)
TEMPO = slice(sp.FRAME_FEATURES, sp.FRAME_FEATURES + sp.N_LAGS)
CHROMA_MEAN = slice(TEMPO.stop, TEMPO.stop + sp.N_CHROMA)
MAJOR, MINOR = CHROMA_MEAN.stop, CHROMA_MEAN.stop + 1


@pytest.fixture(scope="module")
def backbone() -> sp.SpectralAudio:
    return create_backbone("audio", "spectral", clip_seconds=SECONDS).eval()


def clicks(bpm: float) -> np.ndarray:
    """Short decaying 1 kHz blips every beat."""
    t = np.arange(N) / SR
    x = np.zeros(N)
    for start in np.arange(0.1, SECONDS, 60.0 / bpm):
        age = t - start
        x += np.where(age >= 0, np.exp(-np.clip(age, 0, None) * 60.0), 0.0) * np.sin(2 * np.pi * 1000 * t)
    return (0.5 * x).astype(np.float32)


def chord(midi_notes: list[int]) -> np.ndarray:
    """A sustained chord of harmonic tones."""
    t = np.arange(N) / SR
    x = np.zeros(N)
    for note in midi_notes:
        f0 = 440.0 * 2 ** ((note - 69) / 12)
        for h in range(1, 4):
            x += np.sin(2 * np.pi * f0 * h * t) / h
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def encode(backbone, *signals: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return backbone(torch.from_numpy(np.stack(signals))).numpy()


def test_output_shape_and_silence_is_finite(backbone):
    out = encode(backbone, np.zeros(N, np.float32), chord([60, 64, 67]))
    assert out.shape == (2, 20, sp.HIDDEN_SIZE) == (2, SECONDS * 5, 96)
    assert np.isfinite(out).all()
    # Clip-level features are the same on every frame; frame features vary over a musical clip.
    assert np.allclose(out[:, :1, sp.FRAME_FEATURES:], out[:, :, sp.FRAME_FEATURES:])
    assert out[1, :, 0].std() >= 0 and not np.allclose(out[0], out[1])


@pytest.mark.parametrize("bpm, period", [(120, 0.5), (75, 0.8)])
def test_tempo_autocorrelation_peaks_at_the_beat_period(backbone, bpm, period):
    tempo = encode(backbone, clicks(bpm))[0, 0, TEMPO]
    centres = sp.tempo_lags() / sp.FAST_RATE  # seconds
    near = np.abs(np.log(centres / period)) < 0.12  # the band(s) around the beat period
    assert near.any()
    assert tempo[near].max() > tempo[np.abs(np.log(centres / period)) > 0.3].max() + 0.2


def test_chroma_finds_the_pitch_classes_and_the_mode(backbone):
    c_major, c_minor = encode(backbone, chord([48, 60, 64, 67]), chord([48, 60, 63, 67]))[:, 0]
    assert set(np.argsort(c_major[CHROMA_MEAN])[-3:]) == {0, 4, 7}
    assert set(np.argsort(c_minor[CHROMA_MEAN])[-3:]) == {0, 3, 7}
    assert c_major[MAJOR] > c_major[MINOR]
    assert c_minor[MINOR] > c_minor[MAJOR]


def test_level_features_fall_in_a_dropout(backbone):
    x = chord([60, 64, 67])
    gap = x.copy()
    gap[SR * 2 : SR * 2 + 1600] = 0.0  # 100 ms of silence inside frame 10 (2.0-2.2 s)
    low = sp.N_MELS + sp.N_CHROMA + 2
    full, holed = encode(backbone, x, gap)
    assert holed[10, low] < full[10, low] - 1.0
    assert np.allclose(holed[4, :sp.FRAME_FEATURES], full[4, :sp.FRAME_FEATURES], atol=1e-5)  # far from the gap


def test_each_clip_depends_on_itself_only(backbone):
    signals = [chord([60, 64, 67]), clicks(100), np.zeros(N, np.float32)]
    together = encode(backbone, *signals)
    for i, s in enumerate(signals):
        assert np.allclose(together[i], encode(backbone, s)[0], atol=1e-5)


def test_refuses_bad_input_and_options(backbone):
    with pytest.raises(DeramosError, match="expects"):
        backbone(torch.zeros(1, N - 1))
    with pytest.raises(DeramosError, match="frame_rate"):
        sp.SpectralAudio(clip_seconds=SECONDS, frame_rate=30.0)
    with pytest.raises(DeramosError, match="hidden_size"):
        sp.SpectralAudio(clip_seconds=SECONDS, hidden_size=64)
    with pytest.raises(DeramosError, match="at least 3.3 s"):
        sp.SpectralAudio(clip_seconds=3.0)


def test_has_no_learned_parameters_and_saves_its_fixed_maps(backbone):
    assert sum(p.numel() for p in backbone.parameters()) == 0
    assert set(backbone.state_dict()) == {"mel", "chroma", "keys", "lag_bands"}


def test_onnx_round_trip_matches_torch(backbone, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "spectral.onnx"
    with torch.no_grad():
        torch.onnx.export(backbone, (torch.zeros(2, N),), str(path), dynamo=False, opset_version=17,
                          input_names=["waveform"], output_names=["hidden"],
                          dynamic_axes={"waveform": {0: "batch"}, "hidden": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    signals = np.stack([chord([57, 60, 64]), clicks(140), np.zeros(N, np.float32)])
    for batch in (signals[:1], signals):
        expected = encode(backbone, *batch)
        (got,) = session.run(None, {"waveform": batch})
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
