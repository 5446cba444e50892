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
