"""The torch-free MusicEval reader the runtime's scorer uses."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from deramos_rt.errors import DeramosError
from deramos_rt.musiceval import MusicEvalClip, read_split


def _layout(root, ids, prompt_header=True):
    (root / "wav").mkdir(parents=True)
    (root / "sets").mkdir()
    header = "id\ttext\n" if prompt_header else ""
    (root / "prompt_info.txt").write_text(header + "P001\ta calm piano piece\nP002\tfast rock, loud\n")
    (root / "demo_prompt_info.txt").write_text("id\ttext\naudiomos2025-track1-S001_x.wav\ta demo prompt\n")
    for wav_id in ids:
        sf.write(root / "wav" / f"{wav_id}.wav", np.zeros(800, dtype=np.float32), 16000)
    return root


def test_read_split_gives_plain_records(tmp_path):
    ids = ["audiomos2025-track1-S002_P001", "audiomos2025-track1-S003_P002", "audiomos2025-track1-S001_x"]
    root = _layout(tmp_path / "me", ids, prompt_header=False)
    (root / "sets" / "test_mos_list.txt").write_text(f"{ids[0]}.wav,3.2,4.0\n{ids[1]},1.0,5.0\n\n{ids[2]}.wav,2.4,2.6\n")
    clips = read_split(root, "test")
    assert all(isinstance(c, MusicEvalClip) for c in clips)
    first = clips[0]
    assert (first.wav_id, first.path, first.system_id, first.prompt_id, first.prompt, first.mi, first.ta) == (
        ids[0], root / "wav" / f"{ids[0]}.wav", "S002", "P001", "a calm piano piece", 3.2, 4.0)
    assert clips[1].prompt == "fast rock, loud" and clips[2].prompt_id == ids[2]
    assert clips[2].source.endswith("test_mos_list.txt:4")


def test_read_split_errors_name_the_file_and_line(tmp_path):
    root = _layout(tmp_path / "me", ["audiomos2025-track1-S002_P001"])
    (root / "sets" / "dev_mos_list.txt").write_text("audiomos2025-track1-S002_P001,3,3\naudiomos2025-track1-S004_P001,3,3\n")
    with pytest.raises(DeramosError, match=r"dev_mos_list.txt:2: audio file missing"):
        read_split(root, "dev")
    assert len(read_split(root, "dev", check_audio=False)) == 2
    with pytest.raises(DeramosError, match="unknown split 'val'"):
        read_split(root, "val")


def test_reader_imports_without_torch():
    code = "import sys, deramos_rt.musiceval; assert 'torch' not in sys.modules and 'training' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
