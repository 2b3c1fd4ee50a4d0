"""Folders as users keep them: every audio file, systems from folders, prompts from CSV / TSV / JSONL tables."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf

from deramos_rt import scorefile
from deramos_rt.cli import main
from deramos_rt.errors import DeramosError
from deramos_rt.folder import audio_extensions, list_folder, prompt_for, read_prompts
from deramos_rt.scorer import EMPTY_PROMPT
from tests.runtime.conftest import write_clip


def _tree(root, systems=("musicgen", "audioldm"), names=("p001", "p002")):
    """``root/<system>/<name>.wav``: the same file names in every system's folder."""
    for s, system in enumerate(systems):
        (root / system).mkdir(parents=True)
        for n, name in enumerate(names):
            write_clip(root / system / f"{name}.wav", seconds=1.0, seed=s * 10 + n)
    return root


def _cli(folder, out, bundle, *extra):
    return main(["score", str(folder), "--out", str(out), "--bundle", str(bundle), "--backend", "onnxruntime",
                 "--workers", "1", *extra])


def test_every_audio_file_recursively_sorted_with_its_folder_as_system(tmp_path, caplog):
    root = _tree(tmp_path / "outputs")
    (root / "musicgen" / "deep").mkdir()
    write_clip(root / "musicgen" / "deep" / "p003.flac", seconds=1.0)
    write_clip(root / "audiomos-S004_P009.wav", seconds=1.0)  # directly in the folder: S### of its name
    (root / "README.txt").write_text("how these were made")
    (root / "audioldm" / "cover.png").write_bytes(b"\x89PNG")
    os.symlink(root / "musicgen", root / "linked")
    with caplog.at_level(logging.INFO, logger="deramos_rt.folder"):
        listing = list_folder(root)
    requests = list(listing.requests())
    assert [r.id for r in requests] == ["audioldm/p001", "audioldm/p002", "audiomos-S004_P009", "musicgen/deep/p003",
                                        "musicgen/p001", "musicgen/p002"]
    assert [r.system for r in requests] == ["audioldm", "audioldm", "S004", "musicgen", "musicgen", "musicgen"]
    assert all(r.prompt == "" for r in requests) and requests[3].path == str(root / "musicgen" / "deep" / "p003.flac")
    assert listing.skipped == ["README.txt", "audioldm/cover.png", "linked/ (link to a folder, not followed)"]
    [skipped] = [r.getMessage() for r in caplog.records if "not scored" in r.getMessage()]
    assert "3 entries not scored" in skipped and "README.txt" in skipped and "linked/" in skipped


def test_every_format_the_decoder_reads_is_taken(tmp_path):
    signal = (0.2 * np.sin(np.arange(8000) / 5.0)).astype(np.float32)
    written = {"a.wav": "WAV", "b.flac": "FLAC", "c.ogg": "OGG", "d.mp3": "MP3", "e.aiff": "AIFF", "f.au": "AU",
               "g.caf": "CAF", "h.w64": "W64"}
    for name, kind in written.items():
        sf.write(tmp_path / name, signal, 16000, format=kind)
    listing = list_folder(tmp_path)
    assert [i for i, _ in listing.files] == [n.split(".")[0] for n in sorted(written)] and listing.skipped == []
    extensions = audio_extensions()
    assert {".wav", ".flac", ".ogg", ".mp3", ".aif", ".opus"} <= extensions
    assert not {".mat", ".raw", ".mpc", ".txt"} & extensions  # left out on purpose, listed as skipped
    assert all(sf.info(str(tmp_path / name)).frames > 0 for name in written)


def test_two_files_that_differ_only_by_extension_are_refused_naming_both(tmp_path):
    write_clip(tmp_path / "a.wav", seconds=0.5)
    write_clip(tmp_path / "a.flac", seconds=0.5)
    with pytest.raises(DeramosError, match=r"a\.flac and a\.wav would both have the id 'a'"):
        list_folder(tmp_path)


