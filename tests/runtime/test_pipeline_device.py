"""Batches prepared on the inference device: the torch stage and ONNX Runtime's IOBinding stage run here on
the CPU (the code GPUs run, with device "cpu"), overlapped batches, device tensors in, thread settings,
and the GPU-only parts (CUDA graphs, pinned staging) through fakes. Tests marked ``gpu`` need CUDA."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from threadpoolctl import threadpool_info

from deramos_rt.backends.base import HostStage, input_stage
from deramos_rt.backends.ort_device import CUDA_EP, TRT_EP, OrtDeviceIO, resample_providers
from deramos_rt.backends.torch import MAX_CUDA_GRAPHS, GraphedAudio, PinnedStaging
from deramos_rt.scorer import Scorer
from tests.runtime.conftest import write_clip

TOL = 1e-5
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none here)")


@pytest.fixture(scope="module")
def ta_run(tmp_path_factory):
    """A tiny model with the torchaudio protocol (16 kHz, 2 s): what resamples on the device."""
    from export.testing import write_random_run
    from training.config import BackboneConfig

    audio = BackboneConfig("tiny", {"clip_seconds": 2.0, "hop": 1024})
    return write_random_run(tmp_path_factory.mktemp("ta-run") / "run", "tiny", seed=1, audio=audio,
                            resampler="torchaudio")


@pytest.fixture(scope="module")
def ta_bundle(ta_run, tmp_path_factory):
    from export.build_engine import build_bundle

    return build_bundle(ta_run, tmp_path_factory.mktemp("ta-bundle") / "bundle", precisions=("fp32",),
                        parity_files=2, parity_random=2)


@pytest.fixture(scope="module")
def mixed_clips(tmp_path_factory):
    """Rates, channel counts and lengths that make groups, windows and a batch-crossing clip; one empty prompt."""
    root = tmp_path_factory.mktemp("mixed")
    spec = [(44100, 2, 4.5), (22050, 1, 1.2), (16000, 1, 3.0), (48000, 2, 0.7), (44100, 2, 4.5), (8000, 1, 2.5)]
    prompts = ["calm piano", "", "fast drums", "calm piano", "sad violin", "fast drums"]
    return [(str(write_clip(root / f"S00{i}_c{i}.wav", seconds=s, rate=r, channels=c, seed=i)), prompts[i])
            for i, (r, c, s) in enumerate(spec)]


def _force(scorer: Scorer, stage_of) -> Scorer:
    """Give a CPU scorer the device path a GPU backend takes (same code, device "cpu"), overlap included."""
    scorer.backend.input_stage = stage_of
    scorer.stage = input_stage(scorer.backend, scorer.protocol)
    scorer._overlap = True
    return scorer


def _torch_device_scorer(run, **options) -> Scorer:
    scorer = Scorer(run, backend="torch", **options)
    return _force(scorer, lambda protocol: scorer.backend.device_path.stage(protocol))


def _same(a, b, tol=TOL, ids=True):
    key = (lambda r: (r.id, r.windows, r.error)) if ids else (lambda r: (r.windows, r.error))
    assert [key(x) for x in a] == [key(y) for y in b]
    for x, y in zip(a, b):
        assert abs(x.mi - y.mi) <= tol and ((x.ta is None and y.ta is None) or abs(x.ta - y.ta) <= tol)


@pytest.mark.parametrize("long_audio", ["truncate", "windows"])
@pytest.mark.parametrize("batch_size,workers", [(1, 0), (3, 2), (16, 1)])
def test_resampling_on_the_device_gives_the_host_scores(ta_run, mixed_clips, long_audio, batch_size, workers):
    reference = Scorer(ta_run, backend="torch", batch_size=4, decode_workers=2, long_audio=long_audio).score(mixed_clips)
    device = _torch_device_scorer(ta_run, batch_size=batch_size, decode_workers=workers, long_audio=long_audio)
    assert device.stage.native and "conv1d" in device.stage.description
    _same(device.score(mixed_clips), reference)
    assert reference[1].error and reference[1].ta is None  # the empty prompt: MI only, as on the host


@pytest.mark.parametrize("long_audio", ["truncate", "windows"])
def test_onnxruntime_iobinding_stage_gives_the_host_scores(ta_bundle, mixed_clips, long_audio):
    import onnxruntime as ort

    reference = Scorer(ta_bundle, backend="onnxruntime", batch_size=4, long_audio=long_audio).score(mixed_clips)
    scorer = Scorer(ta_bundle, backend="onnxruntime", batch_size=3, decode_workers=2, long_audio=long_audio)
    backend = scorer.backend
    backend._device_io = OrtDeviceIO(ort, backend._sessions, backend._outputs, ["CPUExecutionProvider"], "cpu", 0)
    _force(scorer, backend.input_stage)
    assert "IOBinding" in scorer.stage.description
    _same(scorer.score(mixed_clips), reference)


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory):
    """Files of several 2 s windows (the last ones partial) as (path, prompt) items, and as whole arrays."""
    root = tmp_path_factory.mktemp("long")
    items, arrays = [], []
    for i, (rate, channels, seconds, subtype) in enumerate([(44100, 2, 9.3, "PCM_16"), (48000, 2, 7.1, "FLOAT"),
                                                            (16000, 1, 6.0, "PCM_16")]):
        path = str(root / f"l{i}.wav")
        data = 0.3 * np.random.default_rng(i).standard_normal((int(rate * seconds), channels))
        sf.write(path, data.astype(np.float32), rate, subtype=subtype)
        items.append((path, "calm piano"))
        arrays.append((sf.read(path, dtype="float32", always_2d=True)[0], rate, "calm piano"))  # decoded whole
    return items, arrays


@pytest.mark.parametrize("stage", ["torch", "onnxruntime"])
def test_long_files_streamed_to_the_device_score_as_the_whole_files(ta_run, ta_bundle, long_clips, monkeypatch, stage):
    """Native-rate pieces of a long file (each with the kernel's reach) give the whole-file host scores."""
    import deramos_rt.audio as audio

    items, arrays = long_clips
    source = ta_run if stage == "torch" else ta_bundle
    reference = Scorer(source, backend=stage, long_audio="windows", decode_workers=0).score(arrays)
    monkeypatch.setattr(audio, "PIECE_SECONDS", 2.0)  # one 2 s window per piece
    if stage == "torch":
        scorer = _torch_device_scorer(ta_run, batch_size=3, decode_workers=2, long_audio="windows")
    else:
        import onnxruntime as ort

        scorer = Scorer(ta_bundle, backend="onnxruntime", batch_size=3, decode_workers=2, long_audio="windows")
        backend = scorer.backend
        backend._device_io = OrtDeviceIO(ort, backend._sessions, backend._outputs, ["CPUExecutionProvider"], "cpu", 0)
        _force(scorer, backend.input_stage)
    assert scorer.stage.native
    results = scorer.score(items)
    assert [r.windows for r in results] == [5, 4, 3]
    _same(results, reference, ids=False)


def test_device_tensors_score_like_the_files_of_the_same_samples(ta_run, tmp_path):
    rng = np.random.default_rng(5)
    batch = (0.3 * rng.standard_normal((3, 33075))).astype(np.float32)  # 1.5 s at 22.05 kHz
    paths = []
    for i, row in enumerate(batch):
        sf.write(tmp_path / f"r{i}.wav", row, 22050, subtype="FLOAT")  # float files keep the exact samples
        paths.append(str(tmp_path / f"r{i}.wav"))
    prompts = ["calm piano", "fast drums", "calm piano"]
    files = Scorer(ta_run, backend="torch").score(list(zip(paths, prompts)))
    stereo, rate = sf.read(paths[0], dtype="float32", always_2d=True)
    for scorer in (Scorer(ta_run, backend="torch"), _torch_device_scorer(ta_run, batch_size=2)):
        _same(scorer.score(torch.from_numpy(batch), sample_rate=22050, prompts=prompts), files, 1e-6, ids=False)
        [one] = scorer.score([(torch.from_numpy(stereo), rate, prompts[0])])
        assert abs(one.mi - files[0].mi) <= 1e-6 and abs(one.ta - files[0].ta) <= 1e-6


def test_an_error_in_the_audio_thread_reaches_the_caller(ta_run, mixed_clips, monkeypatch):
    scorer = _torch_device_scorer(ta_run, batch_size=2)

    def broken(waveform):
        raise RuntimeError("device lost")

    monkeypatch.setattr(scorer.backend, "run_audio", broken)
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="device lost"):
        scorer.score(mixed_clips)
    import gc

    gc.collect()  # nothing left half-open resets thread settings later
    assert torch.get_num_threads() == threads


