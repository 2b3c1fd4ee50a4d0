"""Scoring with an ensemble bundle: the members' mean, their spread, batch independence, score files, compare."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from deramos_rt.scorer import Scorer  # noqa: E402
from tests.runtime.conftest import PROMPTS, write_clip, write_manifest  # noqa: E402

GATE = {"parity_files": 2, "parity_random": 2}
AUDIO = {"clip_seconds": 2.0, "hop": 1024}  # the runtime fixtures' short tiny audio encoder


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Three members over shared encoders, each member's own bundle, and their ensemble bundle (fp32)."""
    from export.build_engine import build_bundle
    from export.testing import write_member_runs
    from training.config import BackboneConfig

    root = tmp_path_factory.mktemp("scorer-ensemble")
    runs = write_member_runs(root / "runs", 3, audio=BackboneConfig("tiny", AUDIO))
    singles = [build_bundle(r, root / f"single-{i}", ("fp32",), **GATE) for i, r in enumerate(runs)]
    ensemble = build_bundle(root / "runs", root / "ensemble", ("fp32",), **GATE)
    return runs, singles, ensemble


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble-clips")
    long = write_clip(root / "long-S002_P009.wav", seconds=5.0, seed=9)  # 3 windows in windows mode
    clips = [(str(write_clip(root / f"c-S00{i % 2 + 1}_P{i:03d}.wav", seed=i)), PROMPTS[i % 3]) for i in range(5)]
    return clips + [(str(long), "a sad violin melody"), (clips[0][0], "")]


def _score(model, items, **options):
    with Scorer(model, backend="onnxruntime", precision="fp32", decode_workers=0, **options) as scorer:
        return scorer.score(items)


@pytest.mark.parametrize("long_audio", ["truncate", "windows"])
def test_ensemble_scores_are_the_mean_of_the_members_own_scores(members, items, long_audio):
    _, singles, ensemble = members
    got = _score(ensemble, items, long_audio=long_audio)
    alone = [_score(single, items, long_audio=long_audio) for single in singles]
    for i, clip in enumerate(got):
        mi = [member[i].mi for member in alone]
        assert clip.mi == pytest.approx(np.mean(mi), abs=1e-5)
        assert clip.mi_std == pytest.approx(np.std(mi), abs=1e-5) and clip.mi_std > 0
        probs = np.mean([member[i].mi_probs for member in alone], axis=0)
        assert np.abs(np.asarray(clip.mi_probs) - probs).max() < 1e-5
        if items[i][1]:
            ta = [member[i].ta for member in alone]
            assert clip.ta == pytest.approx(np.mean(ta), abs=1e-5)
            assert clip.ta_std == pytest.approx(np.std(ta), abs=1e-5)
        else:
            assert clip.ta is None and clip.ta_std is None and clip.error
    assert all(r.mi_std is None and r.ta_std is None for r in alone[0])  # one model: no spread


def test_a_clips_ensemble_score_does_not_depend_on_its_batch_mates(members, items):
    ensemble = members[2]
    together = _score(ensemble, items, batch_size=7)
    for i, item in enumerate(items):
        [alone] = _score(ensemble, [item], batch_size=1)
        assert alone.mi == pytest.approx(together[i].mi, abs=1e-5)
        assert (alone.ta is None) == (together[i].ta is None)
        if alone.ta is not None:
            assert alone.ta == pytest.approx(together[i].ta, abs=1e-5)


def _ensemble_of(runs, folder, tmp_path):
    from export.build_engine import build_bundle

    members = tmp_path / folder
    members.mkdir()
    for i, run in enumerate(runs):
        shutil.copytree(run, members / f"member-{i + 1}")
    return build_bundle(members, tmp_path / f"{folder}-bundle", ("fp32",), **GATE)


def test_identical_members_have_zero_spread_and_one_member_equals_the_single_model(members, items, tmp_path):
    runs, singles, _ = members
    twins = _score(_ensemble_of([runs[0], runs[0]], "twins", tmp_path), items)
    single = _score(singles[0], items)
    one = _score(_ensemble_of([runs[0]], "one", tmp_path), items)
    for a, b, c in zip(twins, single, one):
        # Zero but for float rounding: the graph computes the twin heads in one batched product, which may
        # sum them in different orders (measured: at most 4e-10).
        assert a.mi_std < 1e-6 and (a.ta is None or a.ta_std < 1e-6)
        assert a.mi == pytest.approx(b.mi, abs=1e-5) and c.mi == pytest.approx(b.mi, abs=1e-5)
        assert c.mi_std is None  # a one-member ensemble has no spread, like the single model


def test_score_files_carry_the_spread_and_compare_ranks_clips_by_it(members, items, tmp_path):
    from deramos_rt.cli import main
    from deramos_rt.scorefile import read_rows

    manifest = write_manifest(tmp_path / "m.csv", [i for i in items if i[1]])
    out = tmp_path / "scores.jsonl"
    code = main(["score", str(manifest), "--out", str(out), "--bundle", str(members[2]), "--backend", "onnxruntime",
                 "--probs", "--report", str(tmp_path / "report")])
    assert code == 0
    rows = list(read_rows(out))
    assert all(r["mi_std"] > 0 and r["ta_std"] >= 0 for r in rows) and len(rows[0]["mi_probs"]) == 20
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["uncertainty"] == "spread"
    uncertain = [r for entry in results["listen"].values() for r in entry["uncertain"]]
    assert uncertain and all(r["mi_spread"] is not None for r in uncertain)
    by_system = {}
    for r in rows:
        by_system.setdefault(r["system"], []).append((r["mi_std"] + r["ta_std"]) / 2)
    for system, entry in results["listen"].items():
        top = entry["uncertain"][0]
        assert (top["mi_spread"] + top["ta_spread"]) / 2 == pytest.approx(max(by_system[system]))
    assert "ensemble members disagree most" in (tmp_path / "report" / "report.html").read_text()
