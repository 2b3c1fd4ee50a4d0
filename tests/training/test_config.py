import pytest

from deramos_rt.errors import DeramosError
from training.config import RunConfig, list_recipes, load_recipe


def test_every_recipe_loads_and_round_trips(tmp_path):
    assert {"dera-mos-code", "dera-mos-paper", "ce-gauss", "baseline-l1", "pamr", "tiny"} <= set(list_recipes())
    for name in list_recipes():
        cfg = load_recipe(name)
        cfg.to_json(tmp_path / f"{name}.json")
        assert RunConfig.from_json(tmp_path / f"{name}.json") == cfg


def test_published_loss_weights():
    code, paper = load_recipe("dera-mos-code").loss, load_recipe("dera-mos-paper").loss
    assert (code.lambda_balr, code.lambda_sama) == (0.01, 0.2)
    assert (paper.lambda_balr, paper.lambda_sama) == (0.2, 0.3)
    assert load_recipe("dera-mos-code").model.audio.name == "muq"


def test_unknown_fields_and_recipes_are_named():
    with pytest.raises(DeramosError, match="mi_fff"):
        RunConfig.from_dict({"model": {"mi_fff": 3}})
    with pytest.raises(DeramosError, match="choose one of"):
        load_recipe("no-such-recipe")
    with pytest.raises(DeramosError, match="ta_pooling"):
        RunConfig.from_dict({"model": {"ta_pooling": "max"}})


def test_resampler_is_part_of_the_model_config():
    from training.config import ModelConfig

    assert RunConfig.from_dict({"model": {}}).model.resampler == "soxr"  # configs without the field
    with pytest.raises(DeramosError, match="resampler must be one of soxr, torchaudio"):
        RunConfig.from_dict({"model": {"resampler": "sinc"}})
    assert ModelConfig(resampler="torchaudio").resampler == "torchaudio"


def test_recipes_choose_their_resampler_and_trunk():
    for name in list_recipes():
        expected = "torchaudio" if name in ("dera-mos-code", "dera-mos-paper") else "soxr"
        assert load_recipe(name).model.resampler == expected, name
    authors, decoupled = load_recipe("baseline-l1").model, load_recipe("baseline-l1-decoupled").model
    assert (authors.head, authors.ta_kv_source) == ("scalar", "mi")  # the authors' scalar predictor
    assert (decoupled.head, decoupled.ta_kv_source) == ("scalar", "audio")
    assert load_recipe("baseline-l1").loss.kind == load_recipe("baseline-l1-decoupled").loss.kind == "l1"


def test_audio_protocol_is_the_contract_plus_the_resampler():
    from training.backbones.base import AudioContract
    from training.model import audio_protocol

    cfg = load_recipe("tiny").model
    cfg.resampler = "torchaudio"
    proto = audio_protocol(cfg, AudioContract(24000, 30.0, 1024))
    assert (proto.sample_rate, proto.clip_seconds, proto.resampler, proto.num_samples) == (24000, 30.0, "torchaudio", 720000)
