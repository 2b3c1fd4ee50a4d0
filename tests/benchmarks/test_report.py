"""The benchmark harness runs at tiny sizes and its arithmetic is right (no test asserts a time)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import flops, gemm, measure, plots, report, report_md
from benchmarks.models import PROMPTS, items_for, random_run, write_clips, write_roberta_tokenizer


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return random_run("tiny", tmp_path_factory.mktemp("bench") / "tiny-run")


@pytest.fixture(scope="module")
def tiny_items(tmp_path_factory):
    paths = write_clips(tmp_path_factory.mktemp("clips"), 5, 2.5, rate=22050, channels=2)
    return items_for(paths)


def test_flop_count_and_shapes_of_a_linear_layer():
    layer = torch.nn.Linear(8, 4)
    counted = flops.count(layer, torch.randn(2, 5, 8))
    assert counted["flops"] == 2 * 10 * 8 * 4
    assert counted["quantisable_flops"] == counted["flops"]
    assert counted["shapes"] == {(10, 8, 4): 640.0}
    assert flops.shapes_at_batch(counted["shapes"], 3) == {(30, 8, 4): 1920.0}


def test_convolution_is_not_in_the_quantisable_share():
    conv = torch.nn.Conv1d(1, 4, 3, bias=False)
    counted = flops.count(conv, torch.randn(1, 1, 10))
    assert counted["flops"] == 2 * 4 * 3 * 8 and counted["quantisable_flops"] == 0


def test_flop_bound_splits_the_quantised_share():
    per = {"total": 3e9, "quantisable": 2e9}
    assert flops.bound_clips_per_s(per, fp32_rate=100.0) == pytest.approx(100 / 3)
    # 2 GFLOP at 400 GOP/s + 1 GFLOP at 100 GFLOP/s = 0.015 s per clip
    assert flops.bound_clips_per_s(per, fp32_rate=100.0, int8_rate=400.0) == pytest.approx(1 / 0.015)
    assert flops.per_clip({"audio": {"flops": 4.0, "quantisable_flops": 1.0}, "ta": {"flops": 2.0, "quantisable_flops": 2.0},
                           "text": {"flops": 8.0, "quantisable_flops": 8.0}}, 4.0)["total"] == 8.0


def test_gemm_rates_are_measured_for_each_library():
    rates = gemm.measure_cpu([(16, 32, 8)], min_seconds=0.01, peak=(64, 64, 64))
    assert {"torch_fp32", "ort_fp32", "ort_int8", "fp32", "int8", "int8_over_fp32"} <= set(rates["best"])
    assert [(r["m"], r["k"], r["n"]) for r in rates["shapes"]] == [(16, 32, 8), (64, 64, 64)]
    assert all(r[k] > 0 for r in rates["shapes"] for k in ("torch_fp32", "ort_fp32", "ort_int8"))


def test_percentiles_parity_and_peak_memory():
    assert measure.percentiles([0.001, 0.002, 0.003])["p50_ms"] == 2.0
    assert measure.percentiles([])["p99_ms"] is None
    got = measure.parity({"mi": [1, 2, 3, 4], "ta": [1, 2, 3, 4]}, {"mi": [1, 2, 3.5, 4], "ta": [4, 3, 2, 1]})
    assert got["mi_max_abs"] == 0.5 and got["mi_srcc"] == 1.0 and got["ta_srcc"] == -1.0
    assert measure.peak_rss_mb() > 10


def test_roberta_tokenizer_has_roberta_size_and_padding(tmp_path):
    from deramos_rt.text import load_tokenizer

    write_roberta_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path, 128, expected_vocab_size=50265)
    batch = tok(["a calm piano piece", "rock"])
    assert tok.pad_id == 1 and batch.input_ids[0, 0] == 0 and batch.input_ids[1, -1] == 1


def test_reference_and_scorer_rows_run_on_a_tiny_model(tiny_run, tiny_items):
    ref = measure.reference_row(tiny_run, tiny_items)
    row = measure.scorer_row("torch-fp32", tiny_run, "torch", "fp32", 2, tiny_items, workers=1)
    assert ref["clips"] == row["clips"] == 5 and row["errors"] == []
    assert row["prompts_encoded"] == row["distinct_prompts"] == 5
    # Batching never changes a clip's scores (the runtime's contract), so parity with the reference holds.
    assert measure.parity(ref["scores"], row["scores"])["mi_max_abs"] < 1e-4
    lat = measure.batch_latencies(tiny_run, "torch", "fp32", [1, 2], np.zeros((3, 32000), np.float32), PROMPTS[0], 2)
    assert set(lat) == {"1", "2"} and lat["2"]["calls"] >= 2
    stages = measure.stage_breakdown(tiny_run, tiny_items, 2)
    assert {"decode", "resample", "encoder", "heads", "text_per_prompt", "ta"} <= set(stages)


def test_scaling_point_streams_and_counts(tiny_run, tiny_items):
    point = measure.scaling_point(tiny_run, "torch", "fp32", 2, tiny_items * 2)
    assert point["clips"] == 10 and point["failed"] == 0


def _section(ref=1.0, best=4.0, model=4.1, int8=None):
    rows = [{"name": "reference", "e2e_clips_per_s": ref, "model_clips_per_s": ref},
            {"name": "onnxruntime-fp32", "precision": "fp32", "e2e_clips_per_s": best, "model_clips_per_s": model,
             "e2e_seconds": 10.0, "waits_seconds_in_e2e": 0.1, "prompts_encoded": 8, "distinct_prompts": 8}]
    if int8:
        rows.append({"name": "onnxruntime-int8", "precision": "int8", "e2e_clips_per_s": int8, "model_clips_per_s": int8,
                     "e2e_seconds": 10.0, "prompts_encoded": 8, "distinct_prompts": 8,
                     "parity": {"mi_srcc": 0.995, "ta_srcc": 0.999}})
    return {"title": "built-in", "rows": rows, "unavailable": {},
            "flops": {"per_clip": {"total": 1e9, "quantisable": 0.5e9}},
            "gemm": {"best": {"fp32": 4.5, "int8": 9.0, "int8_over_fp32": 2.0, "ort_fp32": 4.5, "torch_fp32": 3.0}}}


def test_targets_report_met_and_not_met():
    got = {t["target"].split(":")[0]: t["status"] for t in report.targets(_section(int8=5.5))}
    # best is the int8 row (5.5 clips/s); its bound: 0.5 GFLOP at 9 + 0.5 GFLOP at 4.5 GFLOP/s -> 6 clips/s,
    # 6 / 5.5 = 1.09 <= 1.15
    assert got["FLOP-bound"] == "met"
    assert got["decoding hidden"] == "met" and got["each distinct prompt encoded once"] == "met"
    assert got["against the reference"] == "met"
    # int8 gain 5.5 / 4 = 1.375 < 1 + 0.6 * (2 - 1) = 1.6
    assert got["int8"] == "not met"
    assert report.targets(_section(int8=5.0))[0]["status"] == "not met"  # 6 / 5 = 1.2 > 1.15
    slow = {t["target"].split(":")[0]: t for t in report.targets(_section(ref=2.5, best=4.0, model=8.0))}
    assert slow["decoding hidden"]["status"] == "not met" and slow["against the reference"]["status"] == "not met"
    assert "impossible on this machine" in slow["against the reference"]["detail"]


def test_markdown_and_plots_render(tmp_path):
    section = _section(int8=5.0)
    for row in section["rows"]:
        row.update(backend=row["name"].split("-")[0], precision=row.get("precision", "fp32"), batch_size=1,
                   peak_rss_mb=100.0, latency={"1": {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "clips_per_s": 2.0},
                                               "8": {"p50_ms": 4.0, "p95_ms": 5.0, "p99_ms": 6.0, "clips_per_s": 3.0}})
    section["targets"] = report.targets(section)
    results = {"command": "x", "machine": report.machine(), "models": {"default": section},
               "scaling": {"what": "w", "points": [{"clips": 100, "seconds": 1.0, "clips_per_s": 100.0,
                                                      "peak_rss_mb": 10.0, "failed": 0},
                                                     {"clips": 1000, "seconds": 10.0, "clips_per_s": 100.0,
                                                      "peak_rss_mb": 10.0, "failed": 0}]}}
    results["plots"] = plots.write_all(results, tmp_path)
    assert results["plots"] == ["throughput_vs_batch.png", "latency.png", "scaling.png"]
    text = report_md.render_markdown(json.loads(json.dumps(results)))
    assert "| onnxruntime-int8 |" in text and "**not met**" in text and "![scaling.png]" in text


def test_unknown_backend_row_is_refused():
    with pytest.raises(SystemExit):
        report.parse_args(["--out", "x", "--backends", "torch-fp32,warp-drive"])
