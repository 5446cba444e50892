"""The category/token vocabulary: kept categories, the token space recall is computed in, the words searched.

A category (``red car``, ``light.n.02``) has one or more GloVe tokens; ground truth and
explanations are compared as tokens. The searched vocabulary is the whole GloVe store, its words
that are WordNet noun lemmas (``glove_nouns``: no verb forms or inflections such as ``dribbled``),
or the words of a list file, each word mapped to its category token (if it is one).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lavise.data.embeddings import WordEmbeddings
from lavise.data.wordnet import load_wordnet
from lavise.options import VOCABULARIES

log = logging.getLogger(__name__)

GLOVE_VOCABULARY, GLOVE_NOUNS = VOCABULARIES  # the whole GloVe vocabulary | its WordNet nouns


@dataclass
class Categories:
    """Kept categories and the token space recall is computed in."""

    names: list[str]
    seen: np.ndarray  # bool [C]
    tokens: list[str]  # token id -> word
    incidence: np.ndarray  # bool [C, T]: category c has token t

    @property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    @property
    def has_unseen(self) -> bool:
        return bool((~self.seen).any())

    @property
    def novel_tokens(self) -> np.ndarray:
        """bool [T]: tokens of no seen category, the words the explainer never had as a class."""
        return ~self.incidence[self.seen].any(axis=0)


@dataclass
class Vocabulary:
    """The words searched for explanations, their unit vectors, and each word's category token."""

    words: np.ndarray
    vectors: torch.Tensor
    token_of_word: np.ndarray  # int64 [V]: token id or -1


def load_categories(categories: pd.DataFrame) -> Categories:
    """Kept (non-dropped) categories with their tokens; the token space is their union."""
    kept = categories[categories["role"] != "dropped"].reset_index(drop=True)
    token_ids: dict[str, int] = {}
    pairs: list[tuple[int, int]] = []
    for c, tokens in enumerate(kept["tokens"]):
        if tokens is None or len(tokens) == 0:
            raise ValueError(f"category {kept['category'][c]!r} has no tokens")
        for token in tokens:
            pairs.append((c, token_ids.setdefault(str(token), len(token_ids))))
    incidence = np.zeros((len(kept), len(token_ids)), dtype=bool)
    if pairs:
        rows, cols = np.asarray(pairs).T
        incidence[rows, cols] = True
    return Categories(
        names=kept["category"].astype(str).tolist(),
        seen=(kept["role"] == "seen").to_numpy(),
        tokens=list(token_ids),
        incidence=incidence,
    )


def _listed_words(embeddings: WordEmbeddings, path: str) -> tuple[np.ndarray, np.ndarray]:
    """The distinct words of a one-per-line list file (first occurrence kept) and their vectors."""
    listed = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    unique = list(dict.fromkeys(listed))
    if len(unique) < len(listed):
        log.warning("vocabulary %s: %d duplicate word(s) ignored", path, len(listed) - len(unique))
    try:
        rows = embeddings.index_of(unique)
    except KeyError as error:
        raise ValueError(f"vocabulary file {path}: {error.args[0]}") from error
    return np.asarray(unique, dtype=object), np.asarray(embeddings.vectors[rows], dtype=np.float32)


def noun_lemmas(wordnet_root: Path) -> frozenset[str]:
    """The one-word noun lemmas of WordNet (lower case, as WordNet writes them): the entity words
    the reference code restricts its explanations to. Multi-word lemmas (``traffic_light``) are
    left out, since a GloVe token is one word."""
    return frozenset(name for name in load_wordnet(wordnet_root).all_lemma_names(pos="n") if "_" not in name)


def _glove_nouns(embeddings: WordEmbeddings, wordnet_root: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """The GloVe words that are one-word WordNet noun lemmas, in GloVe order, and their vectors."""
    if wordnet_root is None:
        raise ValueError(f"vocabulary {GLOVE_NOUNS!r} needs the WordNet directory")
    nouns = noun_lemmas(wordnet_root)
    keep = np.flatnonzero([word in nouns for word in embeddings.words])
    log.info("vocabulary %s: %d of %d GloVe words are WordNet nouns", GLOVE_NOUNS, len(keep), len(embeddings.words))
    return np.asarray(embeddings.words)[keep], np.asarray(embeddings.vectors[keep], dtype=np.float32)


def load_vocabulary(
    embeddings: WordEmbeddings, vocabulary: str, tokens: Sequence[str], wordnet_root: Path | None = None
) -> Vocabulary:
    """The whole GloVe vocabulary (``glove``), its WordNet nouns (``glove_nouns``, read from
    ``wordnet_root``) or the words of a one-per-line list file."""
    if vocabulary == GLOVE_VOCABULARY:
        words = np.asarray(embeddings.words)
        vectors = np.asarray(embeddings.vectors, dtype=np.float32)
    elif vocabulary == GLOVE_NOUNS:
        words, vectors = _glove_nouns(embeddings, wordnet_root)
    else:
        words, vectors = _listed_words(embeddings, vocabulary)
    if len(words) == 0:
        raise ValueError(f"vocabulary {vocabulary!r} is empty")
    position = pd.Index(words).get_indexer(list(tokens))
    token_of_word = np.full(len(words), -1, dtype=np.int64)
    token_of_word[position[position >= 0]] = np.flatnonzero(position >= 0)
    missing = [t for t, p in zip(tokens, position) if p < 0]
    if missing:
        log.warning("%d category token(s) not in the vocabulary can never be recalled: %s", len(missing), missing[:20])
    return Vocabulary(
        words=words, vectors=torch.from_numpy(np.array(vectors, dtype=np.float32)), token_of_word=token_of_word
    )


def tokens_of_categories(truth: np.ndarray, incidence: np.ndarray) -> np.ndarray:
    """Ground truth as tokens: ``bool [P, T]``, the union of the tokens of each pair's categories.

    Sparse expansion (pairs have a handful of categories), not a dense [P, C] × [C, T] product.
    """
    out = np.zeros((truth.shape[0], incidence.shape[1]), dtype=bool)
    pair_ids, category_ids = np.nonzero(truth)
    token_owner, token_ids = np.nonzero(incidence)
    per_category = np.bincount(token_owner, minlength=incidence.shape[0])
    starts = np.concatenate([[0], np.cumsum(per_category)[:-1]])
    counts = per_category[category_ids]
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    out[np.repeat(pair_ids, counts), token_ids[np.repeat(starts[category_ids], counts) + offsets]] = True
    return out
