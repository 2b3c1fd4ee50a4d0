"""Long audio in ``windows`` mode: files decoded as a stream of pieces, equal to the whole-file path, with
what is in flight bounded by samples (issue 23, section 3). Short files and tiny windows stand in for hours."""

from __future__ import annotations

import threading
import weakref

import numpy as np
import pytest
import soundfile as sf

import deramos_rt.audio as audio
import deramos_rt.pipeline as pipeline
from deramos_rt.audio import (AudioProtocol, as_float, read_audio, resample, split_windows, stream_windows,
                              to_mono)
from deramos_rt.pipeline import ClipRequest, InFlight, Prepared, prepare_pieces, prepared_stream
from deramos_rt.scorer import Scorer

WINDOW = 0.5  # seconds: a tiny window, so a few seconds of audio make many windows


def _write(path, seconds, rate, channels, seed=0, subtype="PCM_24"):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * (300 + 50 * seed) * t)
    data = np.stack([tone * (1 - 0.2 * c) + 0.05 * rng.standard_normal(t.size) for c in range(channels)], axis=1)
    sf.write(path, data.astype(np.float32), rate, subtype=subtype)
    return str(path)


def _whole(path, protocol):
    """Today's whole-file path: decode everything, apply the protocol, cut into windows."""
    signal, rate = read_audio(path, mono=protocol.resampler == "soxr")
    return split_windows(audio.protocol_signal(signal, rate, protocol), protocol.num_samples)


def _joined(pieces):
    pieces = list(pieces)
    return np.concatenate([p.windows for p in pieces]), np.concatenate([p.weights for p in pieces])


def _run(tmp_path_factory, rate, resampler, seed):
    from export.testing import write_random_run
    from training.config import BackboneConfig

    backbone = BackboneConfig("tiny", {"sample_rate": rate, "clip_seconds": WINDOW, "hop": 512})
    return write_random_run(tmp_path_factory.mktemp(f"run-{resampler}") / "run", "tiny", seed=seed, audio=backbone,
                            resampler=resampler)


@pytest.fixture(scope="module")
def soxr_run(tmp_path_factory):
    return _run(tmp_path_factory, 16000, "soxr", 2)


@pytest.fixture(scope="module")
def ta_run(tmp_path_factory):
    return _run(tmp_path_factory, 24000, "torchaudio", 3)


# ------------------------------------------------------------------------------------------------ audio

