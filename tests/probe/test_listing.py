"""The probe listing: folders, CSVs and every bad listing; odd files counted exactly as `features` counts them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lavise.data.images import check_image_files
from lavise.features.extract import ExtractionSettings, build_feature_cache
from lavise.probe.listing import ProbeSource, list_probe, probe_images, read_probe_images, write_probe_index


def _picture(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two groups of files in every format the issue names, and planted bad files."""
    root = tmp_path_factory.mktemp("probe")
    for group in ("g1", "g2"):
        (root / group / "deep").mkdir(parents=True)
    _picture(0).save(root / "g1" / "rgb.jpg")
    _picture(1).convert("L").save(root / "g1" / "gray.jpg")
    _picture(2).convert("CMYK").save(root / "g1" / "cmyk.jpg")
    _picture(3).save(root / "g1" / "deep" / "pic.png")
    _picture(4).save(root / "g2" / "pic.webp")
    _picture(5).save(root / "g2" / "pic.bmp")
    _picture(6).save(root / "g2" / "anim.gif", save_all=True, append_images=[_picture(7)])
    data = (root / "g1" / "rgb.jpg").read_bytes()
    (root / "g2" / "deep" / "cut.jpg").write_bytes(data[: len(data) // 2])
    (root / "g2" / "readme.txt").write_text("not an image\n")
    (root / "g2" / "empty.jpg").write_bytes(b"")
    return root


def test_a_folder_lists_every_file_with_its_subfolder_group(odd_folder: Path) -> None:
    listing = list_probe(ProbeSource(odd_folder, odd_folder, "subfolders"))
    assert listing["path"].tolist() == sorted(listing["path"].tolist())
    assert len(listing) == 10
    assert listing.groupby("group").size().to_dict() == {"g1": 4, "g2": 6}
    assert listing.set_index("path").loc["g1/deep/pic.png", "group"] == "g1"
    assert list_probe(ProbeSource(odd_folder, odd_folder, "none"))["group"].isna().all()


def test_odd_files_get_the_counts_features_gives(odd_folder: Path, tmp_path: Path) -> None:
    source = ProbeSource(odd_folder, odd_folder, "subfolders")
    images = probe_images(list_probe(source), odd_folder)
    assert images["status"].tolist() == check_image_files(odd_folder, images["path"].tolist()).tolist()
    write_probe_index(images, tmp_path / "index", source)
    assert read_probe_images(tmp_path / "index")["group"].tolist() == images["group"].tolist()
    settings = ExtractionSettings(
        model="resnet18",
        weights="none",
        layer="layer1",
        num_classes=None,
        resize=40,
        crop=32,
        batch_size=4,
        chunk_images=4,
        device=torch.device("cpu"),
        decode="workers",
    )
    meta = build_feature_cache(tmp_path / "index", odd_folder, tmp_path / "features", settings, num_workers=0)
    counts = meta["counts"]
    assert (counts["images"], counts["images_ok"], counts["images_undecodable"]) == (10, 7, 3)
    assert counts["val_images"] == 7 and counts["train_objects"] == 0
    assert counts["images_ok"] == int((images["status"] == "ok").sum())


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_csv_lists_paths_and_groups(odd_folder: Path, tmp_path: Path) -> None:
    listing_csv = _csv(
        tmp_path / "list.csv",
        f"file,party\ng1/rgb.jpg,red\n{odd_folder}/g2/pic.bmp,red\ng2/pic.webp,blue\ng1/gray.jpg,blue\n",
    )
    listing = list_probe(ProbeSource(listing_csv, odd_folder, "column", "file", "party"))
    assert listing["path"].tolist() == ["g1/gray.jpg", "g1/rgb.jpg", "g2/pic.bmp", "g2/pic.webp"]
    assert listing["group"].tolist() == ["blue", "red", "red", "blue"]


@pytest.mark.parametrize(
    ("text", "groups", "message"),
    [
        ("path,group\ng1/rgb.jpg,a\n", "column", "has no column 'party'"),
        ("file\ng1/rgb.jpg\n", "none", "has no column 'path'"),
        ("path,party\ng1/rgb.jpg,a\ng1/nothere.jpg,a\n", "column", "1 listed path.* do not exist.*g1/nothere.jpg"),
        ("path,party\ng1/rgb.jpg,a\ng1/rgb.jpg,a\ng1/gray.jpg,b\ng2/pic.bmp,b\n", "column", "listed more than once"),
        ("path,party\ng1/rgb.jpg,a\ng1/gray.jpg,a\ng2/pic.bmp,b\n", "column", "group 'b' has 1 file"),
        ("path,party\ng1/rgb.jpg,\n", "column", "column 'party' is empty on line 2"),
        ("path,party\n", "column", "lists no images"),
    ],
)
def test_bad_csv_listings_give_one_message(
    odd_folder: Path, tmp_path: Path, text: str, groups: str, message: str
) -> None:
    listing_csv = _csv(tmp_path / "list.csv", text)
    group_column = "party"
    with pytest.raises(ValueError, match=message):
        list_probe(ProbeSource(listing_csv, odd_folder, groups, "path", group_column))


def test_bad_folders_give_one_message(odd_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        list_probe(ProbeSource(tmp_path / "absent", tmp_path / "absent", "none"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no files"):
        list_probe(ProbeSource(tmp_path / "empty", tmp_path / "empty", "none"))
    loose = tmp_path / "loose"
    (loose / "a").mkdir(parents=True)
    for name in ("a/1.jpg", "a/2.jpg", "3.jpg"):
        _picture(0).save(loose / name)
    with pytest.raises(ValueError, match="1 file.* outside any group subfolder.*3.jpg"):
        list_probe(ProbeSource(loose, loose, "subfolders"))
    (loose / "3.jpg").rename(loose / "a" / "3.jpg")
    (loose / "b").mkdir()
    _picture(1).save(loose / "b" / "4.jpg")
    with pytest.raises(ValueError, match="group 'b' has 1 file"):
        list_probe(ProbeSource(loose, loose, "subfolders"))
