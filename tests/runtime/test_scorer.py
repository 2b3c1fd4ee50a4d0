"""The Scorer on the torch backend over a tiny run: results, bad input, batch independence, windows."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from deramos_rt.audio import load_clip
from deramos_rt.errors import DeramosError
from deramos_rt.scorer import EMPTY_PROMPT, ClipScore, Scorer, system_scores
from tests.runtime.conftest import PROMPTS, write_clip


def _close(a: list[ClipScore], b: list[ClipScore], tol=1e-5):
    for x, y in zip(a, b, strict=True):
        assert (x.id, x.error) == (y.id, y.error)
        assert x.mi == pytest.approx(y.mi, abs=tol) and (x.ta is None) == (y.ta is None)
        if x.ta is not None:
            assert x.ta == pytest.approx(y.ta, abs=tol)


def test_one_result_per_item_in_order_with_defaults(torch_scorer, clips):
    results = torch_scorer.score(clips)
    assert [r.path for r in results] == [p for p, _ in clips]
    assert [r.id for r in results] == [p.rsplit("/", 1)[1][:-4] for p, _ in clips]
    assert [r.system for r in results] == ["S001", "S002", "S003"] * 2
    for r in results:
        assert r.error is None and 1 <= r.mi <= 5 and 1 <= r.ta <= 5
        assert len(r.mi_probs) == 20 and sum(r.mi_probs) == pytest.approx(1, abs=1e-5)
        assert r.mi == pytest.approx(float(np.dot(r.mi_probs, np.linspace(1, 5, 20))))


def test_arrays_dicts_and_paths_give_the_same_scores(torch_scorer, clips):
    path, prompt = clips[0]
    signal, rate = sf.read(path, dtype="float32")
    by_path, by_array, by_dict = torch_scorer.score([(path, prompt), (signal, rate, prompt),
                                                     {"path": path, "prompt": prompt, "id": "x", "system": "mine"}])
    assert by_array.path is None and by_array.id == "item000001"
    assert (by_dict.id, by_dict.system) == ("x", "mine")
    for other in (by_array, by_dict):
        assert other.mi == pytest.approx(by_path.mi, abs=1e-6) and other.ta == pytest.approx(by_path.ta, abs=1e-6)


@pytest.mark.parametrize("batch_size,workers", [(1, 0), (3, 1), (16, 4)])
def test_scores_do_not_depend_on_batch_size_workers_or_batch_mates(tiny_run, torch_scorer, clips, batch_size, workers):
    reference = torch_scorer.score(clips)
    other = Scorer(tiny_run, backend="torch", batch_size=batch_size, decode_workers=workers)
    _close(other.score(clips), reference)
    mates = other.score([clips[3], clips[0], clips[5]])  # different batch mates and order
    _close(mates, [reference[3], reference[0], reference[5]])


def test_each_distinct_prompt_is_encoded_once(tiny_run, clips):
    scorer = Scorer(tiny_run, backend="torch", batch_size=2, decode_workers=1)
    scorer.score(clips + clips)
    assert scorer.counts["prompts_encoded"] == len(set(PROMPTS))


def test_bad_input_gives_per_clip_errors_and_the_job_goes_on(torch_scorer, tmp_path):
    good = str(write_clip(tmp_path / "good.wav"))
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0,), dtype=np.float32), 16000)
    nan = np.zeros(16000, dtype=np.float32)
    nan[100] = np.nan
    many = tmp_path / "nine.wav"
    sf.write(many, np.zeros((16000, 9), dtype=np.float32), 16000)
    items = [(str(tmp_path / "missing.wav"), "x"), (str(corrupt), "x"), (str(empty), "x"), (nan, 16000, "x"),
             (np.full(16000, np.inf, dtype=np.float32), 16000, "x"), (str(many), "x"), (good, "calm piano")]
    results = torch_scorer.score(items)
    expected = ["not found", "cannot decode", "no samples", "NaN", "NaN", "9 channels"]
    for result, fragment in zip(results, expected):
        assert result.mi is None and result.ta is None and fragment in result.error, result.error
    assert results[-1].error is None and results[-1].mi is not None


def test_odd_but_valid_audio_is_scored(torch_scorer, tmp_path):
    items = [(str(write_clip(tmp_path / "low.wav", rate=8000)), "calm piano"),
             (str(write_clip(tmp_path / "high.flac", rate=384000, seconds=1.0)), "calm piano"),
             (str(write_clip(tmp_path / "ünïcødé 音楽.wav", channels=8)), "calm piano"),
             (np.zeros(32000, dtype=np.float32), 16000, "calm piano")]  # digital silence
    for result in torch_scorer.score(items):
        assert result.error is None and 1 <= result.mi <= 5 and 1 <= result.ta <= 5


def test_empty_prompt_gives_mi_and_a_ta_error(torch_scorer, clips):
    full, empty, blank = torch_scorer.score([clips[0], (clips[0][0], ""), (clips[0][0], "   ")])
    for r in (empty, blank):
        assert r.error == EMPTY_PROMPT and r.ta is None and r.mi == pytest.approx(full.mi, abs=1e-6)


def test_over_long_prompt_is_truncated_and_counted_not_an_error(tiny_run, clips):
    scorer = Scorer(tiny_run, backend="torch", decode_workers=0)
    long_prompt = " ".join(["piano"] * 200)
    result, short = scorer.score([(clips[0][0], long_prompt), (clips[0][0], "piano")])
    assert result.error is None and result.prompt_truncated and not short.prompt_truncated
    assert scorer.counts["prompts_truncated"] == 1


def test_runtime_input_is_exactly_what_training_prepares(tiny_run, clips, tmp_path):
    """training.cache feeds the encoder load_clip(path, model.audio_protocol); the runtime must match it."""
    from deramos_rt.pipeline import make_request, prepare_request
    from training.checkpoint import load_run

    model, _ = load_run(tiny_run)
    stereo = str(write_clip(tmp_path / "stereo44k.wav", seconds=5.0, rate=44100, channels=2))
    for path in (clips[0][0], stereo):
        runtime = prepare_request(make_request((path, "x"), 0), model.audio_protocol, "truncate").windows[0]
        assert np.array_equal(runtime, load_clip(path, model.audio_protocol))


def test_windows_mode_is_the_real_audio_weighted_mean_of_window_scores(tiny_run, tmp_path):
    scorer = Scorer(tiny_run, backend="torch", long_audio="windows", batch_size=8, decode_workers=1)
    protocol = scorer.protocol
    path = str(write_clip(tmp_path / "long.wav", seconds=95.0, rate=protocol.sample_rate, seed=3))
    [result] = scorer.score([(path, "calm piano")])
    signal, _ = sf.read(path, dtype="float32")
    n = protocol.num_samples
    pieces = [signal[i:i + n] for i in range(0, signal.size, n)]
    weights = np.array([p.size / n for p in pieces])
    per_window = Scorer(tiny_run, backend="torch", decode_workers=0).score([(p, protocol.sample_rate, "calm piano") for p in pieces])
    mi_probs = np.average([w.mi_probs for w in per_window], axis=0, weights=weights)
    ta_probs = np.average([w.ta_probs for w in per_window], axis=0, weights=weights)
    bins = np.linspace(1, 5, 20)
    assert result.windows == len(pieces) == 48 and weights[-1] == pytest.approx(0.5)
    assert result.mi == pytest.approx(float(mi_probs @ bins), abs=1e-5)
    assert result.ta == pytest.approx(float(ta_probs @ bins), abs=1e-5)
    truncated = Scorer(tiny_run, backend="torch", decode_workers=0).score([(path, "calm piano")])[0]
    assert truncated.mi == pytest.approx(per_window[0].mi, abs=1e-5)


def test_system_scores_means_counts_and_failures():
    rows = [ClipScore("a", None, "S1", "p", 2.0, 3.0), ClipScore("b", None, "S1", "p", 4.0, None, error=EMPTY_PROMPT),
            ClipScore("c", None, "S2", "p", error="missing")]
    summary = system_scores(rows)
    assert summary["S1"] == {"clips": 2, "failed": 1, "mi_n": 2, "mi_mean": 3.0, "ta_n": 1, "ta_mean": 3.0}
    assert summary["S2"] == {"clips": 1, "failed": 1, "mi_n": 0, "mi_mean": None, "ta_n": 0, "ta_mean": None}


def test_bad_arguments_are_clear_errors(tiny_run, tmp_path):
    with pytest.raises(DeramosError, match="long_audio"):
        Scorer(tiny_run, backend="torch", long_audio="random")
    with pytest.raises(DeramosError, match="neither a bundle"):
        Scorer(tmp_path, backend="torch")
    with pytest.raises(DeramosError, match="item #0"):
        Scorer(tiny_run, backend="torch").score([("only-a-path",)])


def test_missing_default_bundle_names_the_build_command(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setenv("DERAMOS_CACHE", str(tmp_path / "cache"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "export" else real(name, *a))
    with pytest.raises(DeramosError, match=r"needs export: pip install .*python -m deramos_rt.models default"):
        Scorer()
    monkeypatch.setenv("DERAMOS_DEFAULT_BUNDLE", str(tmp_path / "nowhere"))
    with pytest.raises(DeramosError, match="DERAMOS_DEFAULT_BUNDLE .*nowhere is neither a bundle"):
        Scorer()


def test_an_unforeseen_decode_failure_costs_one_clip_not_the_job():
    import numpy as np

    from deramos_rt.audio import AudioProtocol
    from deramos_rt.pipeline import make_request, prepare_request

    bad = prepare_request(make_request((np.array(["a", "b"]), 16000, "x"), 0), AudioProtocol(16000, 1.0), "truncate")
    good = prepare_request(make_request((np.zeros(800, np.float32), 16000, "x"), 1), AudioProtocol(16000, 1.0), "truncate")
    assert bad.windows is None and "ValueError" in bad.error
    assert good.error is None and good.windows.shape == (1, 16000)


def test_score_clip_scores_one_file_or_array_like_score(torch_scorer, clips):
    path, prompt = clips[0]
    [reference] = torch_scorer.score([(path, prompt)])
    by_path = torch_scorer.score_clip(path, prompt)
    signal, rate = sf.read(path, dtype="float32")
    by_array = torch_scorer.score_clip(signal, rate, prompt)
    assert isinstance(by_path, ClipScore) and (by_path.id, by_path.mi, by_path.ta) == (reference.id, reference.mi, reference.ta)
    assert by_array.mi == pytest.approx(reference.mi, abs=1e-6) and by_array.ta == pytest.approx(reference.ta, abs=1e-6)
    mi_only = torch_scorer.score_clip(path)
    assert mi_only.mi == reference.mi and mi_only.ta is None and mi_only.error == EMPTY_PROMPT
    with pytest.raises(DeramosError, match=r"score_clip\(array, sample_rate, prompt\): give the array's sample rate"):
        torch_scorer.score_clip(signal, prompt)


@pytest.mark.parametrize("items", ["song.wav", ("song.wav", "calm piano"), {"path": "song.wav", "prompt": "x"}])
def test_score_given_one_clip_points_to_score_clip(torch_scorer, items):
    with pytest.raises(DeramosError, match=r"Scorer.score takes a list of items .*use Scorer.score_clip\(path, prompt\)"):
        torch_scorer.score(items)
    with pytest.raises(DeramosError, match=r"item #1 is a bare path \('b.wav'\).*Scorer.score_clip"):
        torch_scorer.score([("a.wav", "x"), "b.wav"])
