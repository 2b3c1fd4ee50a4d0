"""The benchmark harness runs at tiny sizes and its arithmetic is right (no test asserts a time)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import flops, gemm, judge, measure, plots, report, report_md
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


def _section(ref=1.0, best=4.0, model=4.1, int8=None, busy=False):
    """A model section after measurement: per-part FLOPs, GEMM rates, rows with their limits filled in."""
    rows = [{"name": "reference", "backend": "torch (research protocol)", "precision": "fp32",
             "e2e_clips_per_s": ref, "model_clips_per_s": ref, "model_core_s_per_clip": 0.5},
            {"name": "onnxruntime-fp32", "backend": "onnxruntime", "precision": "fp32", "e2e_clips_per_s": best,
             "model_clips_per_s": model, "model_core_s_per_clip": 0.3, "prompts_encoded": 8, "distinct_prompts": 8}]
    if int8:
        rows.append({"name": "onnxruntime-int8", "backend": "onnxruntime", "precision": "int8", "e2e_clips_per_s": int8,
                     "model_clips_per_s": int8, "model_core_s_per_clip": 0.3, "prompts_encoded": 8,
                     "distinct_prompts": 8, "parity": {"mi_srcc": 0.995, "ta_srcc": 0.999}})
    # Audio 0.6 GFLOP (0.5 in weight products), TA 0.1 (0), text 0.6 (0.6) per prompt of 2 clips -> 1.0 per clip.
    section = {"title": "built-in", "rows": rows, "unavailable": {}, "int8_graphs": ["audio"],
               "flops": {"clips_per_prompt": 2.0, "per_clip": {"total": 1e9, "quantisable": 0.8e9}, "tokens_in_prompt": 9,
                         "by_part": {"audio": {"gflop": 0.6, "quantisable_gflop": 0.5},
                                                               "ta": {"gflop": 0.1, "quantisable_gflop": 0.0},
                                                               "text": {"gflop": 0.6, "quantisable_gflop": 0.6}}},
               "gemm": {"best": {"fp32": 4.5, "int8": 9.0, "int8_over_fp32": 2.0, "ort_fp32": 4.5, "ort_int8": 9.0,
                                 "torch_fp32": 3.0}},
               "decode": {"decode_core_s_per_clip": 0.2}, "load": {"busy": busy}}
    for row in rows:
        row["limit_clips_per_s"] = judge.row_limit(row, section)
        row["cpu_limit"] = judge.cpu_limit(row, section, cores=2)
    return section


def test_each_row_has_its_own_limit():
    section = _section(int8=5.0)
    rows = {r["name"]: r for r in section["rows"]}
    assert rows["onnxruntime-fp32"]["limit_clips_per_s"] == pytest.approx(4.5)  # 1 GFLOP/clip at 4.5 GFLOP/s
    # The reference encodes its prompt per clip: 1.3 GFLOP at torch's 3 GFLOP/s.
    assert rows["reference"]["limit_clips_per_s"] == pytest.approx(3.0 / 1.3)
    # int8 quantises the audio graph only: 0.5 GFLOP at 9 GOP/s + 0.5 GFLOP at 4.5 GFLOP/s.
    assert rows["onnxruntime-int8"]["limit_clips_per_s"] == pytest.approx(1 / (0.5 / 9 + 0.5 / 4.5))
    assert judge.row_limit({"name": "x", "backend": "torch", "device": "cuda"}, section) is None
    # CPU limit: 2 cores / (0.2 decode + 0.3 model core-seconds) = 4 clips/s; end to end 4 of it.
    assert rows["onnxruntime-fp32"]["cpu_limit"]["limit_clips_per_s"] == pytest.approx(4.0)
    assert rows["onnxruntime-fp32"]["cpu_limit"]["e2e_share"] == pytest.approx(1.0)
    assert judge.cpu_limit({"model_core_s_per_clip": 0.3}, {"decode": {}}) is None


def test_sanity_fails_a_row_faster_than_its_own_limit():
    fine = {"models": {"m": _section(best=4.0, model=4.1)}}
    assert judge.sanity(fine) == {"status": "passed", "rows_checked": 2, "violations": []}
    wrong = {"models": {"m": _section(best=4.0, model=5.0)}}  # above 4.5: the limit is wrong
    result = judge.sanity(wrong)
    assert result["status"] == "failed" and result["violations"] == [
        "m onnxruntime-fp32: model 5 clips/s > its limit 4.5 clips/s"]
    # Measured while busy, the same numbers may be load noise: listed, not failed.
    busy = judge.sanity({"models": {"m": _section(best=4.0, model=5.0, busy=True)}})
    assert busy["status"] == "not judged: machine busy" and len(busy["violations"]) == 1


def test_gemm_rates_of_several_rounds_keep_each_best():
    one = {"shapes": [{"m": 1, "k": 2, "n": 3, "torch_fp32": 10.0, "ort_fp32": 20.0, "ort_int8": 40.0}], "int8_recipe": "x"}
    two = {"shapes": [{"m": 1, "k": 2, "n": 3, "torch_fp32": 30.0, "ort_fp32": 15.0, "ort_int8": 90.0}], "int8_recipe": "x"}
    best = gemm.best_of([one, {"error": "busy"}, two])
    assert best["shapes"][0]["torch_fp32"] == 30.0 and best["best"]["ort_fp32"] == 20.0 and best["rounds"] == 2
    assert best["best"]["int8_over_fp32"] == 4.5 and best["best"]["fp32"] == 30.0 and best["int8_recipe"] == "x"


def test_targets_report_met_and_not_met():
    got = {t["target"].split(":")[0]: t for t in judge.targets(_section(int8=5.5))}
    # best is the int8 row (5.5 clips/s) against its limit 6 clips/s: 1.09 <= 1.15
    assert got["FLOP-bound"]["status"] == "met"
    assert got["decoding hidden"]["status"] == "met" and got["each distinct prompt encoded once"]["status"] == "met"
    assert got["against the reference"]["status"] == "met"
    # CPU limit of the int8 row: 2 / (0.2 + 0.3) = 4 clips/s, end to end 5.5 > 85 %.
    assert got["CPU limit"]["status"] == "met"
    # int8's limit over fp32's: 6 / 4.5 = 1.33x possible -> need 1.2x; gain 5.5 / 4 = 1.375x
    assert got["int8"]["status"] == "met" and "at most 1.33x" in got["int8"]["detail"]
    assert judge.targets(_section(int8=5.0))[0]["status"] == "not met"  # 6 / 5 = 1.2 > 1.15
    slow = {t["target"].split(":")[0]: t for t in judge.targets(_section(ref=2.5, best=4.0, model=8.0))}
    assert slow["decoding hidden"]["status"] == "not met" and slow["against the reference"]["status"] == "not met"
    assert "impossible on this machine" in slow["against the reference"]["detail"]


def test_targets_are_not_judged_on_a_busy_machine():
    got = judge.targets(_section(int8=5.5, busy=True))
    by_name = {t["target"].split(":")[0]: t for t in got}
    assert by_name["FLOP-bound"]["status"] == "not judged: machine busy"
    assert "(would be: met)" in by_name["FLOP-bound"]["detail"]
    assert by_name["each distinct prompt encoded once"]["status"] == "met"  # a count, judged whatever the load


def test_markdown_and_plots_render(tmp_path):
    section = _section(int8=5.0)
    for row in section["rows"]:
        row.update(batch_size=1, peak_rss_mb=100.0, range={"e2e_clips_per_s": [0.9 * row["e2e_clips_per_s"],
                                                                                row["e2e_clips_per_s"]]},
                   latency={"1": {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "clips_per_s": 2.0},
                            "8": {"p50_ms": 4.0, "p95_ms": 5.0, "p99_ms": 6.0, "clips_per_s": 3.0}})
    section["targets"] = judge.targets(section)
    results = {"command": "x", "machine": report.machine(), "models": {"default": section},
               "sanity": judge.sanity({"models": {"default": section}}),
               "whole_process": {"files": "3 files", "commands": {"deramos-rt score": "deramos-rt score m.csv"},
                                 "rows": {"deramos-rt score": {"seconds": 2.0, "clips_per_s": 1.5, "peak_rss_mb": 200.0,
                                                               "cpu_s": 1.0, "range": {"seconds": [1.9, 2.2]}}},
                                 "speedup": 4.1, "agreement": {"mi_max_abs": 1e-6, "ta_max_abs": 2e-6,
                                                               "clips_compared": 3}},
               "scaling": {"what": "w", "points": [{"clips": 100, "seconds": 1.0, "clips_per_s": 100.0,
                                                      "peak_rss_mb": 10.0, "failed": 0},
                                                     {"clips": 1000, "seconds": 10.0, "clips_per_s": 100.0,
                                                      "peak_rss_mb": 10.0, "failed": 0}]}}
    results["plots"] = plots.write_all(results, tmp_path)
    assert results["plots"] == ["throughput_vs_batch.png", "latency.png", "scaling.png"]
    text = report_md.render_markdown(json.loads(json.dumps(results)))
    assert "| onnxruntime-int8 |" in text and "**not met**" in text and "![scaling.png]" in text
    assert "**Sanity check PASSED**" in text and "**4.10x**" in text and "| 2 (1.9-2.2) |" in text
    assert "| 5 (4.5-5) |" in text  # the int8 row's end to end: median (min-max)


def test_unknown_backend_row_is_refused():
    with pytest.raises(SystemExit):
        report.parse_args(["--out", "x", "--backends", "torch-fp32,warp-drive"])


class _Monitor:
    def __init__(self, others):
        self.others = others

    def mark(self):
        return 0

    def summary(self, mark=None):
        return {"others_mean": self.others, "others_max": 1}


def test_a_later_section_is_judged_by_the_load_at_the_start_not_by_its_own_earlier_sections():
    from types import SimpleNamespace

    args = SimpleNamespace(start_load=(0.0, 0.0, 0.0), monitor=_Monitor(0.05))
    load = report.section_load(args, (1.9, 0.8, 0.3), 0)  # raised by this report's own model sections
    assert not load["busy"] and load["load_before"] == [1.9, 0.8, 0.3] and load["load_at_start"] == [0.0, 0.0, 0.0]
    assert "report's start" in load["detail"]
    busy = report.section_load(SimpleNamespace(start_load=(0.0,) * 3, monitor=_Monitor(5.0)), (0.1,) * 3, 0)
    assert busy["busy"]  # other processes' threads during the section still count


def test_the_whole_process_section_runs_the_readme_job_with_the_users_cached_bundle(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from benchmarks import models, whole

    calls = []
    monkeypatch.setattr(whole, "whole_process", lambda run, bundle, work, clips, repeats, log:
                        calls.append((run, bundle, clips, repeats)) or {"rows": []})
    cached = tmp_path / "default-bundle"
    monkeypatch.setattr(models, "default_bundle", lambda: cached)
    args = SimpleNamespace(scaling_spec=SimpleNamespace(bundle_dir=cached), work=tmp_path, whole_clips=4, repeats=2,
                           start_load=(0.0,) * 3, monitor=_Monitor(0.0))
    results = {}
    report.whole_section(args, results, lambda: None)
    assert calls == [(models.DEFAULT_RUN, None, 4, 2)]  # the cached bundle: no --bundle, as a user would run it
    assert results["whole_process"]["load"]["busy"] is False
    args.scaling_spec = SimpleNamespace(bundle_dir=tmp_path / "other")
    report.whole_section(args, results, lambda: None)
    assert calls[-1][1] == tmp_path / "other"


def test_bad_out_work_or_bundle_is_refused_before_anything_runs(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    for argv in (["--out", str(a_file)], ["--out", str(tmp_path / "r"), "--work", str(a_file)],
                 ["--out", str(tmp_path / "r"), "--bundle", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_info:
            report.parse_args(argv)
        assert exit_info.value.code == 2
    assert a_file.read_text() == "keep me" and not (tmp_path / "r").exists()
    assert "is not a deramos_rt bundle" in capsys.readouterr().err