def test_thread_settings_hold_during_a_job_and_are_restored_after_it(ta_run, mixed_clips, monkeypatch):
    blas = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        scorer = Scorer(ta_run, backend="torch", decode_workers=1, threads=1)
        seen = []
        real = scorer.backend.run_audio
        monkeypatch.setattr(scorer.backend, "run_audio", lambda w: (seen.append(torch.get_num_threads()), real(w))[1])
        scorer.score(mixed_clips[:3])
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
        assert [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"] == blas
    finally:
        torch.set_num_threads(previous)


def test_cpu_backends_keep_the_host_stage_and_log_the_choice_once(ta_run, mixed_clips, caplog):
    with caplog.at_level(logging.INFO, logger="deramos_rt.scorer"):
        scorer = Scorer(ta_run, backend="torch", decode_workers=1)
        scorer.score(mixed_clips[:2])
    assert isinstance(scorer.stage, HostStage) and not scorer._overlap
    lines = [r.getMessage() for r in caplog.records if r.name == "deramos_rt.scorer"]
    assert len([m for m in lines if m.startswith("audio input: host")]) == 1, lines


# ------------------------------------------------------------------------------ GPU parts through fakes

def _cpu_capture(calls):
    """A stand-in for cuda_capture on the CPU: replay recomputes into the captured output buffers."""
    def capture(run, static_in):
        calls.append(int(static_in.shape[0]))
        static_out = tuple(t.clone() for t in run(static_in))

        def replay():
            for buffer, fresh in zip(static_out, run(static_in)):
                buffer.copy_(fresh)
        return replay, static_out
    return capture


def test_graphed_audio_pads_the_last_batch_and_cuts_its_rows_out(ta_run):
    scorer = Scorer(ta_run, backend="torch")
    backend = scorer.backend
    calls = []
    graphed = GraphedAudio(torch, backend._audio_tensors, capture=_cpu_capture(calls))
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal((5, scorer.protocol.num_samples)).astype(np.float32))
    for rows in (4, 2, 4, 3):
        mi, audio_x = graphed(wave[:rows])
        eager_mi, eager_x = backend._audio_tensors(wave[:rows])
        assert mi.shape[0] == rows and torch.allclose(mi, eager_mi, atol=1e-6) and torch.allclose(audio_x, eager_x, atol=1e-6)
    assert calls == [4] and graphed.sizes == [4]  # smaller batches replay the batch-4 graph, padded
    graphed(wave)  # a larger batch gets its own graph
    assert graphed.sizes == [4, 5]


