"""Datasets as amemctl sees them: images N x C x H x W in [0, 1] and int64 labels.

A `Dataset` names a loader; the `load` stage applies `limit` and `subset` the same way
to every dataset, so loaders only read files and convert.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import Tensor

#: Where downloaded datasets live unless a pipeline or AMEMCTL_DATA says otherwise.
DEFAULT_ROOT = Path("~/.cache/amemctl/data")


@dataclass(frozen=True)
class Request:
    """What a pipeline asked of a dataset."""

    split: str
    root: Path
    download: bool
    size: int | None = None  #: square size to resize to, for loaders that must (image folders)


@dataclass(frozen=True)
class Loaded:
    """A loaded split: images N x C x H x W float32 in [0, 1], labels N int64."""

    images: Tensor
    labels: Tensor


@dataclass(frozen=True)
class Dataset:
    """A named dataset, its splits and the function that reads one split."""

    name: str
    summary: str
    splits: tuple[str, ...]
    default_split: str
    read: Callable[[Request], Loaded]
    shape: tuple[int, ...] = ()


def data_root(root: "str | Path | None" = None) -> Path:
    """The dataset root: the given one, else $AMEMCTL_DATA, else ~/.cache/amemctl/data."""
    chosen = root or os.environ.get("AMEMCTL_DATA") or DEFAULT_ROOT
    return Path(chosen).expanduser()
