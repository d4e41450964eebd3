"""Image folders (``labels.csv`` or class-per-subfolder), timm preprocessing, and the
seeded choice of calibration images."""
from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

DEFAULT_DATA = Path(os.environ.get("ERQ_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
IMAGE_EXT = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


class DataError(ValueError):
    """A problem with an image folder, named precisely."""


def _scan(root: Path) -> list[tuple[Path, int]]:
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    csv_path = root / "labels.csv"
    if csv_path.is_file():
        items = []
        img_dir = root / "images" if (root / "images").is_dir() else root
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "file" not in reader.fieldnames or "label" not in reader.fieldnames:
                raise DataError(f"{csv_path}: needs a header with 'file' and 'label' columns")
            for line, row in enumerate(reader, start=2):
                try:
                    label = int(row["label"])
                except (TypeError, ValueError):
                    raise DataError(f"{csv_path}:{line}: label {row['label']!r} is not an integer")
                path = img_dir / row["file"]
                if not path.is_file():
                    raise DataError(f"{csv_path}:{line}: image file not found: {path}")
                items.append((path, label))
    else:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        items = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).iterdir())
                 if p.suffix.lower() in IMAGE_EXT]
    if not items:
        raise DataError(f"no images in {root} (expected labels.csv or class subfolders)")
    return items


class ImageFolderDataset(Dataset):
    """Labelled images from ``root``: ``root/labels.csv`` (``file,label,...``; files under
    ``root/images/`` or ``root``) or ``root/<class>/<image>`` (labels = sorted class index).

    Items are ``(image tensor (3, H, W) float32, label int)``; ``files`` lists the paths.
    """

    def __init__(self, root, transform=None, files: list[str] | None = None,
                 num_classes: int | None = None):
        items = _scan(Path(root))
        if files is not None:
            by_name = {p.name: (p, y) for p, y in items}
            missing = [f for f in files if f not in by_name]
            if missing:
                raise DataError(f"{root}: files not found: {', '.join(missing[:5])}")
            items = [by_name[f] for f in files]
        if num_classes is not None:
            for p, y in items:
                if not 0 <= y < num_classes:
                    raise DataError(f"{p}: label {y} outside the model's {num_classes} classes")
        self.items = items
        self.transform = transform

    @property
    def files(self) -> list[str]:
        return [p.name for p, _ in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except Exception as exc:
            raise DataError(f"cannot read image {path}: {exc}") from exc
        return (self.transform(img) if self.transform else img), label


def select_calibration(root, num: int, seed: int) -> list[str]:
    """Sort the file names, shuffle them with ``random.Random(seed)``, take the first ``num``."""
    names = sorted(p.name for p, _ in _scan(Path(root)))
    if num > len(names):
        raise DataError(f"{root}: asked for {num} calibration images, only {len(names)} there")
    random.Random(seed).shuffle(names)
    return names[:num]


def model_transform(model):
    """Evaluation preprocessing from the model's own timm data config."""
    import timm.data
    cfg = timm.data.resolve_data_config({}, model=model)
    return timm.data.create_transform(**cfg, is_training=False)


def make_loader(dataset: Dataset, batch_size: int, workers: int | None = None) -> DataLoader:
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False)
