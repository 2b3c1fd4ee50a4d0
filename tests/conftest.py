"""Shared fixtures: a small generated MusicEval-layout corpus and tiny model configurations."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def fixture_corpus(tmp_path_factory):
    from training.fixtures import make_fixture_corpus

    return make_fixture_corpus(tmp_path_factory.mktemp("corpus"), n_train=48, n_dev=16, n_test=16, seed=0)


@pytest.fixture
def tiny_config():
    from training.config import load_recipe

    return load_recipe("tiny").model
