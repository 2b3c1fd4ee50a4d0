"""The three bundle parts compose to exactly what the heads compute, for every head and trunk kind."""

import pytest
import torch

from training.config import load_recipe
from training.model import build_model
from training.split import split_model


@pytest.mark.parametrize("head,kv,pooling", [("distribution", "audio", "attentive"), ("distribution", "mi", "mean"),
                                             ("scalar", "audio", "attentive"), ("scalar", "mi", "attentive")])
def test_parts_compose_to_the_full_model(head, kv, pooling):
    config = load_recipe("tiny").model
    config.head, config.ta_kv_source, config.ta_pooling = head, kv, pooling
    torch.manual_seed(0)
    model = build_model(config, load_weights=False).eval()
    audio, text, ta = split_model(model)
    wave = 0.1 * torch.randn(3, model.audio_encoder.contract.num_samples)
    ids = torch.randint(5, 50, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    with torch.no_grad():
        full = model(wave, ids, mask)
        mi, audio_x = audio(wave)
        ta_out = ta(audio_x, text(ids, mask), mask)
    key = "probs" if head == "distribution" else None
    expected_mi = full[f"mi_{key}"] if key else full["mi"]
    expected_ta = full[f"ta_{key}"] if key else full["ta"]
    assert torch.equal(mi, expected_mi) and torch.equal(ta_out, expected_ta)
    assert audio.output_names() == ((f"mi_probs" if key else "mi_score"), "audio_x")