def test_graphed_audio_runs_eagerly_after_a_failed_capture_or_too_many_sizes(ta_run, caplog):
    backend = Scorer(ta_run, backend="torch").backend
    wave = torch.zeros(2, backend.audio_part.encoder.contract.num_samples)

    def refuse(run, static_in):
        raise RuntimeError("Cannot copy between CPU and CUDA tensors during CUDA graph capture\nmore")

    failing = GraphedAudio(torch, backend._audio_tensors, capture=refuse)
    with caplog.at_level(logging.WARNING, logger="deramos_rt.backends.torch"):
        out = failing(wave)
        failing(wave)
    warnings = [r for r in caplog.records if r.name == "deramos_rt.backends.torch" and r.levelno == logging.WARNING]
    assert out[0].shape[0] == 2 and failing.failed.startswith("Cannot copy") and len(warnings) == 1
    calls = []
    bounded = GraphedAudio(torch, backend._audio_tensors, capture=_cpu_capture(calls))
    for rows in range(1, MAX_CUDA_GRAPHS + 3):
        bounded(torch.zeros(rows, wave.shape[1]))
    assert len(calls) == MAX_CUDA_GRAPHS


class _FakeEvent:
    def __init__(self, log):
        self.log = log

    def synchronize(self):
        self.log.append("synchronized")


class _FakeBuffer:
    def __init__(self, n):
        self.n = n

    def numel(self):
        return self.n


