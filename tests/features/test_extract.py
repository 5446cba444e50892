"""The extraction pass against naive per-object computation, resume, and robustness."""

from __future__ import annotations

import errno
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from safetensors.torch import save_file
from torchvision.models import get_model

from lavise.data.annotation_schema import IMAGES_SCHEMA, OBJECTS_SCHEMA
from lavise.data.images import decode_image, read_image
from lavise.data.masks import image_object_masks
from lavise.data.transforms import mask_to_grid, masks_to_crop, preprocess
from lavise.features import extract
from lavise.features.cache import open_feature_cache
from lavise.features.extract import ExtractionSettings, ImageObjectsDataset, build_feature_cache
from lavise.models.extractor import build_feature_extractor

RESIZE, CROP, LAYER = 72, 64, "layer2"  # resnet18 layer2 at 64 px: 128 x 8 x 8


def _rle(height: int, width: int, top: int, left: int, size: int) -> str:
    mask = np.zeros((height, width), dtype=np.uint8, order="F")
    mask[top : top + size, left : left + size] = 1
    return mask_utils.encode(np.asfortranarray(mask))["counts"].decode("ascii")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny dataset with every odd case: grayscale, CMYK, PNG-as-.jpg, truncated, missing."""
    root = tmp_path_factory.mktemp("demo")
    raw, annotations = root / "raw", root / "annotations"
    raw.mkdir()
    rng = np.random.default_rng(0)
    image_rows: list[dict[str, Any]] = []
    object_rows: list[dict[str, Any]] = []
    sizes = [(60, 80), (90, 70), (64, 64), (75, 100), (80, 60), (70, 90), (66, 88), (100, 75), (64, 96), (50, 50)]
    kinds = ["rgb", "gray", "cmyk", "png", "rgb", "rgb", "truncated", "missing_file", "rgb", "status_missing"]
    for image_id, ((height, width), kind) in enumerate(zip(sizes, kinds), start=10):
        coarse = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        pixels = Image.fromarray(coarse).resize((width, height))
        path = raw / f"{image_id}.jpg"
        if kind == "gray":
            pixels.convert("L").save(path)
        elif kind == "cmyk":
            pixels.convert("CMYK").save(path)
        elif kind == "png":
            pixels.save(path, format="PNG")
        elif kind == "truncated":
            pixels.save(path)
            path.write_bytes(path.read_bytes()[:200])
        elif kind in ("rgb", "status_missing"):
            pixels.save(path)
        split = "val" if image_id % 3 == 0 else "train"
        status = "missing" if kind == "status_missing" else "ok"
        image_rows.append(
            {
                "image_id": image_id,
                "path": path.name,
                "width": width,
                "height": height,
                "split": split,
                "status": status,
            }
        )
        n_objects = 0 if image_id == 14 else 1 + image_id % 3
        for k in range(n_objects):
            object_id = len(object_rows)
            common = {
                "object_id": 1000 - object_id,
                "image_id": image_id,
                "category": f"cat{k}",
                "area": 1.0,
                "n_instances": 1,
                "source_ids": [object_id],
            }
            if k % 2 == 0:
                boxes = [
                    float(5 + 7 * k),
                    float(4 + 3 * k),
                    float(width // 2),
                    float(height // 3),
                    0.0,
                    float(height // 2),
                    10.0,
                    10.0,
                ]
                object_rows.append({**common, "kind": "boxes", "rle": None, "boxes": boxes})
            else:
                object_rows.append({**common, "kind": "rle", "rle": _rle(height, width, 10, 12 * k, 30), "boxes": None})
    # 75x100 image 13: resize 72 -> 72x96, crop drops resized cols < 16 (original < 22.2).
    object_rows.append(
        {
            "object_id": 2000,
            "image_id": 13,
            "category": "edge",
            "kind": "boxes",
            "rle": None,
            "boxes": [0.0, 0.0, 15.0, 75.0],
            "area": 1125.0,
            "n_instances": 1,
            "source_ids": [2],
        }
    )
    object_rows.append(
        {
            "object_id": 5000,
            "image_id": 999,
            "category": "orphan",
            "kind": "boxes",
            "rle": None,
            "boxes": [0.0, 0.0, 5.0, 5.0],
            "area": 25.0,
            "n_instances": 1,
            "source_ids": [1],
        }
    )
    annotations.mkdir()
    pq.write_table(pa.Table.from_pylist(image_rows[::-1], schema=IMAGES_SCHEMA), annotations / "images.parquet")
    pq.write_table(pa.Table.from_pylist(object_rows, schema=OBJECTS_SCHEMA), annotations / "objects.parquet")
    torch.manual_seed(0)
    checkpoint = root / "model.safetensors"
    save_file(get_model("resnet18", weights=None, num_classes=5).state_dict(), str(checkpoint))
    return {"root": root, "raw": raw, "annotations": annotations, "checkpoint": checkpoint}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _build(
    demo: dict[str, Path],
    out: Path,
    *,
    num_workers: int = 0,
    chunk_images: int = 3,
    batch_size: int = 2,
    decode: str = "workers",
    raw: Path | None = None,
) -> dict[str, Any]:
    settings = ExtractionSettings(
        model="resnet18",
        weights=str(demo["checkpoint"]),
        layer=LAYER,
        num_classes=None,
        resize=RESIZE,
        crop=CROP,
        batch_size=batch_size,
        chunk_images=chunk_images,
        device=torch.device("cpu"),
        decode=decode,
    )
    return build_feature_cache(demo["annotations"], raw or demo["raw"], out, settings, num_workers=num_workers)


@pytest.fixture(scope="module")
def built(demo: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("features")
    _build(demo, out)
    return out


def test_layout_and_statuses(built: Path, demo: dict[str, Path]) -> None:
    assert sorted(p.name for p in built.iterdir()) == sorted(
        [
            "meta.json",
            "images.parquet",
            "train_vectors.npy",
            "train_objects.parquet",
            "val_vectors.npy",
            "val_objects.parquet",
            "val_maps.npy",
            "val_images.parquet",
        ]
    )
    cache = open_feature_cache(built)
    statuses = dict(zip(cache.images["image_id"], cache.images["status"]))
    assert statuses == {
        10: "ok",
        11: "ok",
        12: "ok",
        13: "ok",
        14: "ok",
        15: "ok",
        16: "undecodable",
        17: "missing",
        18: "ok",
        19: "missing",
    }
    errors = dict(zip(cache.images["image_id"], cache.images["error"]))
    assert "16.jpg" in errors[16] and "not found" in errors[17] and pd.isna(errors[10])
    for image_id in (16, 17):  # truncated, missing: the record read_image gives the file
        assert (statuses[image_id], errors[image_id]) == read_image(demo["raw"] / f"{image_id}.jpg")
    assert errors[19] == "status in annotations images.parquet"
    assert cache.meta["channels"] == 128 and (cache.meta["height"], cache.meta["width"]) == (8, 8)
    counts = cache.meta["counts"]
    assert counts["images_ok"] == 7 and counts["images_missing"] == 2 and counts["images_undecodable"] == 1
    assert counts["objects_without_image"] == 1
    assert counts["objects_outside_crop"] == 1
    edge = cache.train_objects.set_index("object_id").loc[2000]
    assert not cache.train_vectors[edge["row"]].any() and edge["coverage"] == 0.0
    inside = cache.train_objects[cache.train_objects["object_id"] != 2000]["coverage"]
    assert ((inside > 0) & (inside <= 1)).all()
    assert isinstance(cache.val_maps, np.memmap) and cache.val_maps.dtype == np.float16
    assert cache.val_maps.shape == (len(cache.val_images), 128, 8, 8)
    assert list(cache.val_images["image_id"]) == [12, 15, 18]
    assert list(cache.train_objects["row"]) == list(range(len(cache.train_vectors)))
    assert counts["objects_of_unusable_images"] == 2 + 3 + 2  # images 16, 17, 19: 1 + id % 3 objects each


def test_vectors_equal_naive_per_object_forward(built: Path, demo: dict[str, Path]) -> None:
    cache = open_feature_cache(built)
    extractor = build_feature_extractor("resnet18", str(demo["checkpoint"]), LAYER)
    images = pq.read_table(demo["annotations"] / "images.parquet").to_pandas().set_index("image_id")
    objects = pq.read_table(demo["annotations"] / "objects.parquet").to_pandas()
    for split, vectors, table in [
        ("train", cache.train_vectors, cache.train_objects),
        ("val", cache.val_vectors, cache.val_objects),
    ]:
        assert len(table) == len(vectors) > 0
        for row in table.itertuples():
            image = images.loc[row.image_id]
            assert image["split"] == split
            obj = objects[objects["object_id"] == row.object_id]
            assert obj["category"].item() == row.category
            pixels = decode_image(demo["raw"] / image["path"])
            with torch.inference_mode():
                maps = extractor(preprocess(pixels, RESIZE, CROP)[None])[0]
            mask = torch.from_numpy(image_object_masks(obj, int(image["height"]), int(image["width"])))
            grid = mask_to_grid(masks_to_crop(mask, RESIZE, CROP), (8, 8))[0]
            naive = torch.stack([(maps[c] * grid).mean() for c in range(maps.shape[0])])
            np.testing.assert_allclose(vectors[row.row].astype(np.float32), naive.numpy(), rtol=2e-3, atol=2e-3)
            if split == "val":
                map_row = cache.val_images.set_index("image_id").loc[row.image_id, "row"]
                cached_maps = cache.val_maps[map_row].astype(np.float32)
                np.testing.assert_allclose(cached_maps, maps.numpy(), rtol=2e-3, atol=2e-3)


def test_mask_and_image_align_at_feature_cells(tmp_path: Path) -> None:
    # 160x128 (h x w) black image, white square rows 48..79, cols 64..95. Resize 64 halves it to
    # 80x64; the centre crop 64 drops 8 rows on top: rows 16..31, cols 32..47, i.e. feature
    # cells (8 px each) rows 2-3, cols 4-5.
    height, width = 160, 128
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[48:80, 64:96] = 255
    Image.fromarray(image).save(tmp_path / "square.png")
    images = pa.table({"image_id": [1], "path": ["square.png"], "height": [height], "width": [width], "status": ["ok"]})
    objects = pa.table(
        {
            "kind": ["boxes"],
            "rle": pa.array([None], pa.string()),
            "boxes": pa.array([[64.0, 48.0, 32.0, 32.0]], pa.list_(pa.float32())),
        }
    )
    dataset = ImageObjectsDataset(images, objects, np.array([0, 1]), tmp_path, 64, 64, (8, 8))
    item = dataset[0]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:4, 4:6] = True
    grid = item["grids"][0]
    assert torch.equal(grid >= 0.5, expected)
    assert float(grid[expected].min()) > 0.9 and float(grid[~expected].max()) < 0.1
    white = mask_to_grid(item["image"][0:1].float() / 255, (8, 8))[0]
    torch.testing.assert_close(white, grid, atol=0.01, rtol=0)


def _file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_resume_after_kill_is_byte_identical(
    demo: dict[str, Path], built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = extract.write_chunk
    written: list[str] = []

    def write_then_die(chunk_dir: Path, *args: Any) -> None:
        if written:
            raise KeyboardInterrupt("simulated kill")
        real_write(chunk_dir, *args)
        written.append(chunk_dir.name)

    monkeypatch.setattr(extract, "write_chunk", write_then_die)
    out = tmp_path / "features"
    with pytest.raises(KeyboardInterrupt):
        _build(demo, out, num_workers=2)
    assert [p.name for p in sorted((out / ".chunks").glob("chunk_*"))] == ["chunk_000000"]
    assert not (out / "meta.json").exists()

    resumed: list[str] = []

    def count_writes(chunk_dir: Path, *args: Any) -> None:
        resumed.append(chunk_dir.name)
        real_write(chunk_dir, *args)

    monkeypatch.setattr(extract, "write_chunk", count_writes)
    result = _build(demo, out, num_workers=2)
    assert resumed == ["chunk_000001", "chunk_000002", "chunk_000003"]
    assert result["images_computed"] == 7
    assert not (out / ".chunks").exists()
    assert _file_bytes(out) == _file_bytes(built)


def test_changed_settings_discard_stale_chunks(
    demo: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "features"
    stale = out / ".chunks" / "chunk_000000"
    stale.mkdir(parents=True)
    (out / ".chunks" / "fingerprint.json").write_text("{}")
    result = _build(demo, out, chunk_images=10)
    assert result["images_computed"] == 10


def test_device_decode_gives_the_worker_decode_cache(demo: dict[str, Path], tmp_path: Path) -> None:
    """decode=device on the CPU runs the whole device path (bytes from the workers, batched decode,
    per-image retry, CPU fallback, rows of failed images dropped); only the decoder's device
    differs on a GPU. Image 15's scan data is corrupt behind a valid header, so it is sent to the
    device decoder and fails there, in a batch with a good image (14)."""
    raw = tmp_path / "raw"
    shutil.copytree(demo["raw"], raw)
    data = (raw / "15.jpg").read_bytes()
    start = data.index(b"\xff\xda") + 20
    (raw / "15.jpg").write_bytes(data[:start] + (b"\xff\xc4" * len(data))[: len(data) - 2 - start] + data[-2:])
    by_workers = _build(demo, tmp_path / "workers", raw=raw, chunk_images=10, batch_size=4, num_workers=2)
    on_device = _build(
        demo, tmp_path / "device", raw=raw, chunk_images=10, batch_size=4, num_workers=2, decode="device"
    )
    assert by_workers["decode"] == "workers" and on_device["decode"] == "device"
    worker_files, device_files = _file_bytes(tmp_path / "workers"), _file_bytes(tmp_path / "device")
    assert worker_files.keys() == device_files.keys()
    for name in worker_files:
        if name != "meta.json":
            assert worker_files[name] == device_files[name], name
    cache = open_feature_cache(tmp_path / "device")
    statuses = dict(zip(cache.images["image_id"], cache.images["status"]))
    assert statuses[15] == "undecodable" and statuses[14] == "ok" and statuses[16] == "undecodable"
    errors = dict(zip(cache.images["image_id"], cache.images["error"]))
    assert errors[15] == read_image(raw / "15.jpg").error  # failed on the device decoder, same record as a worker's
    assert cache.meta["counts"]["images_ok"] == 6
    assert {key: value for key, value in cache.meta.items() if key != "decode"} == {
        key: value for key, value in open_feature_cache(tmp_path / "workers").meta.items() if key != "decode"
    }


def test_device_decode_sends_only_plain_jpegs_to_the_device(demo: dict[str, Path]) -> None:
    images = pq.read_table(demo["annotations"] / "images.parquet").sort_by("image_id")
    objects = pa.table(
        {
            "kind": pa.array([], pa.string()),
            "rle": pa.array([], pa.string()),
            "boxes": pa.array([], pa.list_(pa.float32())),
        }
    )
    offsets = np.zeros(images.num_rows + 1, dtype=np.int64)
    dataset = ImageObjectsDataset(images, objects, offsets, demo["raw"], RESIZE, CROP, (8, 8), decode="device")
    sent = {int(dataset.image_ids[i]): dataset[i]["encoded"] is not None for i in range(len(dataset))}
    assert sent == {
        10: True,
        11: True,
        12: False,
        13: False,
        14: True,
        15: True,
        16: False,
        17: False,
        18: True,
        19: False,
    }
    with pytest.raises(ValueError, match="decode must be one of"):
        ImageObjectsDataset(images, objects, offsets, demo["raw"], RESIZE, CROP, (8, 8), decode="gpu")


def test_resume_recomputes_a_chunk_whose_image_changed(
    demo: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13, item 6: a chunk is reused only if the images it read are byte for byte the same.
    Image 10 (chunk 0) is replaced by its mirror image (same size) after a kill."""
    raw = tmp_path / "raw"
    shutil.copytree(demo["raw"], raw)
    real_write = extract.write_chunk

    def write_one_then_die(chunk_dir: Path, *args: Any) -> None:
        if chunk_dir.name != "chunk_000000":
            raise KeyboardInterrupt("simulated kill")
        real_write(chunk_dir, *args)

    monkeypatch.setattr(extract, "write_chunk", write_one_then_die)
    out = tmp_path / "features"
    with pytest.raises(KeyboardInterrupt):
        _build(demo, out, raw=raw)
    assert [p.name for p in sorted((out / ".chunks").glob("chunk_*"))] == ["chunk_000000"]
    with Image.open(raw / "10.jpg") as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(raw / "10.jpg")
    written: list[str] = []

    def record(chunk_dir: Path, *args: Any) -> None:
        written.append(chunk_dir.name)
        real_write(chunk_dir, *args)

    monkeypatch.setattr(extract, "write_chunk", record)
    result = _build(demo, out, raw=raw)
    assert written == ["chunk_000000", "chunk_000001", "chunk_000002", "chunk_000003"]
    assert result["images_computed"] == 10
    monkeypatch.undo()
    _build(demo, tmp_path / "fresh", raw=raw)
    assert _file_bytes(out) == _file_bytes(tmp_path / "fresh")


