"""Manifests: checks before work, defaults, relative paths."""

from __future__ import annotations

import json

import pytest

from deramos_rt.manifest import check_manifest, iter_manifest
from deramos_rt.errors import DeramosError


def test_csv_manifest_defaults_and_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    manifest = tmp_path / "sub" / "m.csv"
    manifest.write_text("path,prompt,id,system\nwav/x-S007_P001.wav,calm,,\n/abs/y.flac,fast,myid,sysA\n", encoding="utf-8")
    first, second = iter_manifest(manifest)
    assert (first.id, first.system, first.path) == ("x-S007_P001", "S007", str(tmp_path / "sub" / "wav" / "x-S007_P001.wav"))
    assert (second.id, second.system, second.path, second.prompt) == ("myid", "sysA", "/abs/y.flac", "fast")
    assert check_manifest(manifest) == 2


def test_jsonl_manifest_and_unicode(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": "ünï.wav", "prompt": "音楽"}, ensure_ascii=False) + "\n\n", encoding="utf-8")
    [request] = iter_manifest(manifest)
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
        check_manifest(manifest)
