"""Fixtures of the training tests, written once per test module."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.synthetic import write_tiny_cache, write_tiny_dataset


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_cache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("target"))
