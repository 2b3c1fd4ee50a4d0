"""The numpy reproduction of torchaudio's default Resample against torchaudio's own outputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import deramos_rt.resample as resample_module
from deramos_rt.audio import AudioProtocol, fit_length, prepare, resample
from deramos_rt.errors import DeramosError
from deramos_rt.resample import torchaudio_resample
from tests.data.make_resample_reference import cases, make_signal

REFERENCE = Path(__file__).parents[1] / "data" / "torchaudio_resample_ref.npz"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as data:
        return {key: data[key] for key in data.files}


def _case_id(case: dict) -> str:
    return f"{case['orig']}to{case['new']}-{case['channels']}ch-{case['frames']}"


def test_reference_cases_match_the_generator(reference):
    # The stored parameters and the generator's list must agree, or the inputs are not what torchaudio saw.
    expected = [[c["orig"], c["new"], c["channels"], c["frames"], c["seed"]] for c in cases()]
    assert reference["cases"].tolist() == expected
    assert "torchaudio 2.11.0" in reference["versions"].tolist()


@pytest.mark.parametrize("index", range(len(cases())), ids=[_case_id(c) for c in cases()])
def test_matches_torchaudio(reference, index):
    case = cases()[index]
    signal = make_signal(case["orig"], case["channels"], case["frames"], case["seed"])
    ours = torchaudio_resample(signal, case["orig"], case["new"])
    theirs = reference[f"out_{index}"]
    assert ours.dtype == np.float32
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_mono_input_gives_mono_output(reference):
    index = next(i for i, c in enumerate(cases()) if c["channels"] == 1 and c["orig"] == 44100)
    case = cases()[index]
    signal = make_signal(case["orig"], 1, case["frames"], case["seed"])[0]
    ours = torchaudio_resample(signal, case["orig"], case["new"])
    assert ours.shape == reference[f"out_{index}"][0].shape
    assert np.abs(ours - reference[f"out_{index}"][0]).max() <= TOLERANCE


def test_prepare_torchaudio_stereo_is_channel_resample_then_mean(reference):
    index = next(i for i, c in enumerate(cases()) if c["channels"] == 2 and c["orig"] == 44100)
    case = cases()[index]
    signal = make_signal(case["orig"], 2, case["frames"], case["seed"])  # (channels, frames)
    protocol = AudioProtocol(24000, 1.0, resampler="torchaudio")
    prepared = prepare(signal.T, case["orig"], protocol)  # prepare takes (frames, channels)
    assert prepared.shape == (24000,)
    per_channel = np.stack([torchaudio_resample(channel, case["orig"], 24000) for channel in signal])
    np.testing.assert_allclose(prepared, fit_length(per_channel.mean(axis=0), 24000), rtol=0, atol=1e-6)
    # ... and that is the authors' data path: torchaudio per channel, mean, truncate.
    authors = fit_length(reference[f"out_{index}"].mean(axis=0), 24000)
    assert np.abs(prepared - authors).max() <= TOLERANCE


def test_prepare_torchaudio_pads_short_clips():
    signal = make_signal(16000, 2, 4000, seed=3)
    prepared = prepare(signal.T, 16000, AudioProtocol(24000, 1.0, resampler="torchaudio"))
    resampled = torchaudio_resample(signal, 16000, 24000).mean(axis=0)
    assert resampled.shape == (6000,)
    np.testing.assert_allclose(prepared[:6000], resampled, rtol=0, atol=1e-6)
    assert not prepared[6000:].any()


@pytest.mark.parametrize("orig,new", [(16000, 24000), (44100, 24000), (22050, 16000), (12345, 24000), (8000, 44100)])
@pytest.mark.parametrize("n", [0, 1, 2, 146, 147, 148, 1000, 4801])
def test_output_length_is_ceil_new_n_over_orig(orig, new, n):
    out = torchaudio_resample(np.ones((2, n), dtype=np.float32), orig, new)
    assert out.shape == (2, math.ceil(new * n / orig))
    assert out.dtype == np.float32


def test_equal_rates_return_the_signal():
    signal = make_signal(24000, 1, 500, seed=1)[0]
    np.testing.assert_array_equal(torchaudio_resample(signal, 24000, 24000), signal)


@pytest.mark.parametrize("orig,new", [(0, 24000), (-16000, 24000), (16000, 0), (44100.5, 24000), ("16000", 24000),
                                      (None, 24000), (True, 24000), (16000, float("nan"))])
def test_bad_rates_raise_naming_them(orig, new):
    with pytest.raises(DeramosError, match="invalid resampling rates") as err:
        torchaudio_resample(np.zeros(100, dtype=np.float32), orig, new)
    assert repr(orig) in str(err.value) and repr(new) in str(err.value)


def test_integral_float_and_numpy_rates_are_accepted():
    signal = make_signal(16000, 1, 1000, seed=2)[0]
    expected = torchaudio_resample(signal, 16000, 24000)
    np.testing.assert_array_equal(torchaudio_resample(signal, 16000.0, np.int64(24000)), expected)


def test_bad_signal_shape_raises():
    with pytest.raises(DeramosError, match=r"\(1, 2, 100\)"):
        torchaudio_resample(np.zeros((1, 2, 100), dtype=np.float32), 16000, 24000)


def _direct_formula(signal: np.ndarray, orig: int, new: int, outputs: np.ndarray) -> np.ndarray:
    """torchaudio's filter evaluated output by output in float64, from its definition (not from the code).

    Output m is frame m // new, phase j = m % new; torchaudio takes the phase offset j / new in float32,
    which for large reduced rates moves the result by more than the tolerance, so this does too.
    """
    gcd = math.gcd(orig, new)
    orig, new = orig // gcd, new // gcd
    base = min(orig, new) * 0.99
    i = np.arange(signal.size)
    result = []
    for m in outputs:
        frame, phase = divmod(int(m), new)
        offset = float(np.float32(phase) / np.float32(new))
        t = np.clip(base * ((i - frame * orig) / orig - offset), -6, 6)
        window = np.cos(np.pi * t / 12) ** 2
        result.append(np.sum(signal * np.sinc(t) * window * base / orig))
    return np.array(result)


@pytest.mark.parametrize("orig,new", [(44101, 24000), (24000, 44101), (383999, 24000), (8000, 22051), (12345, 24000)])
def test_any_rates_follow_the_documented_formula(orig, new):
    # Coprime rates reduce to huge kernels in torchaudio (no reference can be made): check the definition.
    signal = make_signal(orig, 1, int(0.05 * orig) + 5, seed=7)[0]
    out = torchaudio_resample(signal, orig, new)
    picks = np.unique(np.linspace(0, out.size - 1, 40).astype(int))
    expected = _direct_formula(signal.astype(np.float64), orig, new, picks)
    assert np.abs(out[picks] - expected).max() <= TOLERANCE


@pytest.mark.parametrize("orig", [44100, 16000, 12345])  # one dense block, frames grouped, many blocks
def test_chunked_processing_gives_the_same_result(monkeypatch, orig):
    signal = make_signal(orig, 2, 30000, seed=5)
    whole = torchaudio_resample(signal, orig, 24000)
    monkeypatch.setattr(resample_module, "_CHUNK_ELEMENTS", 1000)  # a handful of rows per product
    chunked = torchaudio_resample(signal, orig, 24000)
    # BLAS may sum in another order for other row counts: equal to float32 rounding, not bit for bit.
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)


def _image_level_db(resampler: str, tone_hz: float) -> float:
    """Level of the image at 16 kHz - tone, relative to the tone, after upsampling 16 kHz -> 24 kHz."""
    rate = 16000
    tone = (0.5 * np.sin(2 * np.pi * tone_hz * np.arange(rate) / rate)).astype(np.float32)
    out = resample(tone, rate, 24000, resampler)[2400:-2400]  # skip the edges
    spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size)))
    freqs = np.fft.rfftfreq(out.size, 1 / 24000)

    def level(f):
        return spectrum[np.abs(freqs - f) < 50].max()

    return 20 * np.log10(level(rate - tone_hz) / level(tone_hz))


def test_torchaudio_keeps_near_nyquist_images_that_soxr_removes():
    torchaudio_db = _image_level_db("torchaudio", 7500)
    soxr_db = _image_level_db("soxr", 7500)
    assert -15 <= torchaudio_db <= -7
    assert soxr_db < -60
    assert -17 <= _image_level_db("torchaudio", 7000) <= -7
