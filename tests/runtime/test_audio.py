import numpy as np
import pytest
import soundfile as sf

from deramos_rt.audio import AudioProtocol, fit_length, load_clip, prepare, read_audio, resample, to_mono
from deramos_rt.errors import DeramosError


def test_fit_length_pads_with_zeros_and_truncates_from_start():
    x = np.arange(5, dtype=np.float32)
    assert fit_length(x, 8).tolist() == [0, 1, 2, 3, 4, 0, 0, 0]
    assert fit_length(x, 3).tolist() == [0, 1, 2]


def test_to_mono_is_channel_mean():
    stereo = np.stack([np.ones(4), 3 * np.ones(4)], axis=1).astype(np.float32)
    assert np.allclose(to_mono(stereo), 2.0)


def test_resample_changes_length_and_keeps_a_tone():
    sr = 16000
    t = np.arange(sr) / sr
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = resample(tone, sr, 24000)
    assert out.shape == (24000,) and out.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 24000 / out.size - 440) < 2


def test_load_clip_applies_the_whole_protocol(tmp_path):
    path = tmp_path / "stereo44k.flac"
    rng = np.random.default_rng(0)
    sf.write(path, rng.uniform(-0.5, 0.5, (44100 * 3, 2)).astype(np.float32), 44100)
    out = load_clip(path, AudioProtocol(16000, 2.0))
    assert out.shape == (32000,) and out.dtype == np.float32 and np.abs(out).max() > 0.01


def test_bad_audio_is_a_clear_error(tmp_path):
    with pytest.raises(DeramosError, match="not found"):
        read_audio(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    with pytest.raises(DeramosError, match="cannot decode.*junk.wav"):
        read_audio(junk)
    with pytest.raises(DeramosError, match="NaN"):
        prepare(np.array([0.0, np.nan], dtype=np.float32), 16000, AudioProtocol(16000, 1.0))


def test_partial_decode_equals_the_whole_file_prepared(tmp_path):
    from deramos_rt.audio import read_audio as read

    path = tmp_path / "long.flac"
    rng = np.random.default_rng(1)
    sf.write(path, rng.uniform(-0.5, 0.5, (44100 * 40, 2)).astype(np.float32), 44100)
    protocol = AudioProtocol(24000, 10.0)
    whole, rate = read(path)
    assert np.array_equal(load_clip(path, protocol), prepare(whole, rate, protocol))
    part, _ = read(path, max_seconds=10.0)
    assert part.shape[0] < whole.shape[0] // 3


def test_channel_limit_and_extreme_rates(tmp_path):
    nine = tmp_path / "nine.wav"
    sf.write(nine, np.zeros((800, 9), dtype=np.float32), 8000)
    with pytest.raises(DeramosError, match="9 channels"):
        read_audio(nine)
    for rate in (8000, 384000):
        path = tmp_path / f"r{rate}.wav"
        sf.write(path, np.full(rate // 2, 0.1, dtype=np.float32), rate)
        assert load_clip(path, AudioProtocol(16000, 1.0)).shape == (16000,)


def test_split_windows_pads_the_last_window_and_weights_real_audio():
    from deramos_rt.audio import split_windows

    windows, weights = split_windows(np.arange(10, dtype=np.float32), 4)
    assert windows.shape == (3, 4) and windows[2].tolist() == [8, 9, 0, 0]
    assert weights.tolist() == [1.0, 1.0, 0.5]
