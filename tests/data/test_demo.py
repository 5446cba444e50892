"""Embedded demo: official layouts, decodable masks, planted cases, determinism, Range server."""

from __future__ import annotations

import hashlib
import io
import json
import re
import urllib.error
import urllib.request
import zipfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from lavise.data.demo import (
    ARCHIVES,
    COCO_CATEGORIES,
    build_demo_archives,
    uncompressed_rle,
)
from lavise.data.demo_server import serve_directory
from lavise.data.embeddings import WordEmbeddings, build_from_pypi_50d

SEED = 0


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    out = tmp_path_factory.mktemp("demo")
    return out, build_demo_archives(out, ["coco", "vg"], SEED)


@pytest.fixture(scope="module")
def coco(demo_dir) -> dict[str, dict]:
    out, _ = demo_dir
    with zipfile.ZipFile(out / "annotations_trainval2017.zip") as archive:
        return {
            split: json.loads(archive.read(f"annotations/instances_{split}2017.json")) for split in ("train", "val")
        }


@pytest.fixture(scope="module")
def vg(demo_dir) -> tuple[list[dict], list[dict]]:
    out, _ = demo_dir
    with zipfile.ZipFile(out / "objects_v1_2.json.zip") as archive:
        objects = json.loads(archive.read("objects.json"))
    with zipfile.ZipFile(out / "image_data.json.zip") as archive:
        image_data = json.loads(archive.read("image_data.json"))
    return objects, image_data


def _read_member(zip_path: Path, name: str) -> bytes:
    with zipfile.ZipFile(zip_path) as archive:
        return archive.read(name)


def test_archives_and_checksums(demo_dir) -> None:
    out, checksums = demo_dir
    assert set(checksums) == set(ARCHIVES["coco"]) | set(ARCHIVES["vg"])
    assert {p.name for p in out.iterdir()} == set(checksums)  # no temp files left
    for name, digest in checksums.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


def test_deterministic_and_selective(demo_dir, tmp_path: Path) -> None:
    _, first = demo_dir
    second = build_demo_archives(tmp_path, ["vg"], SEED)
    assert set(second) == set(ARCHIVES["vg"])  # only the requested dataset
    assert second == {name: first[name] for name in ARCHIVES["vg"]}
    with zipfile.ZipFile(tmp_path / "images.zip") as archive:
        assert {info.date_time for info in archive.infolist()} == {(2017, 1, 1, 0, 0, 0)}
        names = archive.namelist()
        assert names == sorted(names)


def test_unknown_dataset_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="imagenet"):
        build_demo_archives(tmp_path, ["imagenet"], SEED)


def test_coco_layout(demo_dir, coco) -> None:
    out, _ = demo_dir
    for split, count in (("train", 480), ("val", 160)):
        with zipfile.ZipFile(out / f"{split}2017.zip") as archive:
            names = archive.namelist()
        assert names[0] == f"{split}2017/"
        assert all(re.fullmatch(rf"{split}2017/\d{{12}}\.jpg", n) for n in names[1:])
        document = coco[split]
        assert set(document) == {"info", "licenses", "images", "annotations", "categories"}
        assert len(document["images"]) == count
        assert {f"{split}2017/{im['file_name']}" for im in document["images"]} == set(names[1:])
        for image in document["images"]:
            assert {"id", "file_name", "width", "height"} <= set(image)
            assert image["file_name"] == f"{image['id']:012d}.jpg"
        for annotation in document["annotations"]:
            assert set(annotation) == {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"}
        assert all(set(c) == {"id", "name", "supercategory"} for c in document["categories"])
    assert not {im["id"] for im in coco["train"]["images"]} & {im["id"] for im in coco["val"]["images"]}
    image = coco["val"]["images"][7]
    decoded = Image.open(io.BytesIO(_read_member(out / "val2017.zip", f"val2017/{image['file_name']}")))
    assert decoded.size == (image["width"], image["height"])
    sizes = {(im["width"], im["height"]) for im in coco["train"]["images"]}
    assert any(w != h for w, h in sizes) and all(256 <= min(s) and max(s) <= 320 for s in sizes)


def test_coco_masks_decode_with_pycocotools(demo_dir, coco, tmp_path: Path) -> None:
    json_path = tmp_path / "instances_train2017.json"
    json_path.write_text(json.dumps(coco["train"]))
    api = COCO(str(json_path))
    crowd = 0
    for annotation in coco["train"]["annotations"]:
        mask = api.annToMask(annotation)
        image = api.imgs[annotation["image_id"]]
        assert mask.shape == (image["height"], image["width"])
        assert mask.sum() > 0 and mask.sum() == pytest.approx(annotation["area"], abs=0.5)
        x, y, w, h = annotation["bbox"]
        rows, cols = np.nonzero(mask)
        assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == pytest.approx((x, y, x + w, y + h), abs=1)
        if annotation["iscrowd"]:
            crowd += 1
            segmentation = annotation["segmentation"]
            assert isinstance(segmentation["counts"], list) and segmentation["size"] == [
                image["height"],
                image["width"],
            ]
        else:
            assert isinstance(annotation["segmentation"], list) and all(len(p) >= 6 for p in annotation["segmentation"])
    assert crowd >= 20


def test_uncompressed_rle_against_loop_and_pycocotools() -> None:
    mask = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 1], [1, 0, 0]], dtype=np.uint8)
    flat = mask.ravel(order="F")
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    rle = uncompressed_rle(mask)
    assert rle == {"counts": counts, "size": [4, 3]}
    # by hand: columns [1,0,0,1], [1,1,1,0], [0,0,1,0] read top to bottom, zeros first
    assert rle["counts"] == [0, 1, 2, 4, 3, 1, 1]
    decoded = mask_utils.decode(mask_utils.frPyObjects(rle, 4, 3))
    np.testing.assert_array_equal(decoded, mask)
    assert uncompressed_rle(np.zeros((2, 2)))["counts"] == [4]


