"""The papers' datasets through torchvision: MNIST, FashionMNIST, CIFAR10, CIFAR100, STL10.

torchvision reads the files (and checks their md5 sums); this module says which files a
split needs, downloads them when asked and allowed, and otherwise names what is missing,
where it belongs, and the command that fetches it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from amemctl.data.datasets import Dataset, Loaded, Request
from amemctl.errors import DataError


@dataclass(frozen=True)
class Source:
    """One torchvision dataset: its folder under the root and the files each split needs."""

    name: str
    folder: str
    files: dict[str, tuple[str, ...]]  #: split -> files (relative to root/folder)
    open: Callable[[Path, str, bool], object]  #: (root, split, download) -> torchvision dataset
    summary: str
    shape: tuple[int, ...]


def _train_flag(cls_name: str) -> Callable[[Path, str, bool], object]:
    """Opener for datasets whose split is a `train=` flag (MNIST, FashionMNIST, CIFAR)."""

    def open_(root: Path, split: str, download: bool) -> object:
        import torchvision

        return getattr(torchvision.datasets, cls_name)(str(root), train=split == "train", download=download)

    return open_


@dataclass(frozen=True)
class _Raw:
    """An MNIST-like split read straight from its idx files (what `_to_loaded` needs of a dataset)."""

    data: torch.Tensor
    targets: torch.Tensor


def _idx_files(cls_name: str) -> Callable[[Path, str, bool], object]:
    """Opener for MNIST and FashionMNIST: torchvision downloads; the split's own idx files are read.

    torchvision's classes insist on the train and test files both being there; reading the
    two files a split needs lets a folder holding only the test files load its test split.
    """

    def open_(root: Path, split: str, download: bool) -> object:
        import torchvision
        from torchvision.datasets.mnist import read_image_file, read_label_file

        if download:
            return getattr(torchvision.datasets, cls_name)(str(root), train=split == "train", download=True)
        images, labels = (root / cls_name / f for f in _MNIST_FILES[split])
        try:
            data, targets = read_image_file(str(images)), read_label_file(str(labels))
        except (AssertionError, KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise RuntimeError(f"{images.name} or {labels.name} is not an idx file of images and labels ({type(exc).__name__}: {exc})") from None
        if len(data) != len(targets):
            raise RuntimeError(f"{images.name} holds {len(data)} images but {labels.name} {len(targets)} labels")
        return _Raw(data, targets)

    return open_


def _stl10(root: Path, split: str, download: bool) -> object:
    import torchvision

    return torchvision.datasets.STL10(str(root), split=split, download=download)


_MNIST_FILES = {
    "train": ("raw/train-images-idx3-ubyte", "raw/train-labels-idx1-ubyte"),
    "test": ("raw/t10k-images-idx3-ubyte", "raw/t10k-labels-idx1-ubyte"),
}
_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
_STL10_COMMON = ("class_names.txt", "train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")

SOURCES = {
    s.name: s
    for s in (
        Source("mnist", "MNIST", _MNIST_FILES, _idx_files("MNIST"), "MNIST handwritten digits, 28x28 grey", (1, 28, 28)),
        Source("fashion-mnist", "FashionMNIST", _MNIST_FILES, _idx_files("FashionMNIST"), "Fashion-MNIST clothing, 28x28 grey", (1, 28, 28)),
        Source("cifar10", "cifar-10-batches-py", {"train": _CIFAR10_FILES, "test": _CIFAR10_FILES}, _train_flag("CIFAR10"), "CIFAR-10, 32x32 colour, 10 classes", (3, 32, 32)),
        Source("cifar100", "cifar-100-python", {"train": ("train", "test", "meta"), "test": ("train", "test", "meta")}, _train_flag("CIFAR100"), "CIFAR-100, 32x32 colour, 100 classes", (3, 32, 32)),
        Source(
            "stl10",
            "stl10_binary",
            {"train": _STL10_COMMON, "test": _STL10_COMMON, "unlabeled": (*_STL10_COMMON, "unlabeled_X.bin")},
            _stl10,
            "STL-10, 96x96 colour, 10 classes (unlabeled split: 100,000 images, label -1)",
            (3, 96, 96),
        ),
    )
}


def missing_files(source: Source, root: Path, split: str) -> list[Path]:
    """The files `split` needs that are not under root."""
    return [root / source.folder / f for f in source.files[split] if not (root / source.folder / f).is_file()]


def read(source: Source, request: Request) -> Loaded:
    """Load one split, downloading it first when files are missing and `download` is on."""
    root = request.root
    missing = missing_files(source, root, request.split)
    if missing and request.download:
        try:
            source.open(root, request.split, True)
        except Exception as exc:  # no network, refused, interrupted: say what to do instead
            raise DataError(
                f"{source.name} is not in {root} and downloading it failed: {type(exc).__name__}: {exc}",
                hint=_where_hint(source, root, missing),
            ) from None
        missing = missing_files(source, root, request.split)
    if missing:
        raise DataError(
            f"{source.name} ({request.split}) is not in {root}: missing {', '.join(str(m.relative_to(root)) for m in missing[:4])}"
            + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""),
            hint=_where_hint(source, root, missing),
        )
    try:
        dataset = source.open(root, request.split, False)
    except RuntimeError as exc:
        raise DataError(
            f"{source.name} files in {root / source.folder} could not be read: {exc}",
            hint="they may be damaged or of another version; delete them and download again",
        ) from None
    return _to_loaded(dataset)


def _where_hint(source: Source, root: Path, missing: list[Path]) -> str:
    return (
        f"on a machine with internet run `amemctl data download {source.name} --root {root}`, "
        f"or copy the {source.folder}/ folder of an existing download into {root}"
    )


def _to_loaded(dataset: object) -> Loaded:
    data = dataset.data  # type: ignore[attr-defined]
    array = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if array.ndim == 3:  # MNIST-like: N x H x W
        images = torch.from_numpy(array).unsqueeze(1)
    elif array.shape[-1] == 3:  # CIFAR: N x H x W x C
        images = torch.from_numpy(array).permute(0, 3, 1, 2)
    else:  # STL10: N x C x H x W
        images = torch.from_numpy(array)
    labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = dataset.labels
    return Loaded(images.float().div_(255).contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.long))


def datasets() -> list[Dataset]:
    """The torchvision datasets as amemctl datasets."""
    result = []
    for source in SOURCES.values():
        splits = tuple(source.files)
        result.append(
            Dataset(source.name, source.summary, splits, "test" if "test" in splits else splits[0], lambda r, s=source: read(s, r), source.shape)
        )
    return result


def download(name: str, root: Path, splits: tuple[str, ...] | None = None) -> list[str]:
    """Download every split of `name` into root (for `amemctl data download`); returns the splits fetched."""
    source = SOURCES[name]
    fetched = []
    for split in splits or tuple(source.files):
        read(source, Request(split, root, True))
        fetched.append(split)
    return fetched
