"""GloVe store: exact parsing of the official text format, the PyPI 50d build, fast loading."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lavise.data.embeddings import (
    WordEmbeddings,
    build_from_glove_zip,
    build_from_pypi_50d,
    normalise_rows,
    write_store,
)
from tests.writers.glove import write_glove_store

# Three words of dimension 50 in the official format; '"' and 'null' are real GloVe tokens that a
# CSV reader with quoting or null detection on would mangle, and one row is all zeros.
TINY_WORDS = ['"', "null", "dog"]


def _tiny_rows() -> np.ndarray:
    rows = np.zeros((3, 50), dtype=np.float64)
    rows[0, 0], rows[0, 1] = 3.0, 4.0  # norm 5 -> 0.6, 0.8
    rows[2] = np.arange(50) * 0.5 - 7.25
    return rows


@pytest.fixture()
def tiny_glove_zip(tmp_path: Path) -> Path:
    lines = [word + " " + " ".join(repr(float(v)) for v in row) for word, row in zip(TINY_WORDS, _tiny_rows())]
    zip_path = tmp_path / "glove.6B.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("glove.6B.50d.txt", "\n".join(lines) + "\n")
        archive.writestr("glove.6B.100d.txt", "x " + " ".join(["1"] * 100) + "\n")
    return zip_path


def test_normalise_rows_by_hand() -> None:
    out = normalise_rows(np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_build_from_glove_zip_exact(tiny_glove_zip: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    build_from_glove_zip(tiny_glove_zip, 50, out)
    vectors = np.load(out / "vectors.npy")
    assert vectors.dtype == np.float32 and vectors.shape == (3, 50)
    assert pq.read_table(out / "vocab.parquet").column("word").to_pylist() == TINY_WORDS
    expected = _tiny_rows()
    expected[2] /= np.sqrt((expected[2] ** 2).sum())
    expected[0] = 0.0
    expected[0, :2] = [0.6, 0.8]
    np.testing.assert_allclose(vectors, expected, rtol=1e-6, atol=1e-7)
    assert not vectors[1].any()  # the zero row stays zero
    assert {p.name for p in out.iterdir()} == {"vectors.npy", "vocab.parquet"}  # no temp files


def test_build_from_glove_zip_wrong_dimension_leaves_nothing(tmp_path: Path) -> None:
    zip_path = tmp_path / "glove.6B.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("glove.6B.50d.txt", "a " + " ".join(["1"] * 50) + "\nb 1 2 3\n")
    out = tmp_path / "store"
    with pytest.raises(ValueError, match="glove.6B.50d.txt"):
        build_from_glove_zip(zip_path, 50, out)
    assert not out.exists() or not any(out.iterdir())


def test_build_from_glove_zip_missing_member(tiny_glove_zip: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="glove.6B.300d.txt"):
        build_from_glove_zip(tiny_glove_zip, 300, tmp_path / "store")


def test_word_embeddings_lookup(tiny_glove_zip: Path, tmp_path: Path) -> None:
    build_from_glove_zip(tiny_glove_zip, 50, tmp_path)
    emb = WordEmbeddings.load(tmp_path)
    assert len(emb) == 3 and emb.dim == 50
    assert '"' in emb and "dog" in emb and "cat" not in emb and 3 not in emb
    np.testing.assert_array_equal(emb.index_of(["dog", '"', "dog"]), [2, 0, 2])
    assert emb.index_of(["dog"]).dtype == np.int64
    np.testing.assert_array_equal(emb.vectors_of(["null", "dog"]), np.asarray(emb.vectors)[[1, 2]])
    with pytest.raises(KeyError, match="cat.*zebra|zebra.*cat"):
        emb.index_of(["dog", "cat", "zebra"])


def test_write_store_is_the_format_the_builders_write(tiny_glove_zip: Path, tmp_path: Path) -> None:
    build_from_glove_zip(tiny_glove_zip, 50, tmp_path / "built")
    write_store(tmp_path / "written", TINY_WORDS, _tiny_rows())
    for name in ("vectors.npy", "vocab.parquet"):
        assert (tmp_path / "built" / name).read_bytes() == (tmp_path / "written" / name).read_bytes(), name
    with pytest.raises(ValueError, match="duplicate"):
        write_store(tmp_path / "twice", ["dog", "dog"], np.ones((2, 3)))
    assert not (tmp_path / "twice").exists()


def test_glove_store_writer(tmp_path: Path) -> None:
    emb = WordEmbeddings.load(write_glove_store(tmp_path / "eye", ["a", "b"], np.array([[2.0, 0.0], [0.0, 0.5]])))
    np.testing.assert_array_equal(emb.vectors, [[1.0, 0.0], [0.0, 1.0]])
    assert emb.vectors.dtype == np.float32 and list(emb.words) == ["a", "b"]
    drawn = WordEmbeddings.load(write_glove_store(tmp_path / "random", ["x", "y", "z"], dim=4, seed=0))
    rows = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_array_equal(drawn.vectors, rows / np.linalg.norm(rows, axis=1, keepdims=True))


def test_load_missing_store_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="download stage"):
        WordEmbeddings.load(tmp_path)


def test_pypi_50d_real_vectors(tmp_path: Path) -> None:
    build_from_pypi_50d(tmp_path)
    start = time.perf_counter()
    emb = WordEmbeddings.load(tmp_path)
    load_seconds = time.perf_counter() - start
    assert emb.vectors.shape == (400000, 50) and emb.vectors.dtype == np.float32
    assert isinstance(emb.vectors, np.memmap)
    assert load_seconds < 1.0, load_seconds
    vectors = emb.vectors_of(["dog", "traffic", "light", "cat"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # Real GloVe semantics: dog is closer to cat than to traffic.
    assert vectors[0] @ vectors[3] > vectors[0] @ vectors[1]
    assert list(emb.words[:4]) == ["the", ",", ".", "of"]