def test_coco_planted_cases(demo_dir, coco) -> None:
    out, _ = demo_dir
    train = coco["train"]
    images = sorted(train["images"], key=lambda im: im["id"])
    annotated = {a["image_id"] for a in train["annotations"]}
    assert images[0]["id"] not in annotated
    gray = Image.open(io.BytesIO(_read_member(out / "train2017.zip", f"train2017/{images[1]['file_name']}")))
    assert gray.mode == "L"
    truncated = Image.open(io.BytesIO(_read_member(out / "train2017.zip", f"train2017/{images[2]['file_name']}")))
    with pytest.raises(OSError):
        truncated.load()
    assert images[2]["id"] in annotated
    names = {c["name"] for c in train["categories"]}
    assert {"traffic light", "fire hydrant", "stop sign", "sports ball"} <= names
    for split, minimum in (("train", 40), ("val", 12)):
        per_category: dict[int, set[int]] = defaultdict(set)
        for annotation in coco[split]["annotations"]:
            per_category[annotation["category_id"]].add(annotation["image_id"])
        assert set(per_category) == {cid for cid, *_ in COCO_CATEGORIES}
        assert min(len(ids) for ids in per_category.values()) >= minimum, split


def test_vg_layout(demo_dir, vg) -> None:
    out, _ = demo_dir
    objects, image_data = vg
    members = {}
    for archive, folder in (("images.zip", "VG_100K"), ("images2.zip", "VG_100K_2")):
        with zipfile.ZipFile(out / archive) as zipped:
            names = zipped.namelist()
        assert names[0] == f"{folder}/"
        assert all(re.fullmatch(rf"{folder}/\d+\.jpg", n) for n in names[1:])
        members[folder] = set(names[1:])
    assert len(members["VG_100K"]) + len(members["VG_100K_2"]) == len(image_data) == 640
    assert [entry["image_id"] for entry in objects] == [entry["image_id"] for entry in image_data]
    for entry in image_data:
        assert set(entry) == {"image_id", "url", "width", "height", "coco_id", "flickr_id"}
        folder, name = entry["url"].split("/")[-2:]
        assert name == f"{entry['image_id']}.jpg" and f"{folder}/{name}" in members[folder]
    object_ids = [obj["object_id"] for entry in objects for obj in entry["objects"]]
    assert len(object_ids) == len(set(object_ids))
    for entry in objects:
        assert set(entry) == {"image_id", "objects"}
        for obj in entry["objects"]:
            assert {"object_id", "x", "y", "w", "h", "names", "synsets"} <= set(obj)
            assert all(isinstance(obj[k], int) for k in ("x", "y", "w", "h"))


