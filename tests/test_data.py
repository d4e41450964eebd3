import random

import pytest
import torch

from erq.data import DataError, ImageFolderDataset, select_calibration

from helpers import write_folder


def test_labels_csv_folder(tmp_path):
    root = write_folder(tmp_path / "d", 7)
    ds = ImageFolderDataset(root, transform=lambda im: torch.tensor(im.size))
    assert len(ds) == 7 and ds[3][1] == 3
    assert ds.files[0] == "img_000.png"


def test_class_subfolder_layout(tmp_path):
    from PIL import Image
    for cls in ("n02", "n01"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / cls / "a.jpg")
    ds = ImageFolderDataset(tmp_path)
    assert sorted(y for _, y in ds.items) == [0, 1]
    assert ds.items[0][0].parent.name == "n01" and ds.items[0][1] == 0


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ImageFolderDataset(tmp_path / "nope")


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="no images"):
        ImageFolderDataset(tmp_path)


def test_missing_image_named(tmp_path):
    root = write_folder(tmp_path / "d", 3)
    (root / "images" / "img_001.png").unlink()
    with pytest.raises(DataError, match="img_001.png"):
        ImageFolderDataset(root)


def test_unreadable_image_named(tmp_path):
    root = write_folder(tmp_path / "d", 3)
    (root / "images" / "img_002.png").write_bytes(b"not an image")
    ds = ImageFolderDataset(root)
    with pytest.raises(DataError, match="img_002.png"):
        ds[2]


def test_label_outside_head_named(tmp_path):
    root = write_folder(tmp_path / "d", 12, num_classes=12)
    with pytest.raises(DataError, match=r"img_010.png: label 10 outside the model's 10 classes"):
        ImageFolderDataset(root, num_classes=10)


def test_bad_label_value(tmp_path):
    root = write_folder(tmp_path / "d", 2)
    text = (root / "labels.csv").read_text().replace("img_001.png,1", "img_001.png,x")
    (root / "labels.csv").write_text(text)
    with pytest.raises(DataError, match="labels.csv:3"):
        ImageFolderDataset(root)


def test_calibration_selection_is_sorted_shuffled_prefix(tmp_path):
    root = write_folder(tmp_path / "d", 20)
    names = sorted(f"img_{i:03d}.png" for i in range(20))
    for seed in (0, 1, 2):
        expect = list(names)
        random.Random(seed).shuffle(expect)
        assert select_calibration(root, 5, seed) == expect[:5]
    assert select_calibration(root, 5, 0) != select_calibration(root, 5, 1)
    with pytest.raises(DataError, match="only 20"):
        select_calibration(root, 21, 0)
