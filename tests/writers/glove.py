"""Test fixture writer for the GloVe store, in the format `lavise.data.embeddings` reads.

Written through `lavise.data.embeddings.write_store`, so tests and benchmarks never spell out the
store's files themselves::

    from tests.writers.glove import write_glove_store
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lavise.data.embeddings import write_store


def write_glove_store(
    directory: Path, words: Sequence[str], vectors: np.ndarray | None = None, *, dim: int = 4, seed: int = 0
) -> Path:
    """Write ``words`` with ``vectors`` [len(words), dim] (rows are L2-normalised on writing) as a
    GloVe store in ``directory``; without ``vectors``, normal random rows of ``dim`` drawn from
    ``default_rng(seed)``. Returns ``directory``."""
    if vectors is None:
        vectors = np.random.default_rng(seed).normal(size=(len(words), dim)).astype(np.float32)
    write_store(Path(directory), words, vectors)
    return Path(directory)