@pytest.mark.parametrize("resampler", ["soxr", "torchaudio"])
@pytest.mark.parametrize("rate,target", [(44100, 16000), (48000, 24000), (16000, 24000), (22050, 22050)])
@pytest.mark.parametrize("channels", [1, 2])
def test_streamed_windows_are_the_whole_file_windows(tmp_path, resampler, rate, target, channels):
    path = _write(tmp_path / "a.flac", 3.3, rate, channels)  # 6.6 windows: the last one partial
    protocol = AudioProtocol(target, WINDOW, resampler)
    windows, weights = _whole(path, protocol)
    assert weights[-1] == pytest.approx(0.6) and len(weights) == 7
    for count in (1, 3):
        pieces = list(stream_windows(path, protocol, piece_windows=count))
        assert [p.first for p in pieces] == list(range(0, 7, count))
        assert [p.last for p in pieces] == [False] * (len(pieces) - 1) + [True]
        streamed, streamed_weights = _joined(pieces)
        np.testing.assert_array_equal(streamed_weights, weights)
        if resampler == "soxr" or rate == target:  # one soxr stream gives the one-call samples exactly
            np.testing.assert_array_equal(streamed, windows)
        else:  # the same inputs for every sample; the matrix products may round differently
            np.testing.assert_allclose(streamed, windows, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(audio.load_windows(path, protocol)[1], weights)


@pytest.mark.parametrize("rate,target,channels,subtype", [(44100, 16000, 2, "PCM_16"), (48000, 24000, 2, "FLOAT"),
                                                          (16000, 24000, 1, "PCM_16"), (24000, 24000, 2, "PCM_16")])
def test_native_pieces_resample_to_the_whole_file_windows(tmp_path, rate, target, channels, subtype):
    """What a device stage computes from each native piece (here: the numpy resampler) is the host's input."""
    path = _write(tmp_path / "a.wav", 3.3, rate, channels, subtype=subtype)
    protocol = AudioProtocol(target, WINDOW, "torchaudio")
    windows, weights = _whole(path, protocol)
    n = protocol.num_samples
    for count in (1, 3):
        rebuilt = []
        for piece in stream_windows(path, protocol, native=True, piece_windows=count):
            assert piece.windows is None and piece.rate == rate
            assert piece.signal.dtype == (np.int16 if subtype == "PCM_16" else np.float32)
            assert piece.signal.shape[0] < (count + 1) * n * rate / target  # a piece's worth, not the file
            mono = to_mono(resample(as_float(piece.signal), rate, target, "torchaudio"))
            assert mono.size == piece.length
            out = np.zeros(piece.count * n, np.float32)
            part = mono[piece.offset:piece.offset + out.size]
            out[:part.size] = part
            rebuilt.append((out.reshape(piece.count, n), piece.weights))
        np.testing.assert_allclose(np.concatenate([r[0] for r in rebuilt]), windows, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(np.concatenate([r[1] for r in rebuilt]), weights)


@pytest.mark.parametrize("header", [10, 10 ** 12])
def test_the_header_frame_count_is_never_trusted(tmp_path, monkeypatch, header):
    """A header that understates or overstates the length (OGG can) changes nothing: decoding decides."""
    path = _write(tmp_path / "a.flac", 3.3, 44100, 2)
    protocol = AudioProtocol(16000, WINDOW, "soxr")
    windows, weights = _whole(path, protocol)

    class Lying(sf.SoundFile):
        frames = property(lambda self: header)

    monkeypatch.setattr(sf, "SoundFile", Lying)
    for native in (False, True):
        pieces = list(stream_windows(path, AudioProtocol(16000, WINDOW, "torchaudio") if native else protocol,
                                     native=native, piece_windows=2))
        assert np.concatenate([p.weights for p in pieces]).tolist() == weights.tolist()
    np.testing.assert_array_equal(_joined(stream_windows(path, protocol, piece_windows=2))[0], windows)


def test_bad_files_fail_with_the_whole_file_paths_messages(tmp_path):
    protocol = AudioProtocol(16000, WINDOW)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), np.float32), 16000)
    nan = tmp_path / "nan.wav"
    signal = np.zeros(16000 * 3, np.float32)
    signal[-5] = np.nan
    sf.write(nan, signal, 16000, subtype="FLOAT")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio")
    for path, fragment in [(empty, "no samples"), (nan, "NaN or infinite"), (junk, "cannot decode"),
                           (tmp_path / "missing.wav", "not found")]:
        for native in (False, True):
            with pytest.raises(audio.DeramosError, match=fragment):
                list(stream_windows(path, protocol, native=native, piece_windows=1))


# ------------------------------------------------------------------------------------------------ stream

def _requests(paths):
    return [ClipRequest(f"c{i}", p, "", "calm piano") for i, p in enumerate(paths)]


def test_the_stream_holds_a_bounded_number_of_samples_however_long_the_files(tmp_path, monkeypatch):
    flights = []

    class Recorded(InFlight):
        def __init__(self, limit):
            super().__init__(limit)
            flights.append(self)

    monkeypatch.setattr(pipeline, "InFlight", Recorded)
    protocol = AudioProtocol(16000, WINDOW)
    n = protocol.num_samples
    peaks = []
    for seconds in (10.0, 40.0):
        paths = [_write(tmp_path / f"{seconds}-{i}.flac", seconds, 44100, 2, seed=i) for i in range(3)]
        stream = prepared_stream(_requests(paths), protocol, "windows", workers=3, prefetch=3,
                                 max_samples=4 * n, piece_windows=1)
        pieces = []
        for piece in stream:
            pieces.append((piece.request.id, piece.first, piece.last))
            threading.Event().wait(0.002)  # a slow consumer: the workers run ahead as far as allowed
        windows = int(seconds / WINDOW)
        assert pieces == [(f"c{i}", w, w == windows - 1) for i in range(3) for w in range(windows)]
        peaks.append(flights[-1].peak)
    # At most the limit plus the head clip's one piece, whatever the files' length.
    assert all(peak <= 5 * n for peak in peaks) and peaks[1] <= peaks[0] + n


