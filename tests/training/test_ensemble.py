"""Ensembles on the training side: members trained over one encoder pass, the ensemble parts, the refusals."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from deramos_rt.errors import DeramosError
from training import evaluate, train
from training.model import DeraMos

FAST = ["--recipe", "tiny", "--epochs", "3", "--patience", "5"]
SEEDS = [1984, 1990]


def _train(corpus, out, cache, *extra):
    return train.main(["--data", str(corpus), "--out", str(out), "--cache-dir", str(cache), *FAST, *extra])


@pytest.fixture(scope="module")
def members(fixture_corpus, tmp_path_factory):
    """Two members trained with --seeds, the number of clips the audio encoder saw, and their cache."""
    root = tmp_path_factory.mktemp("members")
    seen = []
    original = DeraMos.encode_audio

    def counting(self, waveform):
        seen.append(len(waveform))
        return original(self, waveform)

    DeraMos.encode_audio = counting
    try:
        assert _train(fixture_corpus, root / "ens", root / "cache", "--seeds", ",".join(map(str, SEEDS))) == 0
    finally:
        DeraMos.encode_audio = original
    return root / "ens", sum(seen), root / "cache"


def test_members_are_ordinary_runs_over_one_encoder_pass(fixture_corpus, members):
    ens, encoded, _ = members
    assert sorted(p.name for p in ens.iterdir()) == [f"seed-{s}" for s in SEEDS]
    assert encoded == 48 + 16 + 16  # every clip once, for both members together
    states = []
    for seed in SEEDS:
        run = ens / f"seed-{seed}"
        assert json.loads((run / "config.json").read_text())["train"]["seed"] == seed
        assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 3
        states.append(load_file(str(run / "model.safetensors")))
    encoders = [k for k in states[0] if not k.startswith("heads.")]
    assert encoders and all(torch.equal(states[0][k], states[1][k]) for k in encoders)  # shared by construction
    assert not torch.equal(states[0]["heads.mi_mlp.0.weight"], states[1]["heads.mi_mlp.0.weight"])


def test_a_member_is_the_single_run_of_its_seed(fixture_corpus, members, tmp_path):
    ens, _, cache = members
    assert _train(fixture_corpus, tmp_path / "single", cache, "--seed", "1984") == 0
    single, member = load_file(str(tmp_path / "single" / "model.safetensors")), load_file(
        str(ens / "seed-1984" / "model.safetensors"))
    assert single.keys() == member.keys() and all(torch.equal(single[k], member[k]) for k in single)


def test_an_interrupted_member_resumes_and_finished_members_are_kept(fixture_corpus, members, tmp_path, monkeypatch):
    ens, _, cache = members
    original = train.Trainer.train_epoch

    def crash_in_second_member(self, clips, epoch):
        if self.cfg.train.seed == SEEDS[1] and epoch == 2:
            raise KeyboardInterrupt
        return original(self, clips, epoch)

    monkeypatch.setattr(train.Trainer, "train_epoch", crash_in_second_member)
    seeds = ["--seeds", ",".join(map(str, SEEDS))]
    assert _train(fixture_corpus, tmp_path / "ens", cache, *seeds) == 130
    assert (tmp_path / "ens" / "seed-1984" / "model.safetensors").is_file()
    assert not (tmp_path / "ens" / "seed-1990" / "model.safetensors").exists()
    monkeypatch.setattr(train.Trainer, "train_epoch", original)
    assert _train(fixture_corpus, tmp_path / "ens", cache, *seeds) == 0
    for seed in SEEDS:
        a = load_file(str(ens / f"seed-{seed}" / "model.safetensors"))
        b = load_file(str(tmp_path / "ens" / f"seed-{seed}" / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_seed_options_and_member_folders_are_checked_before_any_work(fixture_corpus, members, tmp_path, capsys):
    ens, _, cache = members
    assert _train(fixture_corpus, tmp_path / "a", cache, "--seeds", "1,2", "--seed", "3") == 2
    assert "either --seed" in capsys.readouterr().err
    assert _train(fixture_corpus, ens / "seed-1984", cache, "--seeds", "1,2") == 2
    assert "holds a single run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _train(fixture_corpus, tmp_path / "b", cache, "--seeds", "1,1")
    copy = tmp_path / "c"
    shutil.copytree(ens / "seed-1990", copy / "seed-1990")  # a member trained with other settings
    assert _train(fixture_corpus, copy, cache, "--seeds", "1984,1990", "--lambda-balr", "0.2") == 2
    assert "different config" in capsys.readouterr().err
    assert not (copy / "seed-1984").exists()  # refused before the first member started


def test_ensemble_parts_slice_into_each_members_own_parts():
    from training.config import load_recipe
    from training.ensemble import Ensemble
    from training.model import DeraMosHeads, build_model
    from training.split import split_model

    torch.manual_seed(0)
    base = build_model(load_recipe("tiny").model, load_weights=False).eval()
    models = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        model = DeraMos(base.config, base.audio_encoder, base.text_encoder)
        model.heads = DeraMosHeads(base.config)
        models.append(model.eval())
    ensemble = Ensemble(models, ["a", "b", "c"]).eval()
    wave = 0.1 * torch.randn(3, base.audio_encoder.contract.num_samples)
    ids, mask = torch.randint(5, 50, (3, 7)), torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    audio, text, ta = split_model(ensemble)
    with torch.no_grad():
        mi, audio_x = audio(wave)
        text_x = text(ids, mask)
        ta_out = ta(audio_x, text_x, mask)
        for i, model in enumerate(models):
            m_audio, m_text, m_ta = split_model(model)
            m_mi, m_x = m_audio(wave)
            m_tx = m_text(ids, mask)
            torch.testing.assert_close(mi[:, i], m_mi, rtol=0, atol=1e-6)
            torch.testing.assert_close(audio_x[:, i], m_x, rtol=0, atol=1e-6)
            torch.testing.assert_close(text_x[:, i], m_tx, rtol=0, atol=1e-6)
            torch.testing.assert_close(ta_out[:, i], m_ta(m_x, m_tx, mask), rtol=0, atol=1e-6)
    assert mi.shape == (3, 3, 20) and text_x.shape[:3] == (3, 3, 7) and ta_out.shape == (3, 3, 20)
    one = Ensemble(models[:1], ["a"]).eval()
    with torch.no_grad():  # a one-member ensemble is the single model with a member axis of 1
        torch.testing.assert_close(split_model(one)[0](wave)[0][:, 0], split_model(models[0])[0](wave)[0],
                                   rtol=0, atol=0)


def test_evaluating_a_folder_of_members_scores_their_ensemble(fixture_corpus, members, tmp_path):
    ens, _, cache = members
    outs = {}
    for name, run in (("ens", ens), *((f"s{s}", ens / f"seed-{s}") for s in SEEDS)):
        outs[name] = tmp_path / name
        assert evaluate.main(["--data", str(fixture_corpus), "--run", str(run), "--split", "test",
                              "--cache-dir", str(cache), "--out", str(outs[name])]) == 0

    def predictions(name):
        with (outs[name] / "predictions_test.csv").open() as f:
            rows = list(csv.DictReader(f))
        return np.array([[float(r["mi_pred"]), float(r["ta_pred"])] for r in rows])

    # The ensemble's score is the expected score of the mean distribution = the mean of the members' scores.
    mean = np.mean([predictions(f"s{s}") for s in SEEDS], axis=0)
    np.testing.assert_allclose(predictions("ens"), mean, atol=2e-6)


def test_load_ensemble_refuses_members_that_do_not_share_their_encoders(tmp_path):
    from export.testing import write_member_runs, write_random_run
    from training.config import RunConfig
    from training.ensemble import load_ensemble, member_runs

    runs = write_member_runs(tmp_path / "ok", 2)
    assert len(load_ensemble(runs)[0]) == 2
    cases = {
        "audio encoder weights": lambda d: write_random_run(d, seed=7),
        "audio backbone": lambda d: _edited(runs[1], d, lambda c: c["model"]["audio"]["options"].update(size="x")),
        "audio protocol \\(resampler\\)": lambda d: _edited(runs[1], d, lambda c: c["model"].update(resampler="torchaudio")),
        "text encoder weights": lambda d: _perturbed(runs[1], d, "text_encoder."),
        "head kind": lambda d: write_random_run(d, head="scalar"),
        "TA width": lambda d: _edited(runs[1], d, lambda c: c["model"].update(ta_dim=16)),
        "tokenizer max_tokens": lambda d: _edited(runs[1], d, lambda c: c["model"].update(max_tokens=32)),
    }
    for i, (what, make) in enumerate(cases.items()):
        other = make(tmp_path / f"case{i}")
        with pytest.raises(DeramosError, match=f"members do not share their frozen encoders: {what} differs"):
            load_ensemble([runs[0], other])

    def other_tokenizer(run):  # the same config, a tokenizer that cuts prompts elsewhere
        from deramos_rt.text import load_tokenizer
        from training.ensemble import _load_run

        model, run_config, tokenizer = _load_run(run, "cpu")
        return model, run_config, tokenizer if run == runs[0] else load_tokenizer("tiny", 8, tokenizer.vocab_size)

    with pytest.raises(DeramosError, match="tokenizer differs"):
        load_ensemble(runs, other_tokenizer)
    assert RunConfig.from_json(runs[0] / "config.json").model.audio.name == "tiny"
    with pytest.raises(DeramosError, match="neither a run directory"):
        member_runs([tmp_path / "missing"])
    with pytest.raises(DeramosError, match="named twice"):
        member_runs([runs[0], runs[0]])


def _edited(run, out, edit):
    shutil.copytree(run, out)
    config = json.loads((out / "config.json").read_text())
    edit(config)
    (out / "config.json").write_text(json.dumps(config))
    return out


def _perturbed(run, out, prefix):
    from safetensors.torch import save_file

    shutil.copytree(run, out)
    state = load_file(str(out / "model.safetensors"))
    key = next(k for k in sorted(state) if k.startswith(prefix) and state[k].is_floating_point())
    state[key] = state[key] + 1e-3
    save_file(state, str(out / "model.safetensors"))
    return out
