"""pytest-benchmark suite of the scoring hot paths, on the built-in default model:

decode + resample of one file, the audio front end, the audio graph per backend (torch eager, ONNX Runtime
fp32 / int8 where the bundle has it), prompt encoding with and without the Scorer's cache, and one
end-to-end batch from files. ``pytest benchmarks --benchmark-only`` (JSON saved under .benchmarks/).
The default model's bundle is the user's cached one (setup.sh: python -m deramos_rt.models) or the report's build.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.models import DEFAULT_RUN, PROMPTS, default_bundle, items_for, write_clips

REPO = Path(__file__).resolve().parents[1]
BATCH = 8


def _bundle() -> Path:
    from deramos_rt.bundle import is_bundle

    for path in (default_bundle() or REPO / ".cache" / "bench" / "default-bundle", REPO / ".cache" / "bench" / "default-bundle"):
        if is_bundle(path):
            return path
    pytest.skip("no default bundle: python -m deramos_rt.models default")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return items_for(write_clips(tmp_path_factory.mktemp("clips"), BATCH, 10.0))


@pytest.fixture(scope="module")
def torch_parts():
    from training.checkpoint import load_run
    from training.split import split_model

    model, _ = load_run(DEFAULT_RUN)
    return model, split_model(model)


def _scorer(backend: str, precision: str | None = None):
    from deramos_rt.scorer import Scorer

    source = DEFAULT_RUN if backend == "torch" else _bundle()
    if backend != "torch" and precision:
        from deramos_rt.bundle import load_bundle

        if precision not in load_bundle(source, verify=False).variants:
            pytest.skip(f"the bundle has no {precision} graphs (dropped by its parity gate or not built)")
    return Scorer(str(source), backend=backend, precision=precision, batch_size=BATCH, decode_workers=2)


def test_decode_and_resample(benchmark, clips, torch_parts):
    from deramos_rt.audio import load_clip

    protocol = torch_parts[0].audio_protocol
    wave = benchmark(load_clip, clips[0][0], protocol)
    assert wave.shape == (protocol.num_samples,)


def test_front_end(benchmark, torch_parts):
    import torch

    encoder = torch_parts[1][0].encoder
    front = getattr(encoder, "frontend", None) or getattr(encoder, "front_end", None)
    if front is None:
        # Backbones without a separate front-end module (tiny, spectral): their first conv is the STFT.
        front = lambda w: torch.nn.functional.conv1d(w.unsqueeze(1), encoder.dft, stride=encoder.hop)  # noqa: E731
        if not hasattr(encoder, "dft"):
            pytest.skip(f"{type(encoder).__name__} has no separable front end")
    wave = 0.1 * torch.randn(BATCH, torch_parts[0].audio_protocol.num_samples)
    with torch.inference_mode():
        out = benchmark(front, wave)
    assert out.shape[0] == BATCH


@pytest.mark.parametrize("backend,precision", [("torch", None), ("onnxruntime", "fp32"), ("onnxruntime", "int8")])
def test_audio_graph(benchmark, backend, precision):
    with _scorer(backend, precision) as scorer:
        wave = np.zeros((BATCH, scorer.protocol.num_samples), np.float32)
        mi, audio_x = benchmark(scorer.backend.run_audio, wave)
    assert mi.shape[0] == audio_x.shape[0] == BATCH


@pytest.mark.parametrize("cached", [False, True])
def test_prompt_encoding(benchmark, cached):
    with _scorer("onnxruntime", "fp32") as scorer:
        def encode():
            if not cached:
                scorer._text.clear()
            scorer._encode_prompts(list(PROMPTS))
        benchmark(encode)
        assert len(scorer._text) == len(PROMPTS)


def test_end_to_end_batch(benchmark, clips):
    with _scorer("onnxruntime", "fp32") as scorer:
        results = benchmark(scorer.score, clips)
    assert len(results) == BATCH and not any(r.error for r in results)
