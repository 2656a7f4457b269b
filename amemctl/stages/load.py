"""Stage `load`: a dataset into the context, and the built-in datasets."""

from __future__ import annotations

import torch

from amemctl.data.datasets import Dataset, Request, data_root
from amemctl.data.embedded import read_digits
from amemctl.engine.context import Context
from amemctl.plugins import get_registry, hookimpl
from amemctl.stage import REQUIRED, Output, Param, ParamError, Stage


def _dataset_names() -> list[str]:
    return list(get_registry().datasets)


class Load(Stage):
    """Load a dataset's images (N x C x H x W in [0, 1]) and labels."""

    name = "load"
    dataset = Param(str, REQUIRED, "dataset name (see `amemctl stages load` for the list)", choices=_dataset_names)
    split = Param(str, None, "which split; default: the dataset's usual one")
    limit = Param(int, None, "keep only the first `limit` images", min=1)
    subset = Param(int, None, "then keep a seeded random subset of this many images", min=1)
    root = Param(str, None, "folder of downloaded datasets (default: $AMEMCTL_DATA or ~/.cache/amemctl/data)")
    download = Param(bool, True, "download missing files (for online users; tests never download)")
    output = Output("patterns", "the images")
    labels = Output("labels", "their integer labels", optional=True)

    def spec(self) -> Dataset:
        return get_registry().datasets[self.dataset]

    def check(self) -> None:
        spec = self.spec()
        if self.split is not None and self.split not in spec.splits:
            raise ParamError(f"dataset {self.dataset!r} has no split {self.split!r}", hint=f"its splits are {', '.join(spec.splits)}", param="split")

    def describe(self) -> str:
        return f"load {self.dataset}"

    def run(self, ctx: Context) -> None:
        spec = self.spec()
        loaded = spec.read(Request(self.split or spec.default_split, data_root(self.root), self.download))
        images, labels = loaded.images, loaded.labels
        indices: "list[int] | dict" = {"start": 0, "stop": len(images)}
        if self.limit is not None:
            images, labels = images[: self.limit], labels[: self.limit]
            indices = {"start": 0, "stop": len(images)}
        if self.subset is not None and self.subset < len(images):
            keep = torch.randperm(len(images), generator=ctx.rng("cpu"))[: self.subset].sort().values
            images, labels = images[keep], labels[keep]
            indices = keep.tolist()
        ctx.provenance["data"] = {"dataset": self.dataset, "split": self.split or spec.default_split, "indices": indices}
        ctx[self.output] = images.to(ctx.device)
        if self.labels is not None:
            ctx[self.labels] = labels.to(ctx.device)
        ctx.metric("stored", len(images))

    def metrics(self) -> list[str]:
        return ["stored"]


@hookimpl
def amemctl_register_stages() -> list[type[Stage]]:
    return [Load]


@hookimpl
def amemctl_register_datasets() -> list[Dataset]:
    return [
        Dataset(
            "digits",
            "scikit-learn's 1,797 handwritten digits (8x8 grey, offline)",
            splits=("all",),
            default_split="all",
            read=read_digits,
            shape=(1, 8, 8),
        ),
    ]