def test_the_head_clip_always_moves_and_closing_wakes_waiting_workers():
    n = 100
    flight = InFlight(2 * n)
    piece = lambda first, last: Prepared(ClipRequest("x", None, "", ""), np.zeros((1, n), np.float32), np.ones(1),
                                         first=first, last=last)
    assert flight.put(1, piece(0, False)) and flight.put(1, piece(1, False))  # clip 1 fills the budget
    assert flight.put(0, piece(0, False))  # the head may add one piece beyond it
    waited = []
    worker = threading.Thread(target=lambda: waited.append(flight.put(0, piece(1, True))))
    worker.start()  # the head's second piece waits for the consumer
    worker.join(0.2)
    assert worker.is_alive() and flight.held == 3 * n
    assert flight.take(0).first == 0
    worker.join(5)
    assert waited == [True] and flight.take(0).last and flight.peak == 3 * n
    blocked = threading.Thread(target=lambda: waited.append(flight.put(2, piece(0, True))))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # clip 2 waits: clip 1 (now the head) holds the budget
    flight.close()
    blocked.join(5)
    assert not blocked.is_alive() and waited[-1] is False


def test_a_consumer_that_stops_early_stops_every_worker(tmp_path):
    paths = [_write(tmp_path / f"{i}.flac", 20.0, 44100, 2, seed=i) for i in range(4)]
    protocol = AudioProtocol(16000, WINDOW)
    stream = prepared_stream(_requests(paths), protocol, "windows", workers=3, prefetch=4,
                             max_samples=2 * protocol.num_samples, piece_windows=1)
    assert next(stream).first == 0
    closer = threading.Thread(target=stream.close)
    closer.start()
    closer.join(20)
    assert not closer.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("deramos-decode")]


def test_a_worker_that_dies_fails_the_job_instead_of_hanging(tmp_path, monkeypatch):
    class Died(BaseException):  # not an Exception: not a clip error, the worker itself is gone
        pass

    def dying(*args):
        raise Died("worker killed")
        yield  # a generator, as prepare_pieces is

    monkeypatch.setattr(pipeline, "prepare_pieces", dying)
    paths = [_write(tmp_path / "a.flac", 2.0, 16000, 1)]
    raised = []

    def run():
        try:
            list(prepared_stream(_requests(paths), AudioProtocol(16000, WINDOW), "windows", workers=2))
        except Died as exc:
            raised.append(exc)

    consumer = threading.Thread(target=run)
    consumer.start()
    consumer.join(20)
    assert not consumer.is_alive() and len(raised) == 1


def test_truncate_mode_keeps_its_partial_decode(tmp_path, monkeypatch):
    path = _write(tmp_path / "a.flac", 3.3, 44100, 2)
    protocol = AudioProtocol(16000, WINDOW)

    def no_stream(*args):
        raise AssertionError("truncate mode must not stream the whole file")

    monkeypatch.setattr(audio, "_blocks", no_stream)
    [clip] = list(prepare_pieces(ClipRequest("a", path, "", "x"), protocol, "truncate"))
    assert clip.error is None and clip.count == 1 and clip.last
    np.testing.assert_array_equal(clip.windows[0], audio.load_clip(path, protocol))


# ------------------------------------------------------------------------------------------------ scorer

def _arrays(paths):
    """The whole-file reference: each file decoded whole and scored as an array."""
    out = []
    for path in paths:
        signal, rate = read_audio(path, mono=False)
        out.append((signal, rate, "calm piano"))
    return out


def _same(a, b, tol=1e-5):
    assert [(x.windows, x.error) for x in a] == [(y.windows, y.error) for y in b]
    for x, y in zip(a, b):
        assert abs(x.mi - y.mi) <= tol and abs(x.ta - y.ta) <= tol