def test_vg_planted_cases(demo_dir, vg) -> None:
    out, _ = demo_dir
    objects, image_data = vg
    size = {entry["image_id"]: (entry["width"], entry["height"]) for entry in image_data}
    folder = {entry["image_id"]: entry["url"].split("/")[-2] for entry in image_data}
    synsets_of_name: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    images_per_synset: dict[str, set[int]] = defaultdict(set)
    outside = duplicates = 0
    for entry in objects:
        image_id = entry["image_id"]
        seen = Counter()
        for obj in entry["objects"]:
            synsets_of_name[obj["names"][0]].add(tuple(obj["synsets"]))
            for synset in obj["synsets"]:
                images_per_synset[synset].add(image_id)
            width, height = size[image_id]
            outside += obj["x"] + obj["w"] > width or obj["y"] + obj["h"] > height
            seen[(obj["x"], obj["y"], obj["w"], obj["h"], tuple(obj["names"]))] += 1
        duplicates += sum(count > 1 for count in seen.values())
    assert synsets_of_name["car"] == synsets_of_name["automobile"] == {("car.n.01",)}
    assert synsets_of_name["traffic light"] == {("traffic_light.n.01",)}
    assert synsets_of_name["shadow"] == {()}
    assert synsets_of_name["lamp post"] == {("lamp_post.n.01",)}
    assert 0 < len(images_per_synset["piano.n.01"]) < 20
    kept = set(images_per_synset) - {"piano.n.01", "lamp_post.n.01"}
    assert len(kept) == 13
    assert min(len(images_per_synset[s]) for s in kept) >= 60  # ~45 in a 75% train split
    assert outside >= 20 and duplicates >= 10
    ordered = sorted(objects, key=lambda entry: entry["image_id"])
    assert ordered[0]["objects"] == []
    archive = {"VG_100K": "images.zip", "VG_100K_2": "images2.zip"}

    def jpeg(image_id: int) -> Image.Image:
        name = f"{folder[image_id]}/{image_id}.jpg"
        return Image.open(io.BytesIO(_read_member(out / archive[folder[image_id]], name)))

    assert jpeg(ordered[1]["image_id"]).mode == "L"
    with pytest.raises(OSError):
        jpeg(ordered[2]["image_id"]).load()


def test_vocabulary_in_glove_and_wordnet(vg, coco, tmp_path: Path, wordnet: Any) -> None:
    objects, _ = vg
    build_from_pypi_50d(tmp_path / "glove")
    glove = WordEmbeddings.load(tmp_path / "glove")
    coco_tokens = {token for c in coco["train"]["categories"] for token in c["name"].split()}
    vg_names = {obj["names"][0] for entry in objects for obj in entry["objects"]}
    vg_tokens = {token for name in vg_names for token in name.split()}
    glove.index_of(sorted(coco_tokens | vg_tokens))  # KeyError names any missing word
    for token in coco_tokens | vg_tokens:
        assert wordnet.synsets(token, pos="n"), token
    known = {s for entry in objects for obj in entry["objects"] for s in obj["synsets"]} - {"lamp_post.n.01"}
    for synset in known:
        assert wordnet.synset(synset).name() == synset
    from nltk.corpus.reader.wordnet import WordNetError

    with pytest.raises(WordNetError):
        wordnet.synset("lamp_post.n.01")
    car, truck = wordnet.synset("car.n.01"), wordnet.synset("truck.n.01")
    assert wordnet.synset("motor_vehicle.n.01") in car.lowest_common_hypernyms(truck)


def test_serve_directory_range(tmp_path: Path) -> None:
    payload = np.random.default_rng(0).integers(0, 256, size=1000, dtype=np.uint8).tobytes()
    (tmp_path / "blob.bin").write_bytes(payload)
    with serve_directory(tmp_path) as base_url:
        request = urllib.request.Request(f"{base_url}/blob.bin", headers={"Range": "bytes=100-199"})
        with urllib.request.urlopen(request) as response:
            assert response.status == 206
            assert response.headers["Content-Range"] == "bytes 100-199/1000"
            assert response.read() == payload[100:200]
        request = urllib.request.Request(f"{base_url}/blob.bin", headers={"Range": "bytes=900-"})
        with urllib.request.urlopen(request) as response:
            assert response.status == 206 and response.read() == payload[900:]
        request = urllib.request.Request(f"{base_url}/blob.bin", headers={"Range": "bytes=-10"})
        with urllib.request.urlopen(request) as response:
            assert response.read() == payload[-10:]
        with urllib.request.urlopen(f"{base_url}/blob.bin") as response:
            assert response.status == 200 and response.headers["Accept-Ranges"] == "bytes"
            assert response.read() == payload
        request = urllib.request.Request(f"{base_url}/blob.bin", headers={"Range": "bytes=2000-"})
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request)
        assert error.value.code == 416
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{base_url}/blob.bin", timeout=2)
