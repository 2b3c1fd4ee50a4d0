import pytest
import torch

from deramos_rt.errors import DeramosError
from training.config import ModelConfig
from training.model import DeraMosHeads, build_model, build_tokenizer, sinusoidal_table


def _heads(**overrides):
    cfg = ModelConfig(audio_dim=32, text_dim=24, mi_ff=64, mi_mlp=[16, 8], ta_dim=16, ta_mlp=[8, 4], **overrides)
    torch.manual_seed(0)
    return DeraMosHeads(cfg).eval()


def _inputs(batch=4, frames=12, tokens=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(batch, frames, 32, generator=g)
    text = torch.randn(batch, tokens, 24, generator=g)
    lengths = torch.randint(2, tokens + 1, (batch,), generator=g)
    mask = (torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(1)).long()
    return audio, text, mask


def test_paper_heads_have_about_13m_parameters_and_40_tensors():
    heads = DeraMosHeads(ModelConfig(audio_dim=1024, text_dim=768))
    assert 13.0e6 < sum(p.numel() for p in heads.parameters()) < 13.3e6
    assert len(heads.state_dict()) == 40  # same count as the research code's head tensors


def test_outputs_are_expected_scores_of_distributions():
    heads = _heads()
    out = heads(*_inputs(), return_alignment=True)
    assert out["mi_probs"].shape == (4, 20) and out["ta_probs"].shape == (4, 20)
    assert torch.allclose(out["mi_probs"].sum(-1), torch.ones(4), atol=1e-6)
    assert torch.allclose(out["mi"], out["mi_probs"] @ torch.linspace(1, 5, 20), atol=1e-6)
    assert ((out["ta"] >= 1) & (out["ta"] <= 5)).all()
    assert out["audio_vec"].shape == (4, 16) and out["text_vec"].shape == (4, 16)


@pytest.mark.parametrize("pooling,kv", [("attentive", "audio"), ("mean", "audio"), ("attentive", "mi")])
def test_scores_do_not_depend_on_batch_mates(pooling, kv):
    heads = _heads(ta_pooling=pooling, ta_kv_source=kv)
    audio, text, mask = _inputs(batch=4, tokens=9)
    together = heads(audio, text, mask)
    for i in range(4):
        n = int(mask[i].sum())
        alone = heads(audio[i : i + 1], text[i : i + 1, :n], mask[i : i + 1, :n])
        for key in ("mi", "ta", "mi_probs", "ta_probs"):
            assert (alone[key][0] - together[key][i]).abs().max() < 1e-5, key
    # Changing a clip's batch mates (other audio, other prompts, other padding) changes nothing for it.
    audio2, text2, mask2 = _inputs(batch=4, tokens=9, seed=1)
    audio2[0], text2[0], mask2[0] = audio[0], text[0], mask[0]
    other = heads(audio2, text2, mask2)
    assert (other["ta"][0] - together["ta"][0]).abs() < 1e-5 and (other["mi"][0] - together["mi"][0]).abs() < 1e-5


def test_padding_values_are_ignored():
    heads = _heads()
    audio, text, mask = _inputs()
    noisy = text.clone()
    noisy[mask == 0] = 1e3
    a, b = heads(audio, text, mask), heads(audio, noisy, mask)
    assert (a["ta"] - b["ta"]).abs().max() < 1e-5


def test_positional_encoding_is_the_sinusoidal_table_and_matters():
    table = sinusoidal_table(50, 8)
    assert torch.allclose(table[0], torch.tensor([0.0, 1, 0, 1, 0, 1, 0, 1]))
    assert torch.allclose(table[3, 0], torch.sin(torch.tensor(3.0)))
    audio, text, mask = _inputs()
    on, off = _heads(positional_encoding=True), _heads(positional_encoding=False)
    assert (on(audio, text, mask)["mi"] - off(audio, text, mask)["mi"]).abs().max() > 1e-4


def test_scalar_head_for_regression_baselines():
    out = _heads(head="scalar")(*_inputs())
    assert out["mi"].shape == (4,) and "mi_probs" not in out


def test_heads_need_encoder_widths():
    with pytest.raises(DeramosError, match="audio_dim"):
        DeraMosHeads(ModelConfig())


def test_full_tiny_model_keeps_encoders_frozen_and_in_eval(tiny_config):
    model = build_model(tiny_config)
    model.train()
    assert not model.audio_encoder.training and not model.text_encoder.training and model.heads.training
    assert not any(p.requires_grad for p in model.audio_encoder.parameters())
    assert all(p.requires_grad for p in model.heads.parameters())
    tok = build_tokenizer(model)
    batch = tok(["a calm low tone", "a lively high tone with a fast beat"])
    wave = torch.randn(2, model.audio_encoder.contract.num_samples)
    model.eval()
    out = model(wave, torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
    single = tok(["a calm low tone"])
    alone = model(wave[:1], torch.from_numpy(single.input_ids), torch.from_numpy(single.attention_mask))
    assert (alone["mi"][0] - out["mi"][0]).abs() < 1e-5 and (alone["ta"][0] - out["ta"][0]).abs() < 1e-5


def test_text_weights_file_without_tokenizer_folder_is_a_clear_error(tmp_path):
    from training.config import BackboneConfig
    from training.model import DeraMos

    cfg = ModelConfig(audio_dim=32, text_dim=32, text=BackboneConfig("roberta", weights=str(tmp_path / "clap.pt")))
    model = DeraMos(cfg, None, None)
    with pytest.raises(DeramosError, match="--tokenizer"):
        build_tokenizer(model)
