import shutil

import numpy as np
import pytest
import soundfile as sf

from deramos_rt.errors import DeramosError
from training.data import Corpus, read_splits


def _corpus(tmp_path, lines, prompts="id\ttext\nP001\ta calm piano piece\nP002\tfast rock\n", demo=None):
    (tmp_path / "wav").mkdir()
    (tmp_path / "sets").mkdir()
    (tmp_path / "prompt_info.txt").write_text(prompts)
    if demo is not None:
        (tmp_path / "demo_prompt_info.txt").write_text(demo)
    for name in ("audiomos2025-track1-S002_P001", "audiomos2025-track1-S003_P002", "audiomos2025-track1-S001_demo7"):
        sf.write(tmp_path / "wav" / f"{name}.wav", np.zeros(1600, dtype=np.float32), 16000)
    (tmp_path / "sets" / "train_mos_list.txt").write_text("\n".join(lines) + "\n")
    return Corpus.open(tmp_path)


def test_reads_ids_with_and_without_wav_suffix_and_demo_prompts(tmp_path):
    corpus = _corpus(tmp_path, [
        "audiomos2025-track1-S002_P001.wav,3.2,4.0",
        "audiomos2025-track1-S003_P002,1.0,5.0",
        "audiomos2025-track1-S001_demo7.wav,2.4,2.6",
    ], demo="id\ttext\naudiomos2025-track1-S001_demo7.wav\ta demo prompt\n")
    clips = corpus.read_split("train")
    assert [c.wav_id for c in clips] == ["audiomos2025-track1-S002_P001", "audiomos2025-track1-S003_P002",
                                         "audiomos2025-track1-S001_demo7"]
    assert [c.system_id for c in clips] == ["S002", "S003", "S001"]
    assert [c.prompt for c in clips] == ["a calm piano piece", "fast rock", "a demo prompt"]
    assert clips[0].mi == 3.2 and clips[1].ta == 5.0


@pytest.mark.parametrize("line,message", [
    ("audiomos2025-track1-S002_P001.wav,3.2", "expected 'wavID,MI,TA'"),
    ("audiomos2025-track1-S002_P001.wav,abc,4", "must be numbers"),
    ("audiomos2025-track1-S002_P001.wav,5.2,4", "MI = 5.2 is outside"),
    ("audiomos2025-track1-S002_P001.wav,3,0.8", "TA = 0.8 is outside"),
    ("audiomos2025-track1-S002_P009.wav,3,3", "no prompt"),
    ("audiomos2025-track1-S004_P001.wav,3,3", "audio file missing"),
])
def test_bad_lines_fail_before_training_with_file_and_line(tmp_path, line, message):
    corpus = _corpus(tmp_path, ["audiomos2025-track1-S002_P001.wav,3,3", line])
    with pytest.raises(DeramosError, match=message) as err:
        corpus.read_split("train")
    assert "train_mos_list.txt:2" in str(err.value)


def test_unreadable_wav_and_empty_split_and_missing_files(tmp_path):
    corpus = _corpus(tmp_path, ["audiomos2025-track1-S002_P001.wav,3,3"])
    (tmp_path / "wav" / "audiomos2025-track1-S002_P001.wav").write_bytes(b"RIFF garbage")
    with pytest.raises(DeramosError, match="unreadable audio"):
        corpus.read_split("train")
    (tmp_path / "sets" / "dev_mos_list.txt").write_text("\n")
    with pytest.raises(DeramosError, match="empty"):
        corpus.read_split("dev")
    with pytest.raises(DeramosError, match="split list not found"):
        corpus.read_split("test")
    with pytest.raises(DeramosError, match="prompt table not found"):
        Corpus.open(tmp_path / "wav")


def test_all_problems_are_reported_together(tmp_path):
    corpus = _corpus(tmp_path, [f"audiomos2025-track1-S002_P001.wav,9,{i}" for i in range(20)])
    with pytest.raises(DeramosError, match="20 problem") as err:
        corpus.read_split("train")
    assert "and 8 more" in str(err.value)


