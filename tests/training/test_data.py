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