class _FakeTorch:
    """torch.empty with pin_memory, for the staging ring (pinned memory needs CUDA)."""

    uint8 = "uint8"

    def __init__(self):
        self.allocated = []

    def empty(self, n, dtype, pin_memory):
        assert pin_memory and dtype == "uint8"
        self.allocated.append(n)
        return _FakeBuffer(n)


def test_pinned_staging_reuses_a_buffer_only_after_its_copy_finished():
    fake, log = _FakeTorch(), []
    ring = PinnedStaging(fake, slots=2)
    first = ring.take(100)
    ring.copied(_FakeEvent(log))
    second = ring.take(100)
    ring.copied(_FakeEvent(log))
    assert first is not second and log == []
    again = ring.take(50)  # the first buffer again, once its copy is done
    assert again is first and log == ["synchronized"]
    ring.copied(_FakeEvent(log))
    ring.take(500)  # grows
    assert fake.allocated == [100, 100, 500]


def test_resampling_graphs_use_cuda_without_tf32_also_under_tensorrt():
    providers = [(TRT_EP, {"trt_fp16_enable": True}), (CUDA_EP, {"device_id": 1}), "CPUExecutionProvider"]
    assert resample_providers(providers) == [(CUDA_EP, {"device_id": 1, "use_tf32": 0}), "CPUExecutionProvider"]


# ------------------------------------------------------------------------------------------- on a GPU

@pytest.mark.gpu
@CUDA
def test_cuda_resampler_equals_numpy_with_tf32_allowed_globally():
    from deramos_rt.device_resample import TorchResampler
    from deramos_rt.resample import torchaudio_resample
    from tests.data.make_resample_reference import cases, make_signal

    torch.backends.cudnn.allow_tf32 = True
    resampler = TorchResampler(torch, "cuda")
    for case in cases():
        signal = make_signal(case["orig"], case["channels"], case["frames"], case["seed"])
        out = resampler(torch.from_numpy(signal).cuda(), case["orig"], case["new"]).cpu().numpy()
        assert np.abs(out - torchaudio_resample(signal, case["orig"], case["new"])).max() <= 2e-6, case


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("graphs", ["1", "0"])
def test_cuda_device_path_and_graphs_give_the_host_scores(ta_run, mixed_clips, monkeypatch, graphs):
    monkeypatch.setenv("DERAMOS_CUDA_GRAPHS", graphs)
    host = Scorer(ta_run, backend="torch", device="cuda", batch_size=4)
    host.stage, host._overlap = HostStage(), False
    device = Scorer(ta_run, backend="torch", device="cuda", batch_size=4)
    assert device.stage.native and device._overlap
    _same(device.score(mixed_clips), host.score(mixed_clips))


@pytest.mark.gpu
@CUDA
def test_cuda_device_path_streams_long_files_as_the_whole_files(ta_run, long_clips, monkeypatch):
    import deramos_rt.audio as audio

    items, arrays = long_clips
    host = Scorer(ta_run, backend="torch", device="cuda", batch_size=3, long_audio="windows")
    host.stage, host._overlap = HostStage(), False
    reference = host.score(arrays)  # decoded whole, resampled on the host
    monkeypatch.setattr(audio, "PIECE_SECONDS", 2.0)  # one window per piece
    device = Scorer(ta_run, backend="torch", device="cuda", batch_size=3, long_audio="windows")
    assert device.stage.native and device._overlap
    _same(device.score(items), reference, ids=False)


@pytest.mark.gpu
@CUDA
def test_cuda_tensors_are_scored_without_a_host_copy(ta_run, mixed_clips, monkeypatch):
    import deramos_rt.pipeline as pipeline

    path = mixed_clips[0][0]
    stereo, rate = sf.read(path, dtype="float32", always_2d=True)
    scorer = Scorer(ta_run, backend="torch", device="cuda")
    [files] = scorer.score([(path, "calm piano")])
    monkeypatch.setattr(pipeline, "host_array", lambda value: pytest.fail("a device tensor was copied to the host"))
    [tensor] = scorer.score([(torch.from_numpy(stereo).cuda(), rate, "calm piano")])
    assert abs(tensor.mi - files.mi) <= TOL and abs(tensor.ta - files.ta) <= TOL
