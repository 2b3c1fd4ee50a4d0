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
