"""The demo corpus: exact MusicEval layout, real rendered music, labels that follow the documented model."""

import numpy as np
import pytest
import soundfile as sf

from deramos_rt.errors import DeramosError
from training import democorpus
from training.data import read_splits


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    try:
        democorpus.find_soundfont()
        import fluidsynth  # noqa: F401
    except (DeramosError, ImportError, OSError) as exc:
        pytest.skip(f"fluidsynth or a GM soundfont is missing: {exc}")
    return democorpus.make_demo_corpus(tmp_path_factory.mktemp("demo") / "c", clips=36, seed=3, clip_seconds=2.0,
                                       workers=1)


def test_layout_is_musiceval(corpus):
    splits = read_splits(corpus)
    clips = [c for s in splits.values() for c in s]
    assert len(clips) == 36 and all(len(s) > 0 for s in splits.values())
    assert len({c.wav_id for c in clips}) == 36
    assert {c.system_id for c in clips} == {f"S{i:03d}" for i in range(1, 13)}
    header = (corpus / "prompt_info.txt").read_text().splitlines()[0]
    assert header == "id\ttext"
    for line in (corpus / "sets" / "train_mos_list.txt").read_text().splitlines():
        wav, mi, ta = line.split(",")
        assert wav.endswith(".wav") and (corpus / "wav" / wav).is_file()
    for c in clips:
        assert 1 <= c.mi <= 5 and abs(c.mi / 0.2 - round(c.mi / 0.2)) < 1e-9
        info = sf.info(str(c.path))
        assert info.samplerate == 16000 and info.channels == 1 and abs(info.duration - 2.0) < 1e-3


def test_deterministic_for_a_seed(corpus, tmp_path):
    again = democorpus.make_demo_corpus(tmp_path / "again", clips=36, seed=3, clip_seconds=2.0, workers=2)
    for rel in ("sets/train_mos_list.txt", "prompt_info.txt", "wav/audiomos2025-track1-S004_P002.wav"):
        assert (again / rel).read_bytes() == (corpus / rel).read_bytes()
    other = democorpus.make_demo_corpus(tmp_path / "other", clips=12, seed=4, clip_seconds=2.0, workers=1)
    assert (other / "prompt_info.txt").read_text() != (corpus / "prompt_info.txt").read_text()


def test_clean_system_renders_real_music(corpus):
    x, sr = sf.read(corpus / "wav" / "audiomos2025-track1-S001_P001.wav")
    rms = np.sqrt(np.mean(x**2))
    assert 0.02 < rms < 0.5
    # Music has notes: several distinct spectral peaks and changing energy over time.
    frames = x[: sr * 2].reshape(-1, 800)
    assert np.std(np.sqrt((frames**2).mean(1))) > 1e-3
    spectrum = np.abs(np.fft.rfft(x))
    assert (spectrum > spectrum.max() * 0.1).sum() > 5


def test_prompts_name_the_instrument_and_mode():
    rng = np.random.default_rng(0)
    spec = {"style": "Baroque chorale", "instrument": "organ", "tempo": "slow", "bpm": 66.0}
    for _ in range(5):
        text = democorpus.prompt_text(spec, "minor", "d minor", rng)
        assert "church organ" in text.lower() and "minor" in text and "slow" in text.lower()


def test_label_model_orders_defects():
    clean = democorpus.latent_scores({}, (False, False, False), None, 10, 10)
    noisy = democorpus.latent_scores({"noise": 0.8}, (False, False, False), None, 10, 10)
    wrong = democorpus.latent_scores({}, (True, True, False), None, 10, 10)
    silent = democorpus.latent_scores({}, (False, False, False), "silence", 0, 10)
    assert clean[0] > noisy[0] and clean[1] > noisy[1]
    assert wrong[0] == clean[0] and wrong[1] < clean[1] - 2
    assert silent == (1.0, 1.0)


def test_systems_differ_in_the_generated_labels(corpus):
    clips = [c for s in read_splits(corpus, check_audio=False).values() for c in s]
    mean_mi = {s: np.mean([c.mi for c in clips if c.system_id == s]) for s in ("S001", "S009")}
    assert mean_mi["S001"] > mean_mi["S009"] + 1.0


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(DeramosError, match="clips >= 12"):
        democorpus.make_demo_corpus(tmp_path, clips=3)


def test_out_with_a_corpus_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "c"
    (out / "wav").mkdir(parents=True)
    (out / "wav" / "old.wav").write_bytes(b"x")
    (out / "notes.txt").write_text("mine")
    assert democorpus.main(["--out", str(out), "--clips", "12"]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "wav" / "old.wav").exists()
    democorpus.clear_out(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # only the corpus parts are removed