def test_too_little_free_space_is_refused_before_any_chunk(
    demo: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13, item 3: one message with what the cache needs and what is free, before the pass."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10**12, used=0, free=1000))
    out = tmp_path / "features"
    with pytest.raises(OSError, match=rf"^features needs [0-9.]+ MB in {out}, 0.0 MB free \(") as raised:
        _build(demo, out)
    assert raised.value.errno == errno.ENOSPC
    assert not list(out.glob("*.npy")) and not list((out / ".chunks").glob("*chunk_*"))


def test_a_stale_temp_of_a_killed_run_does_not_break_the_next(
    demo: dict[str, Path], built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13, item 3: a run killed while assembling left an 8 MB hidden temp that filled the
    disk for the next run; the next run removes it before it counts the free space."""
    out = tmp_path / "features"
    out.mkdir()
    stale = out / ".val_maps.npy.a1b2c3.tmp"
    stale.write_bytes(b"\0" * 8_000_000)
    real_usage = shutil.disk_usage

    def full_while_stale(path: str) -> Any:  # the disk is full while the stale temp is there
        usage = real_usage(path)
        return usage._replace(free=0) if stale.exists() else usage

    monkeypatch.setattr(shutil, "disk_usage", full_while_stale)
    _build(demo, out)
    assert not stale.exists()
    assert _file_bytes(out) == _file_bytes(built)


def test_a_resize_too_large_to_allocate_is_refused_with_what_it_needs(demo: dict[str, Path]) -> None:
    """Issue 13, item 9: resize 100000 would resize each image to 100000 x 133333 (40 GB); under a
    8 GB address-space limit, so a failure cannot take the machine down, the pass must refuse
    before allocating anything, with one message."""
    script = f"""
import resource, sys, torch
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
from pathlib import Path
from lavise.features.extract import ExtractionSettings, build_feature_cache
settings = ExtractionSettings(model="resnet18", weights={str(demo["checkpoint"])!r}, layer="layer2", num_classes=None,
    resize=100000, crop=64, batch_size=2, chunk_images=3, device=torch.device("cpu"), decode="workers")
try:
    build_feature_cache(Path({str(demo["annotations"])!r}), Path({str(demo["raw"])!r}), Path(sys.argv[1]), settings,
        num_workers=0, resize_what="transform.resize")
except ValueError as error:
    print(error)
"""
    out = demo["root"] / "huge_resize"
    result = subprocess.run(
        [sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.fullmatch(
        r"transform\.resize 100000 needs ~45\.0 GB for a batch of 2 images \(45\.0 GB to resize an image to "
        r"100000x150000 with its masks, in each of 1 decoding processes; 0\.2 MB for the batch's 64x64 crops\), "
        r"but only [0-9.]+ GB is available on cpu: choose a smaller transform\.resize, crop or batch size\n",
        result.stdout,
    ), result.stdout
    assert not out.exists()


def test_the_stage_prints_the_space_refusal_in_one_line(
    demo: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The refusal keeps its figures on the way out of the features stage: one line, exit 1,
    no traceback; nothing of the cache is written."""
    from stages import features as stage
    from stages.cli import run_stage

    target = tmp_path / "target"
    target.mkdir()
    shutil.copy(demo["checkpoint"], target / "model.safetensors")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "vg").symlink_to(demo["raw"])
    (tmp_path / "raw" / "coco").symlink_to(demo["raw"])
    out = tmp_path / "features"
    paths = {"annotations": demo["annotations"], "raw": tmp_path / "raw", "out": out, "target-model": target}
    monkeypatch.setattr(sys, "argv", ["features", *(f"--{k}={v}" for k, v in paths.items())])
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10**12, used=0, free=1000))
    monkeypatch.delenv("LAVISE_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_stage(stage.main)
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0]
    message = lines[0]
    assert re.fullmatch(rf"error: features needs [0-9.]+ MB in {out}, 0\.0 MB free \(.+\); free some space .+", message)
    assert not list(out.glob("*.npy")) and not list((out / ".chunks").glob("*chunk_*"))


