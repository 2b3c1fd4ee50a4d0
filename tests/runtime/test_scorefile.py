"""Score files: atomic output, torn-line resume, refusals, summary."""

from __future__ import annotations

import json

import pytest

from deramos_rt import scorefile
from deramos_rt.errors import DeramosError
from deramos_rt.scorer import ClipScore

PROVENANCE = {"backend": "torch", "precision": "fp32", "bundle": "0123456789abcdef", "deramos_rt": "0.1.0"}


def _score(i: int, error: str | None = None) -> ClipScore:
    if error:
        return ClipScore(f"c{i}", f"c{i}.wav", "S001", "a, \"quoted\"\nprompt", error=error)
    return ClipScore(f"c{i}", f"c{i}.wav", "S001" if i % 2 else "S002", "a, \"quoted\"\nprompt", 1.0 + i / 10,
                     2.0 + i / 10, [0.5, 0.5], [0.25, 0.75])


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_writer_round_trip_partial_then_atomic_final(tmp_path, suffix):
    out = tmp_path / f"scores{suffix}"
    writer = scorefile.ScoreWriter(out, PROVENANCE, probs=True)
    for i in range(3):
        writer.write(_score(i))
    writer.write(_score(3, error="audio file not found: c3.wav"))
    writer.flush()
    assert scorefile.partial_path(out).exists() and not out.exists()
    writer.finish()
    rows = list(scorefile.read_rows(out))
    assert [r["id"] for r in rows] == ["c0", "c1", "c2", "c3"]
    assert rows[1]["prompt"] == "a, \"quoted\"\nprompt" and float(rows[1]["mi"]) == 1.1
    assert rows[3]["mi"] in ("", None) and rows[3]["error"].startswith("audio file")
    probs = rows[0]["mi_probs"] if suffix == ".jsonl" else json.loads(rows[0]["mi_probs"])
    assert probs == [0.5, 0.5] and rows[0]["bundle"] == PROVENANCE["bundle"]
    summary = list(scorefile.read_rows(scorefile.summarize(out)))
    assert {r["system"]: int(r["clips"]) for r in summary} == {"S002": 2, "S001": 2}
    assert all(r["bundle"] == PROVENANCE["bundle"] for r in summary)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_drops_a_torn_last_line_and_skips_finished_ids(tmp_path, suffix):
    out = tmp_path / f"scores{suffix}"
    writer = scorefile.ScoreWriter(out, PROVENANCE)
    for i in range(3):
        writer.write(_score(i))
    writer.abort()
    partial = scorefile.partial_path(out)
    partial.write_bytes(partial.read_bytes()[:-7])  # a kill in the middle of the last record
    resumed = scorefile.ScoreWriter(out, PROVENANCE, resume=True)
    assert resumed.done == {"c0", "c1"}
    resumed.write(_score(2))
    resumed.finish()
    assert [r["id"] for r in scorefile.read_rows(out)] == ["c0", "c1", "c2"]
    again = scorefile.ScoreWriter(out, PROVENANCE, resume=True)  # a finished file resumes too
    assert again.done == {"c0", "c1", "c2"}
    again.finish()


def test_existing_output_needs_resume_or_overwrite_and_same_model(tmp_path):
    out = tmp_path / "scores.csv"
    writer = scorefile.ScoreWriter(out, PROVENANCE)
    writer.write(_score(0))
    writer.finish()
    with pytest.raises(DeramosError, match="--resume"):
        scorefile.ScoreWriter(out, PROVENANCE)
    with pytest.raises(DeramosError, match="scored with model"):
        scorefile.ScoreWriter(out, {**PROVENANCE, "bundle": "ffffffffffffffff"}, resume=True)
    with pytest.raises(DeramosError, match="columns"):
        scorefile.ScoreWriter(out, PROVENANCE, probs=True, resume=True)
    fresh = scorefile.ScoreWriter(out, PROVENANCE, overwrite=True)
    assert fresh.done == set()
    fresh.finish()
    assert list(scorefile.read_rows(out)) == []


def test_output_extension_is_checked():
    with pytest.raises(DeramosError, match="must be .csv or .jsonl"):
        scorefile.ScoreWriter("scores.parquet", PROVENANCE)
