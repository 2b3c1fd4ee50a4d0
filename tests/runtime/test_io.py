"""Manifests and score files: checks before work, defaults, atomic output, torn-line resume."""

from __future__ import annotations

import json

import pytest

from deramos_rt import io
from deramos_rt.errors import DeramosError
from deramos_rt.scorer import ClipScore

PROVENANCE = {"backend": "torch", "precision": "fp32", "bundle": "0123456789abcdef", "deramos_rt": "0.1.0"}


def test_csv_manifest_defaults_and_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    manifest = tmp_path / "sub" / "m.csv"
    manifest.write_text("path,prompt,id,system\nwav/x-S007_P001.wav,calm,,\n/abs/y.flac,fast,myid,sysA\n", encoding="utf-8")
    first, second = io.iter_manifest(manifest)
    assert (first.id, first.system, first.path) == ("x-S007_P001", "S007", str(tmp_path / "sub" / "wav" / "x-S007_P001.wav"))
    assert (second.id, second.system, second.path, second.prompt) == ("myid", "sysA", "/abs/y.flac", "fast")
    assert io.check_manifest(manifest) == 2


def test_jsonl_manifest_and_unicode(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": "ünï.wav", "prompt": "音楽"}, ensure_ascii=False) + "\n\n", encoding="utf-8")
    [request] = io.iter_manifest(manifest)
    assert request.id == "ünï" and request.prompt == "音楽" and request.system == ""


@pytest.mark.parametrize("name,text,match", [
    ("m.csv", "path,text\na.wav,x\n", "required column 'prompt'"),
    ("m.csv", "prompt\nx\n", "required column 'path'"),
    ("m.jsonl", '{"path": "a.wav", "prompt": "x"}\n{"path": "b.wav"}\n', "line 2 lacks the required field 'prompt'"),
    ("m.jsonl", '{"path": "a.wav", "prompt": "x"}\n{not json\n', "line 2 is not valid JSON"),
    ("m.txt", "path,prompt\n", "must be .csv or .jsonl"),
    ("m.csv", "path,prompt\na.wav,x\na.wav,y\n", "listed twice"),
    ("m.csv", "path,prompt\n,x\n", "line 2: empty"),
    ("m.csv", "path,prompt\n", "lists no clips"),
])
def test_bad_manifests_are_refused_naming_the_column_or_line(tmp_path, name, text, match):
    manifest = tmp_path / name
    manifest.write_text(text)
    with pytest.raises(DeramosError, match=match):
        io.check_manifest(manifest)


def _score(i: int, error: str | None = None) -> ClipScore:
    if error:
        return ClipScore(f"c{i}", f"c{i}.wav", "S001", "a, \"quoted\"\nprompt", error=error)
    return ClipScore(f"c{i}", f"c{i}.wav", "S001" if i % 2 else "S002", "a, \"quoted\"\nprompt", 1.0 + i / 10,
                     2.0 + i / 10, [0.5, 0.5], [0.25, 0.75])


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_writer_round_trip_partial_then_atomic_final(tmp_path, suffix):
    out = tmp_path / f"scores{suffix}"
    writer = io.ScoreWriter(out, PROVENANCE, probs=True)
    for i in range(3):
        writer.write(_score(i))
    writer.write(_score(3, error="audio file not found: c3.wav"))
    writer.flush()
    assert io.partial_path(out).exists() and not out.exists()
    writer.finish()
    rows = list(io.read_rows(out))
    assert [r["id"] for r in rows] == ["c0", "c1", "c2", "c3"]
    assert rows[1]["prompt"] == "a, \"quoted\"\nprompt" and float(rows[1]["mi"]) == 1.1
    assert rows[3]["mi"] in ("", None) and rows[3]["error"].startswith("audio file")
    probs = rows[0]["mi_probs"] if suffix == ".jsonl" else json.loads(rows[0]["mi_probs"])
    assert probs == [0.5, 0.5] and rows[0]["bundle"] == PROVENANCE["bundle"]
    summary = list(io.read_rows(io.summarize(out)))
    assert {r["system"]: int(r["clips"]) for r in summary} == {"S002": 2, "S001": 2}
    assert all(r["bundle"] == PROVENANCE["bundle"] for r in summary)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_drops_a_torn_last_line_and_skips_finished_ids(tmp_path, suffix):
    out = tmp_path / f"scores{suffix}"
    writer = io.ScoreWriter(out, PROVENANCE)
    for i in range(3):
        writer.write(_score(i))
    writer.abort()
    partial = io.partial_path(out)
    partial.write_bytes(partial.read_bytes()[:-7])  # a kill in the middle of the last record
    resumed = io.ScoreWriter(out, PROVENANCE, resume=True)
    assert resumed.done == {"c0", "c1"}
    resumed.write(_score(2))
    resumed.finish()
    assert [r["id"] for r in io.read_rows(out)] == ["c0", "c1", "c2"]
    again = io.ScoreWriter(out, PROVENANCE, resume=True)  # a finished file resumes too
    assert again.done == {"c0", "c1", "c2"}
    again.finish()


def test_existing_output_needs_resume_or_overwrite_and_same_model(tmp_path):
    out = tmp_path / "scores.csv"
    writer = io.ScoreWriter(out, PROVENANCE)
    writer.write(_score(0))
    writer.finish()
    with pytest.raises(DeramosError, match="--resume"):
        io.ScoreWriter(out, PROVENANCE)
    with pytest.raises(DeramosError, match="scored with model"):
        io.ScoreWriter(out, {**PROVENANCE, "bundle": "ffffffffffffffff"}, resume=True)
    with pytest.raises(DeramosError, match="columns"):
        io.ScoreWriter(out, PROVENANCE, probs=True, resume=True)
    fresh = io.ScoreWriter(out, PROVENANCE, overwrite=True)
    assert fresh.done == set()
    fresh.finish()
    assert list(io.read_rows(out)) == []


def test_output_extension_is_checked():
    with pytest.raises(DeramosError, match="must be .csv or .jsonl"):
        io.ScoreWriter("scores.parquet", PROVENANCE)