def test_a_rebuild_killed_while_assembling_leaves_no_cache_to_mix(
    demo: dict[str, Path], built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """meta.json marks a finished cache: a rebuild removes it before replacing any file, so a kill
    during assembly leaves a cache the reader refuses, never old arrays beside new ones."""
    out = tmp_path / "features"
    shutil.copytree(built, out)
    real_assemble = extract.assemble_chunks

    def assemble_then_die(chunk_dirs: Any, out_dir: Path) -> Any:
        real_assemble(chunk_dirs, out_dir)
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(extract, "assemble_chunks", assemble_then_die)
    with pytest.raises(KeyboardInterrupt):
        _build(demo, out, chunk_images=10)  # other settings: every chunk recomputed
    assert not (out / "meta.json").exists()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        open_feature_cache(out)


def test_a_checkpoint_that_does_not_fit_names_the_weights_param(demo: dict[str, Path], tmp_path: Path) -> None:
    """The features stage passes `backbone.weights` as the label of its checkpoint errors."""
    from safetensors.torch import save_file

    checkpoint = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(3, 7)}, str(checkpoint))
    settings = ExtractionSettings(
        model="resnet18",
        weights=str(checkpoint),
        layer=LAYER,
        num_classes=None,
        resize=RESIZE,
        crop=CROP,
        batch_size=2,
        chunk_images=3,
        device=torch.device("cpu"),
        decode="workers",
    )
    with pytest.raises(ValueError, match=r"^backbone\.weights "):
        build_feature_cache(
            demo["annotations"], demo["raw"], tmp_path / "f", settings, num_workers=0, weights_what="backbone.weights"
        )
