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
    # The default id is the path relative to the manifest's folder without extension (issue 23; was the stem).
    assert (first.id, first.system, first.path) == ("wav/x-S007_P001", "S007", str(tmp_path / "sub" / "wav" / "x-S007_P001.wav"))
    assert (second.id, second.system, second.path, second.prompt) == ("myid", "sysA", "/abs/y.flac", "fast")
    assert check_manifest(manifest) == 2


def test_jsonl_manifest_and_unicode(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": "ünï.wav", "prompt": "音楽"}, ensure_ascii=False) + "\n\n", encoding="utf-8")
    [request] = iter_manifest(manifest)
    assert request.id == "ünï" and request.prompt == "音楽" and request.system == ""


def test_one_folder_per_system_with_the_same_file_names_needs_no_id_column(tmp_path):
    manifest = tmp_path / "m.csv"
    lines = [f"outputs/{system}/p00{i}.wav,prompt {i}" for system in ("musicgen", "audioldm") for i in (1, 2)]
    manifest.write_text("path,prompt\n" + "\n".join(lines) + "\n", encoding="utf-8")
    assert check_manifest(manifest) == 4
    requests = list(iter_manifest(manifest))
    assert [r.id for r in requests] == ["outputs/musicgen/p001", "outputs/musicgen/p002", "outputs/audioldm/p001",
                                        "outputs/audioldm/p002"]
    # No S### in the names: the system is the first folder under the manifest's folder.
    assert {r.system for r in requests} == {"outputs"}
    tree = tmp_path / "outputs" / "m.csv"
    tree.parent.mkdir()
    tree.write_text("path,prompt\n" + "\n".join(line.removeprefix("outputs/") for line in lines) + "\n")
    assert [r.system for r in iter_manifest(tree)] == ["musicgen", "musicgen", "audioldm", "audioldm"]


def test_default_system_prefers_the_names_s_part_and_explicit_columns_win(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,prompt,id,system\n"
                        "modelA/track-S002_P001.flac,x,,\n"   # S### of the name beats the folder
                        "modelA/P002.wav,x,,\n"               # else the folder
                        "top.wav,x,,\n"                       # else empty
                        "modelA/P003.wav,x,chosen,mine\n"     # explicit id and system win
                        f"{tmp_path}/modelB/P004.wav,x,,\n"   # absolute inside the folder: relative id
                        "/elsewhere/S009/P005.wav,x,,\n"      # outside: whole path, S### of the path
                        "../gen/P006.ogg,x,,\n", encoding="utf-8")
    got = [(r.id, r.system) for r in iter_manifest(manifest)]
    assert got == [("modelA/track-S002_P001", "S002"), ("modelA/P002", "modelA"), ("top", ""), ("chosen", "mine"),
                   ("modelB/P004", "modelB"), ("/elsewhere/S009/P005", "S009"), ("../gen/P006", "")]


def test_two_spellings_of_one_file_and_duplicate_explicit_ids_are_refused(tmp_path):
    same = tmp_path / "same.csv"
    same.write_text("path,prompt\nS001/a.wav,x\nS001/../S001/a.wav,y\n")
    with pytest.raises(DeramosError, match=r"id 'S001/a' is listed twice \(clips #1 and #2\)"):
        check_manifest(same)
    explicit = tmp_path / "explicit.csv"
    explicit.write_text("path,prompt,id\nS001/a.wav,x,clip\nS002/a.wav,y,clip\n")
    with pytest.raises(DeramosError, match="id 'clip' is listed twice"):
        check_manifest(explicit)


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