@pytest.mark.parametrize("which,files", [
    ("soxr", [(44100, 2), (48000, 1), (16000, 2)]),
    ("torchaudio", [(48000, 2), (44100, 1), (16000, 1)]),
])
@pytest.mark.parametrize("batch_size,workers,piece_seconds", [(3, 2, WINDOW), (4, 0, 3 * WINDOW), (8, 1, 100.0)])
def test_streamed_files_score_as_the_whole_file_path(request, tmp_path, monkeypatch, which, files, batch_size,
                                                      workers, piece_seconds):
    run = request.getfixturevalue("soxr_run" if which == "soxr" else "ta_run")
    paths = [_write(tmp_path / f"{i}.flac", 3.3 + 0.4 * i, rate, channels, seed=i)
             for i, (rate, channels) in enumerate(files)]
    reference = Scorer(run, backend="torch", long_audio="windows", decode_workers=0).score(_arrays(paths))
    monkeypatch.setattr(audio, "PIECE_SECONDS", piece_seconds)  # 1 or 3 windows per piece, or one piece
    scorer = Scorer(run, backend="torch", long_audio="windows", batch_size=batch_size, decode_workers=workers)
    results = scorer.score([(p, "calm piano") for p in paths])
    assert [r.id for r in results] == ["0", "1", "2"] and [r.windows for r in results] == [7, 8, 9]
    _same(results, reference)


def test_a_decode_error_midway_is_that_clips_error_only(soxr_run, tmp_path, monkeypatch):
    paths = [_write(tmp_path / f"{i}.flac", 6.0, 44100, 2, seed=i) for i in range(3)]
    monkeypatch.setattr(audio, "PIECE_SECONDS", WINDOW)
    good = Scorer(soxr_run, backend="torch", long_audio="windows", batch_size=3, decode_workers=2).score(
        [(p, "calm piano") for p in paths])
    real = sf.SoundFile

    class Failing(real):
        reads = 0

        def read(self, *args, **kwargs):
            if self.name == paths[1]:
                Failing.reads += 1
                if Failing.reads == 4:
                    raise RuntimeError("Internal psf_fseek() failed")
            return super().read(*args, **kwargs)

    monkeypatch.setattr(sf, "SoundFile", Failing)
    scorer = Scorer(soxr_run, backend="torch", long_audio="windows", batch_size=3, decode_workers=2)
    results = scorer.score([(p, "calm piano") for p in paths])
    assert Failing.reads == 4  # it failed after three pieces had gone to the model
    assert results[1].error.startswith(f"cannot decode audio file {paths[1]}: Internal psf_fseek() failed")
    assert results[1].mi is None and results[1].ta is None and results[1].windows == 0
    _same([results[0], results[2]], [good[0], good[2]], tol=0.0)
    assert scorer.counts["failed"] == 1 and scorer.counts["scored"] == 2


def test_the_scorer_holds_a_bounded_number_of_pieces(soxr_run, tmp_path, monkeypatch):
    refs, peak = [], [0]
    real = pipeline._prepared_piece

    def tracked(request, piece):
        prepared = real(request, piece)
        refs.append(weakref.ref(prepared))
        peak[0] = max(peak[0], sum(r() is not None for r in refs))
        return prepared

    monkeypatch.setattr(pipeline, "_prepared_piece", tracked)
    monkeypatch.setattr(audio, "PIECE_SECONDS", WINDOW)
    paths = [_write(tmp_path / f"{i}.flac", 30.0, 16000, 1, seed=i) for i in range(3)]
    scorer = Scorer(soxr_run, backend="torch", long_audio="windows", batch_size=4, decode_workers=2)
    results = scorer.score([(p, "calm piano") for p in paths])
    assert [r.windows for r in results] == [60] * 3 and len(refs) == 180
    # Live at once, at most: the stream's budget (max(4 x batch, 16) one-window pieces) and the head clip's
    # extra piece, one piece per worker (being put, or just handed over), the batch being scored and the
    # piece the Scorer holds: far fewer than the 180 pieces, and the same for any file length.
    assert peak[0] <= 16 + 1 + 2 + 4 + 1
