"""deramos_rt.compare_report and the compare CLI: files, embedded plots, relative audio links, a real browser."""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
from urllib.parse import unquote

import numpy as np
import pytest
import soundfile

from deramos_rt import compare as compare_module
from deramos_rt.cli import add_compare_arguments, run_compare
from deramos_rt.compare_report import write_report
from deramos_rt.errors import DeramosError
from tests.runtime.test_compare import _invalid_rows_file

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A score file with audio, a failed system and labels; the CLI writes the report next to it."""
    root = tmp_path_factory.mktemp("cmp")
    (root / "clips" / "wav").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for system, mu in (("S001", 3.0), ("S002", 3.6), ("S003", 3.3)):
        for p in range(8):
            clip_id = f"audiomos2025-track1-{system}_P{p:03d}"
            wav = root / "clips" / "wav" / f"{clip_id}.wav"
            soundfile.write(wav, np.zeros(1600, dtype=np.float32), 16000)
            probs = rng.dirichlet(np.ones(20)).round(6).tolist()
            mi = float(mu + rng.normal(0, 0.3))
            rows.append({"id": clip_id, "path": f"clips/wav/{clip_id}.wav", "system": system,
                         "prompt": f"a <b>tune</b> {p}", "mi": mi, "ta": mi - 0.2, "error": "",
                         "mi_probs": probs, "ta_probs": probs})
            labels.append(f"{clip_id}.wav,{mi + rng.normal(0, 0.2):.1f},{mi:.1f}")
    rows.append({"id": "audiomos2025-track1-S004_P000", "path": "", "system": "S004", "prompt": "x",
                 "mi": None, "ta": None, "error": "decode failed"})
    scores = root / "scores.jsonl"
    scores.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "mos.txt").write_text("\n".join(labels) + "\n")
    parser = argparse.ArgumentParser()
    add_compare_arguments(parser)
    out = root / "report"
    args = parser.parse_args([str(scores), "--out", str(out), "--labels", str(root / "mos.txt"),
                              "--resamples", "200"])
    assert run_compare(args) == 0
    return out


def test_writes_three_files_without_nan(report):
    results = json.loads((report / "results.json").read_text())
    assert set(results["systems"]) == {"S001", "S002", "S003", "S004"}
    assert "NaN" not in (report / "results.json").read_text()
    markdown = (report / "report.md").read_text()
    assert "| S004 | 1 | 1 |" in markdown and "## MI: pairs" in markdown


def test_plots_are_embedded_pngs(report):
    text = (report / "report.html").read_text()
    sources = re.findall(r'<img alt="[^"]*" src="([^"]+)"', text)
    assert len(sources) == 6  # systems, plane, 2 pair matrices, ranks, labels; nothing external
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG
    assert "<b>tune</b>" not in text  # prompts are escaped


def test_audio_links_are_relative_and_resolve(report):
    text = (report / "report.html").read_text()
    links = re.findall(r'<audio controls preload="none" src="([^"]+)"', text)
    assert links
    for link in links:
        assert not os.path.isabs(unquote(link)) and link.startswith("../clips/wav/")
        assert (report / unquote(link)).resolve().is_file()


def test_invalid_rows_are_counted_in_both_tables_and_said(tmp_path):
    results = compare_module.compare(_invalid_rows_file(tmp_path), resamples=200)
    write_report(results, tmp_path / "r")
    markdown, page = (tmp_path / "r" / "report.md").read_text(), (tmp_path / "r" / "report.html").read_text()
    assert "| system | clips | failed | invalid |" in markdown
    assert "| S001 | 6 | 0 | 0 |" in markdown and "| S002 | 6 | 1 | 4 |" in markdown
    assert "<th>invalid</th>" in page and "<td>S002</td><td>6</td><td>1</td><td>4</td>" in page
    for text in (markdown, page):
        assert "MI: 3 row(s) have an invalid score" in text and "outside [1, 5]" in text
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert saved["systems"]["S002"]["invalid"] == 4 and saved["systems"]["S002"]["mi"]["invalid"] == 3


def test_musiceval_arguments_are_checked(tmp_path):
    parser = argparse.ArgumentParser()
    add_compare_arguments(parser)
    args = parser.parse_args(["x.csv", "--out", str(tmp_path), "--split", "test"])
    with pytest.raises(DeramosError, match="--musiceval DIR and --split"):
        run_compare(args)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (apt-get install -y chromium)")
def test_headless_browser_renders_every_image(report, tmp_path):
    common = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--no-first-run", "--disable-component-update", "--disable-sync", "--enable-logging=stderr",
              "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000"]
    url = (report / "report.html").as_uri()
    shot = tmp_path / "shot.png"
    done = subprocess.run(common + [f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert shot.read_bytes()[:8] == PNG, done.stderr[-2000:]
    assert not re.search(r"Uncaught|ERR_FILE_NOT_FOUND|Failed to load resource", done.stderr), done.stderr[-2000:]
    dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    images = re.findall(r'<img[^>]*src="([^"]*)"', dom)
    assert len(images) == 6 and all(src.startswith("data:image/png;base64,") for src in images)
