"""Shared fixtures: a small generated MusicEval-layout corpus and tiny model configurations."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Bundles that tests build are recorded as trusted (deramos_rt.trust): keep that, and every other
    ``$DERAMOS_CACHE`` entry, out of the user's own cache; only the built-in models' bundles (built once per
    machine by setup.sh) are shared, through a link."""
    from deramos_rt.models import cache_root

    before = os.environ.get("DERAMOS_CACHE")
    bundles = cache_root() / "bundles"
    bundles.mkdir(parents=True, exist_ok=True)
    private = tmp_path_factory.mktemp("deramos-cache")
    (private / "bundles").symlink_to(bundles, target_is_directory=True)
    os.environ["DERAMOS_CACHE"] = str(private)
    yield os.environ["DERAMOS_CACHE"]
    if before is None:
        os.environ.pop("DERAMOS_CACHE", None)
    else:
        os.environ["DERAMOS_CACHE"] = before


@pytest.fixture(scope="session")
def fixture_corpus(tmp_path_factory):
    from training.fixtures import make_fixture_corpus

    return make_fixture_corpus(tmp_path_factory.mktemp("corpus"), n_train=48, n_dev=16, n_test=16, seed=0)


@pytest.fixture
def tiny_config():
    from training.config import load_recipe

    return load_recipe("tiny").model
