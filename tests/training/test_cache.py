import numpy as np
import pytest
import torch

from training.cache import Features, pad_sequences
from training.data import read_splits
from training.model import build_model, build_tokenizer


@pytest.fixture
def model_and_tokenizer(tiny_config):
    torch.manual_seed(0)
    model = build_model(tiny_config).eval()
    return model, build_tokenizer(model)


def test_cached_features_match_live_features(fixture_corpus, tmp_path, model_and_tokenizer):
    model, tok = model_and_tokenizer
    clips = read_splits(fixture_corpus, ("dev",))["dev"][:6]
    live = Features(model, tok, None).batch(clips)
    cached = Features(model, tok, tmp_path)
    assert cached.prepare(clips) == {"cached": 0, "encoded": len(clips) + len({c.prompt for c in clips})}
    got = cached.batch(clips)
    assert torch.allclose(live[0], got[0], atol=1e-6)
    assert torch.equal(live[2], got[2])
    real = live[2].bool()
    assert torch.allclose(live[1][real], got[1][real], atol=1e-5)
    # A new Features object (a new run) finds everything in the cache.
    again = Features(model, tok, tmp_path)
    assert again.prepare(clips)["encoded"] == 0


def test_cache_key_changes_with_encoder_weights(fixture_corpus, tmp_path, model_and_tokenizer):
    model, tok = model_and_tokenizer
    clips = read_splits(fixture_corpus, ("dev",))["dev"][:2]
    Features(model, tok, tmp_path).prepare(clips)
    with torch.no_grad():
        model.audio_encoder.proj.weight.add_(1.0)
    assert Features(model, tok, tmp_path).prepare(clips)["encoded"] == 2  # audio re-encoded, text reused


def test_pad_sequences():
    out, mask = pad_sequences([np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)])
    assert out.shape == (2, 4, 3) and mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert out[0, 2:].abs().sum() == 0


def test_cache_key_changes_with_the_resampler(tmp_path, model_and_tokenizer):
    model, tok = model_and_tokenizer
    soxr = Features(model, tok, tmp_path)
    model.config.resampler = "torchaudio"
    torchaudio = Features(model, tok, tmp_path)
    assert torchaudio.protocol.resampler == "torchaudio" and soxr.protocol.resampler == "soxr"
    assert torchaudio._audio_dir != soxr._audio_dir  # different input audio, different features
    assert torchaudio._text_dir == soxr._text_dir  # prompts are unaffected
