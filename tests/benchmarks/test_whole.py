"""The whole-process row, the research-protocol script, the int8 probe check, and the report end to end on
a tiny model (no test asserts a time)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from benchmarks import gemm, report, whole
from benchmarks.research_protocol import read_manifest
from benchmarks.research_protocol import main as research_main
from export.testing import tiny_bundle


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(run directory, fp32 bundle) of a random tiny model."""
    root = tmp_path_factory.mktemp("whole")
    bundle = tiny_bundle(root, parity_files=2, parity_random=4)
    return root / "run", bundle


def test_the_file_set_mixes_formats_and_the_manifest_reads_back(tmp_path):
    manifest = whole.write_manifest(tmp_path, 4, seconds=1.0)
    rows = read_manifest(manifest)
    assert [r["path"].rsplit(".", 1)[1] for r in rows] == ["wav", "flac", "mp3", "wav"]
    assert rows[1]["id"] == "S001_clip00001" and all(r["prompt"] for r in rows)
    relative = tmp_path / "relative.csv"
    relative.write_text("path,prompt\naudio/S000_clip00000.wav,calm piano\n")
    assert read_manifest(relative) == [{"id": "S000_clip00000", "path": str(tmp_path / "audio" / "S000_clip00000.wav"),
                                        "prompt": "calm piano"}]


def test_a_child_is_charged_its_own_memory_not_the_parents(tmp_path):
    ballast = np.ones(40_000_000)  # 320 MB in this process
    result = whole.run_process(["python3", "-c", "x = bytearray(30_000_000)"], tmp_path / "child.stderr")
    assert 30 < result["peak_rss_mb"] < 200 and result["exit"] == 0 and ballast.sum() > 0
    with pytest.raises(RuntimeError, match="exited 5: boom"):
        whole.run_process(["python3", "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(5)"],
                          tmp_path / "fail.stderr")
    assert whole.run_process(["python3", "-c", "raise SystemExit(3)"], tmp_path / "three.stderr")["exit"] == 3


def test_the_research_script_and_the_readme_job_agree(tiny, tmp_path):
    run, bundle = tiny
    result = whole.whole_process(run, bundle, tmp_path, clips=3, repeats=1, log=lambda m: None)
    rows = result["rows"]
    assert set(rows) == {"deramos-rt score", "research protocol"}
    assert all("error" not in r and r["repeats"] == 1 and r["peak_rss_mb"] > 0 for r in rows.values())
    assert result["agreement"]["clips_compared"] == 3
    assert result["agreement"]["mi_max_abs"] < 1e-4 and result["agreement"]["ta_max_abs"] < 1e-4
    assert result["speedup"] > 0 and "research_protocol" in result["commands"]["research protocol"]
    out = tmp_path / "scores.csv"
    assert research_main([result["manifest"], "--run", str(run), "--out", str(out)]) == 0
    with out.open() as f:
        assert [r["id"] for r in csv.DictReader(f)] == ["S000_clip00000", "S001_clip00001", "S002_clip00002"]


def test_an_int8_probe_without_int8_kernels_is_refused(tmp_path, monkeypatch):
    from export import quantize

    fp32 = gemm.matmul_graph(64, 64, tmp_path / "g.onnx")
    assert quantize.int8_kernel_nodes(gemm.int8_probe(fp32, tmp_path / "g.int8.onnx")) >= 1
    monkeypatch.setattr(quantize, "quantize_nodes", lambda src, dst, nodes, options: src)
    with pytest.raises(gemm.NotInt8, match="no MatMulInteger"):
        gemm.int8_probe(fp32, tmp_path / "g2.int8.onnx")


def test_the_report_runs_end_to_end_on_a_tiny_bundle(tiny, tmp_path):
    _, bundle = tiny
    out = tmp_path / "report"
    code = report.main(["--out", str(out), "--models", "", "--bundle", str(bundle), "--clips", "3",
                        "--batch-sizes", "1,2", "--repeats", "2", "--whole-clips", "0", "--scaling", "0",
                        "--decode-clips", "2",
                        "--no-startup", "--no-breakdown", "--work", str(tmp_path / "work"), "--gemm-seconds", "0.01"])
    results = json.loads((out / "results.json").read_text())
    assert not results.get("errors")
    assert code == (1 if results["sanity"]["status"] == "failed" else 0)
    section = results["models"]["bundle"]
    rows = {r["name"]: r for r in section["rows"]}
    assert {"reference", "torch-fp32", "onnxruntime-fp32"} <= set(rows)
    assert all(r["repeats"] == 2 and r["limit_clips_per_s"] and r["cpu_limit"] for r in rows.values())
    assert section["decode"]["repeats"] == 2 and section["load"]["load_before"]
    assert set(rows["onnxruntime-fp32"]["latency"]) == {"1", "2"}
    assert rows["onnxruntime-fp32"]["scores_moved_between_repeats"] < 1e-6
    assert results["machine"]["threadpools"] and results["machine"]["cpu_key"]
    assert any(t["target"].startswith("CPU limit") for t in section["targets"])
    decode = results["decode_scaling"]
    assert {(r["protocol"], r["clip_seconds"], r["workers"]) for r in decode["rows"]} >= {("soxr", 10.0, 1)}
    assert decode["environment"]["cores"] >= 1 and "busy" in decode["load"]
    assert "Sanity check" in (out / "report.md").read_text()
    assert "## Decoding by worker count" in (out / "report.md").read_text()
