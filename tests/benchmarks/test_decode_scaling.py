"""The decode-only table (its rows and verdicts) and the GPU benchmark's dry run (its logic on the CPU)."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from benchmarks import decode_scaling
from benchmarks.decode_scaling import decode_table, judge, markdown, worker_counts, write_flac_clips


def test_clips_are_16_bit_stereo_flac_of_the_length_and_reused(tmp_path):
    [path] = write_flac_clips(tmp_path, 1, 1.0)
    info = sf.info(str(path))
    assert (info.format, info.subtype, info.samplerate, info.channels, info.frames) == ("FLAC", "PCM_16", 44100, 2, 44100)
    written = path.stat().st_mtime_ns
    assert write_flac_clips(tmp_path, 1, 1.0) == [path] and path.stat().st_mtime_ns == written


def test_worker_counts_double_up_to_the_cores():
    assert worker_counts(16) == [1, 2, 4, 8, 16] and worker_counts(6) == [1, 2, 4, 6] and worker_counts(1) == [1]


def test_each_row_is_judged_against_its_own_one_worker_row():
    rows = [{"protocol": p, "clip_seconds": 10.0, "mode": "threads", "workers": n, "clips_per_s": rate}
            for p, n, rate in [("soxr", 1, 10.0), ("soxr", 2, 17.0), ("soxr", 4, 30.0), ("torchaudio", 1, 5.0),
                               ("torchaudio", 2, 7.0), ("torchaudio", 8, 40.0)]]
    judged = {(r["protocol"], r["workers"]): r for r in judge(rows, cores=4)}
    assert judged[("soxr", 2)]["speedup"] == 1.7 and judged[("soxr", 2)]["target_met"] is True
    assert judged[("soxr", 4)]["target_speedup"] == 3.2 and judged[("soxr", 4)]["target_met"] is False
    assert judged[("torchaudio", 2)]["target_met"] is False  # 1.4x < 1.6x
    assert judged[("torchaudio", 8)]["target_met"] is None  # more workers than cores: not judged


def test_decode_table_times_every_protocol_and_mode(tmp_path):
    files = {1.0: write_flac_clips(tmp_path, 3, 1.0)}
    rows = decode_table(files, ("torchaudio", "soxr", "native"), [1, 2], ("threads", "processes"))
    assert len(rows) == 12
    for r in rows:
        assert r["clips"] == 3 and r["clips_per_s"] > 0 and r["speedup"] is not None and r["load_1min"] >= 0
    assert {(r["protocol"], r["native"], r["target_rate"]) for r in rows} == {
        ("torchaudio", False, 24000), ("soxr", False, 16000), ("native", True, 24000)}
    assert markdown(rows).count("\n") == len(rows) + 1


def test_a_failed_decode_is_an_error_not_a_rate(tmp_path):
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"not audio")
    with pytest.raises(RuntimeError, match="decode failed"):
        decode_scaling.time_decode([bad], 1.0, "soxr", 1)


def test_environment_records_blas_in_the_workers():
    env = decode_scaling.environment()
    assert env["cores"] >= 1 and env["blas_in_decode_workers"]
    assert all(lib["num_threads"] == 1 for lib in env["blas_in_decode_workers"])


@pytest.mark.slow  # 15-45 s on two cores: both models built, timed and scored end to end at tiny sizes
def test_gpu_benchmark_dry_run_measures_every_part(tmp_path):
    from benchmarks import gpu_bench

    assert gpu_bench.main(["--out", str(tmp_path), "--dry-run", "--budget-s", "600"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["errors"] == {} and set(results["parts"]) == {"env", "files", "gemm", "muq-roberta", "default", "decode"}
    muq = results["models"]["muq-roberta"]
    assert muq["protocol"]["resampler"] == "torchaudio"
    e2e = muq["e2e"]["workers_2"]
    assert e2e["errors"] == [] and e2e["clips"] == 16 and "conv1d" in e2e["stage"]
    assert muq["e2e"]["host_resampling_workers_2"]["stage"].startswith("host")
    assert "targets" in muq and results["decode"]["rows"]
    assert "## Decode only" in (tmp_path / "report.md").read_text()