def test_a_folder_without_audio_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DeramosError, match="holds no audio files"):
        list_folder(tmp_path)
    with pytest.raises(DeramosError, match="folder not found"):
        list_folder(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------ prompt tables


@pytest.mark.parametrize("name,text", [
    ("prompts.csv", "id,prompt\np001,calm piano\np002.wav,\"fast, loud drums\"\n"),
    ("musiccaps.csv", "ytid,start_s,end_s,aspect_list,caption\np001,0,10,\"['a', 'b']\",calm piano\n"
                      "p002,0,10,[],\"fast, loud drums\"\n"),
    ("prompt_info.txt", "p001\tcalm piano\np002\tfast, loud drums\n"),  # MusicEval, no header
    ("with_header.tsv", "id\ttext\np001\tcalm piano\np002\tfast, loud drums\n"),
    ("prompts.jsonl", '{"id": "p001", "prompt": "calm piano"}\n\n{"ytid": "p002", "caption": "fast, loud drums"}\n'),
])
def test_prompt_tables_in_every_shape(tmp_path, name, text):
    (tmp_path / name).write_text(text, encoding="utf-8")
    assert read_prompts(tmp_path / name) == {"p001": "calm piano", "p002": "fast, loud drums"}


def test_prompts_by_id_then_stem_then_musicevals_prompt_id():
    table = {"S001/p001": "own", "p001": "shared", "P044": "musiceval", "blank": " "}
    assert prompt_for(table, "S001/p001") == "own"
    assert prompt_for(table, "S002/p001") == "shared"
    assert prompt_for(table, "audiomos2025-track1-S002_P044") == "musiceval"
    assert prompt_for(table, "S001/blank") is None and prompt_for(table, "S001/p009") is None


def test_a_prompt_longer_than_the_csv_cell_limit_is_read(tmp_path):
    long = "a slow piano piece " * 8000  # 152,000 characters: over csv's default 131,072
    with (tmp_path / "prompts.csv").open("w", newline="", encoding="utf-8") as f:
        f.write("id,prompt\n")
        f.write(f'p001,"{long}"\n')
    assert read_prompts(tmp_path / "prompts.csv") == {"p001": long.strip()}


@pytest.mark.parametrize("name,text,match", [
    ("p.csv", "p001,calm piano\n", "needs a header with an id column"),
    ("p.csv", "id,prompt\np001,calm\np001,loud\n", "line 3: id 'p001' is listed twice with different prompts"),
    ("p.jsonl", '{"id": "p001"}\n', "line 1: needs a text id"),
    ("p.tsv", "p001 calm piano\n", "line 1: expected 'id<TAB>text'"),  # a space is not a tab
    ("p.txt", "p001\tcalm\np002\n", "line 2: expected 'id<TAB>text'"),
    ("p.xlsx", "", "must be .csv, .tsv or .txt"),
    ("p.csv", "id,prompt\n", "lists no prompts"),
])
def test_bad_prompt_tables_are_refused_naming_the_line(tmp_path, name, text, match):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(DeramosError, match=match):
        read_prompts(tmp_path / name)


# -------------------------------------------------------------------------------------------------- jobs


def test_score_folder_with_prompts_lists_files_without_one_and_scores_them_for_mi(tiny_bundle, tmp_path, capsys):
    root = _tree(tmp_path / "outputs", names=("p001", "p002", "p003"))
    table = tmp_path / "prompts.csv"
    table.write_text("id,prompt\np001,calm piano\np002,fast drums\n")
    out = tmp_path / "scores.csv"
    assert _cli(root, out, tiny_bundle, "--prompts", str(table)) == 3  # two clips lack TA
    err = capsys.readouterr().err
    assert "2 of 6 files have no prompt" in err and "audioldm/p003, musicgen/p003" in err
    rows = {r["id"]: r for r in scorefile.read_rows(out)}
    assert set(rows) == {f"{s}/p00{i}" for s in ("musicgen", "audioldm") for i in (1, 2, 3)}
    assert rows["musicgen/p001"]["prompt"] == "calm piano" and rows["musicgen/p001"]["ta"]
    for clip_id in ("musicgen/p003", "audioldm/p003"):
        assert rows[clip_id]["mi"] and not rows[clip_id]["ta"] and rows[clip_id]["error"] == EMPTY_PROMPT
    summary = {r["system"]: r for r in scorefile.read_rows(scorefile.summary_path(out))}
    assert {s: int(r["clips"]) for s, r in summary.items()} == {"audioldm": 3, "musicgen": 3}


def test_score_folder_without_prompts_is_mi_only_on_purpose(tiny_bundle, tmp_path, capsys):
    root = _tree(tmp_path / "outputs")
    out = tmp_path / "scores.jsonl"
    assert _cli(root, out, tiny_bundle) == 0
    printed = capsys.readouterr()
    assert "MI only on purpose" in printed.err and "OK deramos-rt" in printed.err and "PARTIAL" not in printed.err
    rows = list(scorefile.read_rows(out))
    assert len(rows) == 4 and all(r["mi"] is not None and r["ta"] is None and r["error"] is None for r in rows)
    summary = list(scorefile.read_rows(scorefile.summary_path(out)))
    assert all(r["failed"] == 0 and r["ta_n"] == 0 and r["mi_n"] == 2 for r in summary)
    assert _cli(root, out, tiny_bundle, "--resume") == 0  # a resumed MI-only job is not a failure either


def test_a_fifo_with_an_audio_name_in_a_folder_is_a_clip_error(tiny_bundle, tmp_path):
    root = _tree(tmp_path / "outputs", systems=("S001",), names=("p001",))
    os.mkfifo(root / "S001" / "p002.wav")
    out = tmp_path / "scores.csv"
    assert _cli(root, out, tiny_bundle) == 3
    errors = {r["id"]: r["error"] for r in scorefile.read_rows(out)}
    assert errors == {"S001/p001": "", "S001/p002": f"not a regular file: FIFO {root / 'S001' / 'p002.wav'}"}


def test_prompts_without_a_folder_and_folders_on_ray_are_refused(tiny_bundle, tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,prompt\na.wav,x\n")
    assert _cli(manifest, tmp_path / "s.csv", tiny_bundle, "--prompts", str(manifest)) == 2
    assert "goes with a FOLDER" in capsys.readouterr().err
    root = _tree(tmp_path / "outputs", systems=("S001",), names=("p001",))
    assert main(["score", str(root), "--out", str(tmp_path / "ray"), "--ray"]) == 2
    assert "folders are not supported with --ray" in capsys.readouterr().err


def test_score_folder_from_python(torch_scorer, tmp_path):
    from deramos_rt.jobs import score_folder

    root = _tree(tmp_path / "outputs")
    table = tmp_path / "prompts.jsonl"
    table.write_text("".join(json.dumps({"id": f"p00{i}", "prompt": f"piece {i}"}) + "\n" for i in (1, 2)))
    report = score_folder(torch_scorer, root, tmp_path / "scores.csv", prompts=table)
    assert (report.scored, report.failed, report.exit_code) == (4, 0, 0)
