"""Catalogue of the official raw archives: what to download and where its contents go.

The catalogue pins each archive's URL, published checksum and size, and where its contents go in
the ``data/raw/`` layout of docs/ARCHITECTURE.md. The embedded demo (`lavise.data.demo`) produces
archives with the same names and layouts, so the same fetch, verify and extract code handles both.

Visual Genome is pinned to version 1.2 (108,077 images, the paper's counts): its objects come from
``objects_v1_2.json.zip`` (``objects.json.zip`` on the same server is version 1.4).

``extracted_size`` bounds what extraction may write (the members extracted may total at most 10%
more, see `lavise.data.download`): for the COCO annotations it is the exact size of the two
``instances_*2017.json`` members extracted (469,785,474 + 19,987,840 bytes); for the COCO image
zips it is the archive's own size, since JPEG data does not compress (their members are stored at
about 1:1). Visual Genome publishes no sizes, so its archives are bounded only by the expansion
ratio limits (200:1; its real zips expand at most about 10:1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Archive:
    """One downloadable archive and where its contents go below ``data/raw/``.

    ``sha256``/``md5``/``size`` are the published values (None when the publisher gives none; the
    sha256 is then computed and recorded in the manifest). ``extract_to`` is relative to the raw
    dir; ``strip_prefix`` drops the archive's top folder; ``members`` limits extraction to those
    member names; ``install_as`` instead accepts any single member with that name's suffix (the
    publisher does not fix the inner name) and writes it as ``install_as``. ``extract_to=None``
    means the archive is consumed without extraction (GloVe). ``extracted_size``: the bytes its
    extracted members should total, when known (None: only the ratio limits apply).
    """

    name: str
    url: str
    sha256: str | None
    md5: str | None
    size: int | None
    dataset: str
    extract_to: str | None = None
    strip_prefix: str | None = None
    members: tuple[str, ...] | None = None
    install_as: str | None = None
    extracted_size: int | None = None


COCO_ARCHIVES: tuple[Archive, ...] = (
    Archive(
        "train2017.zip",
        "http://images.cocodataset.org/zips/train2017.zip",
        sha256=None,
        md5="cced6f7f71b7629ddf16f17bbcfab6b2",
        size=19336861798,
        dataset="coco",
        extract_to="coco",
        extracted_size=19336861798,
    ),
    Archive(
        "val2017.zip",
        "http://images.cocodataset.org/zips/val2017.zip",
        sha256=None,
        md5="442b8da7639aecaf257c1dceb8ba8c80",
        size=815585330,
        dataset="coco",
        extract_to="coco",
        extracted_size=815585330,
    ),
    Archive(
        "annotations_trainval2017.zip",
        "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
        sha256=None,
        md5="f4bbac642086de4f52a3fdda2de5fa2c",
        size=252907541,
        dataset="coco",
        extract_to="coco",
        members=("annotations/instances_train2017.json", "annotations/instances_val2017.json"),
        extracted_size=469785474 + 19987840,
    ),
)

VG_ARCHIVES: tuple[Archive, ...] = (
    Archive(
        "images.zip",
        "https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip",
        sha256=None,
        md5=None,
        size=None,
        dataset="vg",
        extract_to="vg/images",
        strip_prefix="VG_100K/",
    ),
    Archive(
        "images2.zip",
        "https://cs.stanford.edu/people/rak248/VG_100K_2/images2.zip",
        sha256=None,
        md5=None,
        size=None,
        dataset="vg",
        extract_to="vg/images",
        strip_prefix="VG_100K_2/",
    ),
    # Version 1.2 (108,077 images); ".../dataset/objects.json.zip" would be version 1.4.
    Archive(
        "objects_v1_2.json.zip",
        "https://homes.cs.washington.edu/~ranjay/visualgenome/data/dataset/objects_v1_2.json.zip",
        sha256=None,
        md5=None,
        size=None,
        dataset="vg",
        extract_to="vg",
        install_as="objects.json",
    ),
    Archive(
        "image_data.json.zip",
        "https://homes.cs.washington.edu/~ranjay/visualgenome/data/dataset/image_data.json.zip",
        sha256=None,
        md5=None,
        size=None,
        dataset="vg",
        extract_to="vg",
        members=("image_data.json",),
    ),
)

GLOVE_ARCHIVE = Archive(
    "glove.6B.zip", "https://nlp.stanford.edu/data/glove.6B.zip", sha256=None, md5=None, size=862182613, dataset="glove"
)

CATALOGUE: Mapping[str, tuple[Archive, ...]] = {
    "coco": COCO_ARCHIVES,
    "vg": VG_ARCHIVES,
    "glove": (GLOVE_ARCHIVE,),
}
