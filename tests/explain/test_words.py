"""Nearest words, the per-filter word voting and the searched vocabulary, against full sorts and hand counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lavise.data.embeddings import WordEmbeddings
from lavise.data.vocabulary import load_vocabulary
from lavise.explain.explaining import MethodOutputs
from lavise.explain.methods import Method
from lavise.explain.words import (
    _chunk_top_k,
    filter_explanation,
    filter_explanations,
    image_weights,
    method_words,
    nearest_words,
)
from lavise.features.pooling import pool
from lavise.features.thresholds import TopImagePairs
from tests.writers.glove import write_glove_store

EMB = 16
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
WORDS += ["iota", "red", "car", "dog", "cat", "tree", "sky", "road"]


def test_nearest_words_matches_full_sort() -> None:
    rng = np.random.default_rng(3)
    vocab = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(5000, 8)).astype(np.float32)), dim=1)
    queries = torch.from_numpy(rng.normal(size=(7, 8)).astype(np.float32))
    found = nearest_words(queries, vocab, 20, row_batch=3, vocab_chunk=997, group=4)
    full = torch.nn.functional.normalize(queries, dim=1) @ vocab.T
    expected = torch.argsort(full, dim=1, descending=True)[:, :20]
    assert torch.equal(found, expected)
    assert nearest_words(queries, vocab[:5], 20).shape == (7, 5)


def test_grouped_top_k_exact_with_padding_and_ties() -> None:
    rng = np.random.default_rng(4)
    scores = torch.from_numpy(rng.normal(size=(5, 1003)).astype(np.float32))
    scores[0, :] = 0.0
    scores[0, [7, 500, 1002]] = torch.tensor([3.0, 2.0, 1.0])
    values, index = _chunk_top_k(scores, 6, 16)
    expected_values, _ = scores.topk(6, dim=1)
    assert torch.equal(values, expected_values)
    assert torch.equal(scores.gather(1, index), values)
    assert index[0, :3].tolist() == [7, 500, 1002]


def test_word_weighting_activation_and_count() -> None:
    words = np.array([[3, 1], [1, 2], [2, 3]])
    # activation weights: int(2.7)=2, int(0.4)=0 -> at least 1, int(5.0)=5
    weights = image_weights(np.array([2.7, 0.4, 5.0]), "activation")
    assert weights.tolist() == [2, 1, 5]
    assert filter_explanation(words, weights, 10) == ([3, 2, 1], [7, 6, 3])
    counts = image_weights(np.array([2.7, 0.4, 5.0]), "count")
    assert filter_explanation(words, counts, 2) == ([3, 1], [2, 2])  # tie: 3 was seen first
    with pytest.raises(ValueError, match="unknown word weighting"):
        image_weights(np.ones(2), "softmax")


def test_vocabulary_word_list(tmp_path) -> None:
    embeddings = WordEmbeddings.load(write_glove_store(tmp_path / "glove", WORDS, np.eye(EMB, dtype=np.float32)))
    listed = tmp_path / "words.txt"
    listed.write_text("dog\nsky\n\nbeta\ndog\n")
    vocabulary = load_vocabulary(embeddings, str(listed), ["red", "car", "dog", "sky"])
    assert vocabulary.words.tolist() == ["dog", "sky", "beta"]
    assert vocabulary.token_of_word.tolist() == [2, 3, -1]
    assert torch.equal(vocabulary.vectors[1], torch.eye(EMB)[WORDS.index("sky")])
    listed.write_text("dog\nunicorn\n")
    with pytest.raises(ValueError, match="unicorn"):
        load_vocabulary(embeddings, str(listed), ["dog"])


def _unit_vocabulary() -> torch.Tensor:
    return torch.eye(4)  # word j is the unit vector e_j


def test_method_words_per_image_and_shared_without_region() -> None:
    # pairs by row: (row 0, f0), (row 0, f1), (row 2, f0); top rows of f0: [0, 2], of f1: [0]
    pairs = TopImagePairs(np.array([[0, 2], [0, -1]]))
    per_image = MethodOutputs(
        Method("image", lambda batch: pool(batch.maps), per_filter=False),
        torch.tensor([[0.1, 0.9, 0.0, 0.0], [math.nan] * 4, [0.0, 0.0, 0.2, 0.8]]),
        np.arange(3),
    )
    ids = method_words(per_image, pairs, _unit_vocabulary(), 2, np.zeros(3, dtype=bool))
    assert ids.tolist() == [[1, 0], [1, 0], [3, 2]]  # one search per image, shared by its filters
    shared = MethodOutputs(
        Method("masked", lambda batch: batch.maps, constant_without_region=True),
        torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.5], [0.0, 1.0, 0.0, 0.0]]),
        np.arange(3),
    )
    no_region = np.array([False, True, True])  # pairs 1 and 2: the output of pair 1 stands for both
    assert method_words(shared, pairs, _unit_vocabulary(), 1, no_region).tolist() == [[3], [2], [2]]
    distinct = torch.tensor([[0.1, 0.2, 0.3, 1.0], [math.nan] * 4, [0.05, 1.0, 0.1, 0.2]])
    plain = MethodOutputs(Method("plain", lambda batch: batch.maps), distinct, np.array([0, 2]))
    # the pairs it explains only, every word when k exceeds the vocabulary
    assert method_words(plain, pairs, _unit_vocabulary(), 9, no_region).tolist() == [[3, 2, 1, 0], [1, 3, 2, 0]]


def test_filter_explanations_vote_in_activation_order() -> None:
    # filter 0: top images rank 0 (row 1), rank 1 (row 0); filter 1: rank 0 (row 0)
    pairs = TopImagePairs(np.array([[1, 0], [0, -1]]))  # by row: (0, f0, r1), (0, f1, r0), (1, f0, r0)
    words = np.array([[5, 6], [7, 8], [6, 9]])
    found = filter_explanations(words, np.array([1, 1, 2]), pairs, np.arange(3), 3)
    # filter 0 reads rank 0 first: 6 (2 votes) and 9 (2) then 5 and 6 (1 each): 6: 3, 9: 2, 5: 1
    assert found == {0: ([6, 9, 5], [3, 2, 1]), 1: ([7, 8], [1, 1])}
    assert filter_explanations(words[[1]], np.array([1]), pairs, np.array([1]), 3) == {1: ([7, 8], [1, 1])}


def test_glove_nouns_keeps_the_glove_words_that_are_wordnet_nouns(tmp_path, wordnet_root) -> None:
    words = ["dog", "dribbled", "car", "the", "traffic", "squirted"]  # WordNet nouns: dog, car, traffic
    embeddings = WordEmbeddings.load(write_glove_store(tmp_path / "glove", words, np.eye(8, dtype=np.float32)[:6]))
    vocabulary = load_vocabulary(embeddings, "glove_nouns", ["car", "dog", "squirted"], wordnet_root)
    assert vocabulary.words.tolist() == ["dog", "car", "traffic"]  # GloVe order kept
    assert vocabulary.token_of_word.tolist() == [1, 0, -1]
    assert torch.equal(vocabulary.vectors[1], torch.eye(8)[2])
    with pytest.raises(ValueError, match="needs the WordNet directory"):
        load_vocabulary(embeddings, "glove_nouns", ["dog"])
