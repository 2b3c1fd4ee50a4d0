"""Decode workers: thread plan, single-threaded BLAS while they run, native-rate hand-over, batches in."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from threadpoolctl import threadpool_info

import deramos_rt.pipeline as pipeline
from deramos_rt.audio import AudioProtocol, as_float, decode_frames, read_audio, read_native
from deramos_rt.errors import DeramosError
from deramos_rt.pipeline import (ClipRequest, batch_items, make_request, plan_threads, prepare_request,
                                 prepared_stream)
from tests.runtime.conftest import write_clip

TORCHAUDIO = AudioProtocol(24000, 1.0, "torchaudio")
SOXR = AudioProtocol(16000, 1.0, "soxr")


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.mark.parametrize("on_gpu,cores,expected", [(True, 16, (15, 1)), (True, 64, (32, 32)), (True, 1, (1, 1)),
                                                   (False, 2, (1, 1)), (False, 16, (4, 12)), (False, 1, (1, 1))])
def test_the_plan_gives_the_backend_the_cores_decoding_leaves(on_gpu, cores, expected):
    plan = plan_threads(None, None, on_gpu, cores)
    assert (plan.decode_workers, plan.backend_threads) == expected and plan.cores == cores


def test_explicit_workers_and_threads_are_kept():
    assert plan_threads(0, None, False, 8).backend_threads == 8
    assert (plan_threads(3, 5, True, 8).decode_workers, plan_threads(3, 5, True, 8).backend_threads) == (3, 5)
    assert plan_threads(12, None, False, 8).backend_threads == 1  # more workers than cores: never 0 threads


def test_decode_workers_run_numpy_blas_on_one_thread_and_restore_it(monkeypatch, tmp_path):
    seen = []
    real = pipeline.prepare_request

    def spy(*args):
        seen.append(_blas_threads())
        return real(*args)

    monkeypatch.setattr(pipeline, "prepare_request", spy)
    before = _blas_threads()
    requests = [ClipRequest(f"c{i}", str(write_clip(tmp_path / f"c{i}.wav", seconds=0.5, seed=i)), "", "x")
                for i in range(4)]
    out = list(prepared_stream(requests, TORCHAUDIO, workers=2))
    assert [p.error for p in out] == [None] * 4 and [p.request.id for p in out] == ["c0", "c1", "c2", "c3"]
    assert seen and all(threads == [1] * len(before) for threads in seen)
    assert _blas_threads() == before
    seen.clear()
    list(prepared_stream(requests[:1], TORCHAUDIO, workers=0))  # the calling thread keeps every core
    assert seen == [before]


def test_sixteen_bit_files_are_handed_over_as_int16_with_libsndfiles_values(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.uniform(-0.9, 0.9, (4410, 2)).astype(np.float32)
    sf.write(tmp_path / "a.flac", data, 44100, subtype="PCM_16")
    sf.write(tmp_path / "b.wav", data, 44100, subtype="PCM_24")
    pcm, rate = read_native(tmp_path / "a.flac")
    assert pcm.dtype == np.int16 and pcm.shape == (4410, 2) and rate == 44100
    np.testing.assert_array_equal(as_float(pcm), read_audio(tmp_path / "a.flac", mono=False)[0])
    assert read_native(tmp_path / "b.wav")[0].dtype == np.float32


def test_native_hand_over_carries_the_lengths_the_host_path_has(tmp_path):
    path = str(write_clip(tmp_path / "long.wav", seconds=2.5, rate=44100, channels=2))
    request = make_request((path, "x"), 0)
    clip = prepare_request(request, TORCHAUDIO, "truncate", native=True)
    assert clip.windows is None and clip.native.rate == 44100 and clip.native.signal.shape == (decode_frames(1.0, 44100), 2)
    assert clip.native.length == -(-24000 * clip.native.signal.shape[0] // 44100) and clip.weights.tolist() == [1.0]
    windows = prepare_request(request, TORCHAUDIO, "windows", native=True)
    host = prepare_request(request, TORCHAUDIO, "windows")
    assert windows.native.signal.shape[0] == int(2.5 * 44100) and windows.count == host.count == 3
    np.testing.assert_allclose(windows.weights, host.weights)


def test_soxr_resampling_stays_in_the_workers(tmp_path):
    other = make_request((str(write_clip(tmp_path / "a.wav", rate=44100, channels=2)), "x"), 0)
    same = make_request((str(write_clip(tmp_path / "b.wav", rate=16000)), "x"), 1)
    native = prepare_request(other, SOXR, "truncate", native=True)
    assert native.native is None
    np.testing.assert_array_equal(native.windows, prepare_request(other, SOXR, "truncate").windows)
    assert prepare_request(same, SOXR, "truncate", native=True).native.rate == 16000  # no resampling at all


def test_arrays_are_handed_over_as_float32_values_never_rescaled():
    pcm = np.full((100, 1), 1000, dtype=np.int16)
    clip = prepare_request(make_request((pcm, 24000, "x"), 0), TORCHAUDIO, "truncate", native=True)
    assert clip.native.signal.dtype == np.float32 and clip.native.signal.max() == 1000.0


def test_tensors_stay_tensors_and_bad_ones_are_clip_errors():
    import torch

    request = make_request((torch.zeros(2400), 24000, "x"), 0)
    assert isinstance(request.array, torch.Tensor)
    clip = prepare_request(request, TORCHAUDIO, "truncate", native=True)
    assert isinstance(clip.native.signal, torch.Tensor) and clip.native.length == 2400
    bad = torch.zeros(2400)
    bad[5] = float("nan")
    for signal, fragment in [(bad, "NaN"), (torch.zeros(100, 9), "9 channels"), (torch.zeros(0), "no samples"),
                             (torch.zeros(2, 3, 4), "1-D or")]:
        error = prepare_request(make_request((signal, 24000, "x"), 0), TORCHAUDIO, "truncate", native=True).error
        assert fragment in error
    host = prepare_request(make_request((torch.ones(2400), 24000, "x"), 0), TORCHAUDIO, "truncate")
    assert isinstance(host.windows, np.ndarray) and host.windows.shape == (1, 24000)


def test_a_batch_becomes_one_item_per_row():
    batch = np.zeros((3, 100), np.float32)
    items = batch_items(batch, 16000, ["a", "b", "c"])
    assert [i["prompt"] for i in items] == ["a", "b", "c"] and items[1]["array"].shape == (100,)
    assert [i["prompt"] for i in batch_items(batch, 16000, "same")] == ["same"] * 3
    for args, fragment in [((np.zeros(5), 16000, "x"), "must be \\(batch, samples\\)"),
                           ((batch, None, "x"), "needs its sample_rate"), ((batch, 16000, ["a"]), "3 signals but 1")]:
        with pytest.raises(DeramosError, match=fragment):
            batch_items(*args)


def test_the_blas_limit_gives_back_only_blas_threads():
    """threadpoolctl's plain threadpool_limits would also reset torch's OpenMP pool to its value at entry."""
    import torch

    from deramos_rt.pipeline import single_threaded_blas

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with single_threaded_blas():
            torch.set_num_threads(2)  # a job's backend threads, chosen while the workers run
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