def test_generated_fixture_corpus_reads_cleanly(fixture_corpus):
    splits = read_splits(fixture_corpus)
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [48, 16, 16]
    ids = [c.wav_id for clips in splits.values() for c in clips]
    assert len(ids) == len(set(ids))
    for clip in splits["train"]:
        assert round(clip.mi / 0.2, 6).is_integer() and 1 <= clip.mi <= 5


def _demo_corpus(tmp_path, lines, prompts, demo=None, wavs=()):
    (tmp_path / "wav").mkdir()
    (tmp_path / "sets").mkdir()
    (tmp_path / "prompt_info.txt").write_text(prompts)
    if demo is not None:
        (tmp_path / "demo_prompt_info.txt").write_text(demo)
    for name in wavs:
        sf.write(tmp_path / "wav" / f"{name}.wav", np.zeros(160, dtype=np.float32), 16000)
    (tmp_path / "sets" / "train_mos_list.txt").write_text("\n".join(lines) + "\n")
    return Corpus.open(tmp_path)


def test_demo_systems_take_demo_prompts_others_take_prompt_info(tmp_path):
    ids = ["audiomos2025-track1-S006_P001", "audiomos2025-track1-S002_P001", "audiomos2025-track1-S013_P002"]
    corpus = _demo_corpus(tmp_path, [f"{i}.wav,3,3" for i in ids],
                          "id\ttext\nP001\tplain prompt one\nP002\tplain prompt two\n",
                          "id\ttext\naudiomos2025-track1-S006_P001.wav\tthe demo prompt\n")
    clips = corpus.read_split("train", check_audio=False)
    # S006 is a demo system: its demo entry wins over P001; S002 is not: P001. S013 has no demo entry:
    # it falls back to its P### prompt (the authors' code would stop there).
    assert [(c.prompt_id, c.prompt) for c in clips] == [
        ("audiomos2025-track1-S006_P001", "the demo prompt"), ("P001", "plain prompt one"), ("P002", "plain prompt two")]


def test_a_non_demo_clip_in_the_demo_table_is_ambiguous(tmp_path):
    corpus = _demo_corpus(tmp_path, ["audiomos2025-track1-S002_P001.wav,3,3"], "id\ttext\nP001\tone\n",
                          "id\ttext\naudiomos2025-track1-S002_P001\tother\n")
    with pytest.raises(DeramosError, match="S002_P001' is listed in demo_prompt_info.txt.*ambiguous") as err:
        corpus.read_split("train", check_audio=False)
    assert "train_mos_list.txt:1" in str(err.value)


def test_duplicated_prompt_ids_are_named(tmp_path):
    with pytest.raises(DeramosError, match=r"prompt_info.txt:3: prompt id 'P001' is listed twice \(first at line 2\)"):
        _demo_corpus(tmp_path, ["audiomos2025-track1-S002_P001.wav,3,3"], "id\ttext\nP001\tone\nP001\ttwo\n")


def test_system_ids_follow_the_one_token_rule(tmp_path):
    # S### must be its own token: "S0021" (four digits) is not system S002.
    corpus = _demo_corpus(tmp_path, ["audiomos2025-track1-S0021_P001.wav,3,3"], "id\ttext\nP001\tone\n")
    with pytest.raises(DeramosError, match="no system id S### in wav id 'audiomos2025-track1-S0021_P001'"):
        corpus.read_split("train", check_audio=False)


def test_a_multi_problem_error_ends_with_a_newline(tmp_path):
    corpus = _corpus(tmp_path, ["audiomos2025-track1-S002_P001.wav,9,3", "audiomos2025-track1-S002_P001.wav,3,9"])
    with pytest.raises(DeramosError) as err:
        corpus.read_split("train")
    lines = str(err.value).split("\n")
    assert lines[0] == "2 problem(s) in split 'train':" and lines[-1] == "" and len(lines) == 4
