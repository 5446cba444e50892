"""Session-wide test settings and shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def wordnet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real WordNet 3.0, installed offline once per session (an NLTK data directory)."""
    from lavise.data.wordnet import install_offline

    root = tmp_path_factory.mktemp("nltk_data")
    install_offline(root)
    return root


@pytest.fixture(scope="session")
def wordnet(wordnet_root: Path) -> Any:
    """An NLTK WordNet reader over ``wordnet_root`` (loading the index takes seconds: share it)."""
    from lavise.data.wordnet import load_wordnet

    return load_wordnet(wordnet_root)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A feature cache of separable clusters with its categories table and GloVe store
    (tests.training.synthetic): the explainer's data, for its loop and the `train` stage."""
    from tests.training.synthetic import write_tiny_cache

    return write_tiny_cache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Annotation tables and images of a tiny labelled dataset (tests.training.synthetic): the
    target CNN's data, for its loop and the `target` stage."""
    from tests.training.synthetic import write_tiny_dataset

    return write_tiny_dataset(tmp_path_factory.mktemp("target"))
