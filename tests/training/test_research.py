"""Import of research-code checkpoints: parity with the authors' own head code, errors in their naming."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deramos_rt.errors import DeramosError
from training.research import import_state_dict, to_research_name
from training.model import sinusoidal_table

DATA = Path(__file__).parent.parent / "data"
RECORD = json.loads((DATA / "research_head_keys.json").read_text())
REF = np.load(DATA / "research_reference.npz")
LENGTHS = [5, 9, 12]


def research_state(record: dict, seed: int = 7) -> dict[str, torch.Tensor]:
    """The weights the reference was computed with: randn * 0.15 per sorted key from one generator."""
    g = torch.Generator().manual_seed(seed)
    state = {name: torch.randn(*record[name], generator=g) * 0.15 for name in sorted(record)}
    state["bin_centers"] = torch.linspace(1, 5, 20)
    state["audio_pos_encoder.pe"] = sinusoidal_table(5000, 1024).unsqueeze(1)
    return state


def _inputs():
    return (torch.from_numpy(REF["audio"].astype(np.float32)), torch.from_numpy(REF["text"].astype(np.float32)),
            torch.from_numpy(REF["mask"]))


@pytest.mark.parametrize("variant", ["dera-mos", "astar-ntu"])
def test_imported_model_gives_every_clip_its_batch1_research_output_in_any_batch(variant):
    model = import_state_dict(research_state(RECORD[variant]), variant=variant)
    assert model.audio_encoder is None and model.text_encoder is None
    audio, text, mask = _inputs()
    with torch.no_grad():
        padded = model.heads(audio, text, mask)
        singles = [model.heads(audio[i:i + 1], text[i:i + 1, :n], mask[i:i + 1, :n]) for i, n in enumerate(LENGTHS)]
    for key in ("mi", "ta"):
        ref = REF[f"{variant}_{key}_b1"]
        assert np.abs(padded[key].numpy() - ref).max() < 1e-5
        assert np.abs(torch.cat([s[key] for s in singles]).numpy() - ref).max() < 1e-5
        assert np.abs(padded[f"{key}_probs"].numpy() - REF[f"{variant}_{key}_probs_b1"]).max() < 1e-5
    # The research code itself gives other scores in a padded batch (PE off, TA pooled over padding).
    assert np.abs(REF[f"{variant}_mi_padded"] - REF[f"{variant}_mi_b1"]).max() > 1e-3


def test_without_positional_encoding_matches_how_the_checkpoint_was_trained():
    model = import_state_dict(research_state(RECORD["dera-mos"]), positional_encoding=False)
    audio, text, mask = _inputs()
    with torch.no_grad():
        out = model.heads(audio, text, mask)
    # In a full batch the research code skips the PE, so its padded-batch MI is the no-PE MI.
    assert np.abs(out["mi"].numpy() - REF["dera-mos_mi_padded"]).max() < 1e-5
    assert model.config.positional_encoding is False


def test_config_records_the_choices():
    cfg = import_state_dict(research_state(RECORD["astar-ntu"]), variant="astar-ntu").config
    assert (cfg.ta_pooling, cfg.ta_kv_source, cfg.positional_encoding) == ("mean", "mi", True)
    assert (cfg.audio_dim, cfg.text_dim, cfg.ta_dim, cfg.mi_ff, cfg.mi_mlp, cfg.ta_mlp) == (1024, 768, 768, 2048, [512, 256], [384, 192])


@pytest.mark.parametrize("mutate,message", [
    (lambda s: s.pop("coherence_mlp.3.bias"), "missing keys: coherence_mlp.3.bias"),
    (lambda s: s.__setitem__("decoder.weight", torch.zeros(1)), "unexpected keys: decoder.weight"),
    (lambda s: s.__setitem__("overall_mlp.5.weight", torch.zeros(10, 256)), "overall_mlp.5.weight: (10, 256)"),
    (lambda s: s.__setitem__("bin_centers", torch.linspace(0, 5, 20)), "bin_centers is not linspace"),
    (lambda s: s.__setitem__("audio_pos_encoder.pe", torch.zeros(5000, 1, 1024)), "not the sinusoidal table"),
    (lambda s: s.pop("bin_centers"), "lacks buffer"),
])
def test_bad_checkpoints_are_named_in_the_authors_naming(mutate, message):
    state = research_state(RECORD["dera-mos"])
    mutate(state)
    with pytest.raises(DeramosError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_state_dict(state)


def test_sama_pooling_is_only_expected_for_dera_mos():
    state = research_state(RECORD["dera-mos"])
    with pytest.raises(DeramosError, match="unexpected keys: audio_contrastive"):
        import_state_dict(state, variant="astar-ntu")
    model = import_state_dict({"state_dict": state})
    assert torch.equal(model.heads.align_audio_pool.score.weight,
                       state["audio_contrastive_attentive_pool.attention_weights.weight"])


def tiny_full_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    """A research-style checkpoint with tiny encoders under the real key names (muq.model.*, roberta.*)."""
    from training.backbones.muq import MuQBackbone
    from training.backbones.text_hf import build_text
    from training.config import ModelConfig
    from training.model import DeraMosHeads

    torch.manual_seed(seed)
    muq, roberta = MuQBackbone("tiny", clip_seconds=1.0), build_text("roberta", size="tiny")
    heads = DeraMosHeads(ModelConfig(audio_dim=32, text_dim=32, ta_dim=32, mi_ff=64, mi_mlp=[16, 8], ta_mlp=[16, 8]))
    state = {f"muq.{k}": v for k, v in muq.state_dict().items()}
    state.update({f"roberta.{k}": v for k, v in roberta.model.state_dict().items()})
    state.update({to_research_name(k): v for k, v in heads.state_dict().items()})
    state["bin_centers"] = torch.linspace(1, 5, 20)
    state["audio_pos_encoder.pe"] = sinusoidal_table(5000, 32).unsqueeze(1)
    return state


def test_full_checkpoint_with_tiny_encoders_runs_end_to_end():
    state = tiny_full_checkpoint()
    model = import_state_dict(state)
    assert model.config.audio.options == {"size": "tiny"} and model.config.text.options == {"size": "tiny"}
    assert torch.equal(model.audio_encoder.model.conv.linear.weight, state["muq.model.conv.linear.weight"])
    from deramos_rt.text import load_tokenizer

    tokens = load_tokenizer("tiny", 32)(["a calm piano piece", "fast drums"])
    wave = torch.randn(2, 24000)
    with torch.no_grad():
        out = model(wave, torch.from_numpy(tokens.input_ids), torch.from_numpy(tokens.attention_mask))
    assert out["mi"].shape == (2,) and torch.isfinite(out["ta"]).all()
    state["muq.model.conv.conv.0.bn1.weight"] = torch.zeros(3)
    with pytest.raises(DeramosError, match="model.conv.conv.0.bn1.weight"):
        import_state_dict(state)


def test_cli_writes_a_run_that_rebuilds_and_evaluates(tmp_path, fixture_corpus, capsys):
    from training import evaluate, import_research
    from training.checkpoint import load_run

    state = tiny_full_checkpoint(seed=3)
    torch.save({"model_state_dict": state}, tmp_path / "best.pth")
    run = tmp_path / "run"
    assert import_research.main([str(tmp_path / "best.pth"), "--out", str(run)]) == 0
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["variant"] == "dera-mos" and provenance["tensors"]["heads"] == 40
    model, cfg = load_run(run)
    direct = import_state_dict(state)
    audio, text = torch.randn(2, 6, 32), torch.randn(2, 4, 32)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    with torch.no_grad():
        assert torch.allclose(model.heads(audio, text, mask)["ta"], direct.heads(audio, text, mask)["ta"])
    assert torch.equal(model.audio_encoder.model.conv.linear.weight, state["muq.model.conv.linear.weight"])
    assert cfg.model.resampler == "torchaudio" and provenance["resampler"] == "torchaudio"
    assert evaluate.main(["--data", str(fixture_corpus), "--run", str(run), "--split", "dev",
                          "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "eval_dev.json").read_text())
    assert metrics["clips"] == 16 and set(metrics["MI"]) == {"utterance", "system"}


def test_cli_refuses_pickled_code_and_missing_encoders(tmp_path, capsys):
    import argparse

    from training import import_research

    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, tmp_path / "evil.pth")
    assert import_research.main([str(tmp_path / "evil.pth"), "--out", str(tmp_path / "r")]) == 2
    assert "refusing to load" in capsys.readouterr().err
    torch.save(research_state(RECORD["dera-mos"]), tmp_path / "heads.pth")
    assert import_research.main([str(tmp_path / "heads.pth"), "--out", str(tmp_path / "r")]) == 2
    assert "--audio-encoder" in capsys.readouterr().err


def test_cli_says_a_text_file_is_not_a_checkpoint_and_a_truncated_one_is_truncated(tmp_path, capsys):
    from training import import_research

    (tmp_path / "notes.pth").write_text("these are my notes, not weights\n")
    assert import_research.main([str(tmp_path / "notes.pth"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "is not a checkpoint" in err and "pickled code" not in err and "Traceback" not in err
    torch.save(research_state(RECORD["dera-mos"]), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    assert import_research.main([str(tmp_path / "cut.pth"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # a failed import leaves nothing behind


def test_cli_refuses_a_non_empty_out_folder(tmp_path, capsys):
    from training import import_research

    torch.save(research_state(RECORD["dera-mos"]), tmp_path / "heads.pth")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "mine.txt").write_text("keep me")
    assert import_research.main([str(tmp_path / "heads.pth"), "--out", str(tmp_path / "r")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "r" / "mine.txt").read_text() == "keep me"


def test_several_checkpoints_import_as_ensemble_members_sharing_encoder_files(tmp_path, capsys):
    import os

    from training import import_research
    from training.ensemble import load_ensemble, member_runs

    first = tiny_full_checkpoint(seed=3)
    second = {k: (v if k.startswith(("muq.", "roberta.")) else tiny_full_checkpoint(seed=4)[k]) for k, v in first.items()}
    torch.save(first, tmp_path / "seed1984.pth")
    torch.save(second, tmp_path / "seed1990.pth")
    out = tmp_path / "members"
    assert import_research.main([str(tmp_path / "seed1984.pth"), str(tmp_path / "seed1990.pth"), "--out", str(out)]) == 0
    runs = member_runs([out])
    assert [r.name for r in runs] == ["seed1984", "seed1990"]
    for name in ("muq", "roberta"):  # the frozen encoders are stored once
        a, b = (os.stat(r / "encoders" / f"{name}.safetensors") for r in runs)
        assert (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)
    assert json.loads((runs[1] / "provenance.json").read_text())["source"] == str((tmp_path / "seed1990.pth").resolve())
    ensemble, _ = load_ensemble(runs)
    assert ensemble.names == ["seed1984", "seed1990"]
    assert not torch.equal(ensemble.heads[0].mi_mlp[0].weight, ensemble.heads[1].mi_mlp[0].weight)
    (tmp_path / "broken.pth").write_text("not a checkpoint")
    again = tmp_path / "again"
    assert import_research.main([str(tmp_path / "seed1984.pth"), str(tmp_path / "broken.pth"), "--out", str(again)]) == 2
    assert "broken.pth" in capsys.readouterr().err and not again.exists()  # the finished first member is removed too
