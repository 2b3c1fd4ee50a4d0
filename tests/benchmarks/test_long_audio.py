"""The long-audio memory benchmark: its files, its disk check and one tiny run of both jobs."""

from __future__ import annotations

from collections import namedtuple

import pytest
import soundfile as sf

from benchmarks import long_audio


def test_long_files_are_16_bit_stereo_flac_of_the_exact_length(tmp_path):
    path = tmp_path / "a.flac"
    long_audio.write_long_flac(path, 12.5, 8000, seed=0)  # not a whole number of 10 s chunks
    info = sf.info(str(path))
    assert (info.format, info.subtype, info.channels, info.frames) == ("FLAC", "PCM_16", 2, 100000)


def test_too_little_disk_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(long_audio.shutil, "disk_usage", lambda path: usage(10 ** 9, 0, 10 ** 8))
    with pytest.raises(SystemExit, match="GB free"):
        long_audio.run(120, 3, 48000, tmp_path, None, None, None, keep=False)
    assert list(tmp_path.iterdir()) == []


def test_both_jobs_run_in_children_and_the_files_are_deleted(tmp_path):
    from export.testing import write_random_run
    from training.config import BackboneConfig

    run = write_random_run(tmp_path / "run", "tiny", seed=0, audio=BackboneConfig("tiny", {"clip_seconds": 2.0}))
    work = tmp_path / "work"
    work.mkdir()
    result = long_audio.run(0.1, 2, 16000, work, str(run), None, 1, keep=False)
    for job in ("clips_10s", "long"):
        assert result[job]["clips"] == 2 and result[job]["errors"] == 0 and result[job]["peak_rss_mb"] > 50
    assert result["met"] == (result["difference_mb"] <= long_audio.TARGET_MB)
    assert result["code"] == str(long_audio.CHECKOUT) and list(work.iterdir()) == []
