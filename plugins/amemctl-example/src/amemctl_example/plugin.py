"""The module amemctl loads through the entry point: one function per hook it implements.

One of each thing a plugin can add: a stage (`pca`), similarities (`chebyshev`, and
`minkowski` with a parameter), a separation (`cubic`), a corruption (`dropout_rows`), an
encoder architecture (`linear`) and a dataset (`bars`). Everything comes from the public API, `import amemctl`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import amemctl
from amemctl import (
    Corruption,
    Dataset,
    Elementwise,
    EncoderArchitecture,
    Loaded,
    Param,
    Request,
    SeparationFunction,
    Similarity,
    SimilarityFunction,
    Stage,
    hookimpl,
)
from amemctl_example.pca import PCA


def chebyshev(queries: Tensor, keys: Tensor) -> Tensor:
    """L-infinity distance: the largest difference in any one feature."""
    return torch.cdist(queries, keys, p=float("inf"))


def minkowski(p: float) -> Similarity:
    """The Minkowski distance of order p, a similarity with a parameter: `score: {similarity: minkowski, p: 3}`."""
    return Similarity("minkowski", lambda queries, keys: torch.cdist(queries, keys, p=p), distance=True)


def cubic(normalize: bool = False) -> Elementwise:
    """Weights max(s, 0)^3: a dense associative memory's rectified cubic, streamed like any elementwise one."""
    return Elementwise("cubic", lambda s: s.clamp_min(0) ** 3, normalize=normalize)


def dropout_rows(images: Tensor, generator: torch.Generator | None, p: float) -> Tensor:
    """Each image row (the last-but-one axis; each feature of flat patterns) zeroed with probability p."""
    shape = (*images.shape[:-1], 1) if images.dim() >= 3 else images.shape
    keep = amemctl.random.rand(shape, generator, device=images.device) >= p  # any generator, any device
    return images * keep.to(images.dtype)


class Flatten(nn.Module):
    """phi as one linear map of the flattened image: the smallest encoder there is."""

    def __init__(self, pixels: int, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(pixels, width)

    def forward(self, images: Tensor) -> Tensor:
        return self.linear(images.flatten(1))


def linear_encoder(cifar_stem: bool, pixels: int) -> nn.Module:
    return Flatten(pixels, 32)  # cifar_stem is for ResNets; a linear map has no stem


def read_bars(request: Request) -> Loaded:
    """16 binary 8x8 images: each one horizontal bar (8) or one vertical bar (8); label = which."""
    images = torch.zeros(16, 1, 8, 8)
    for i in range(8):
        images[i, 0, i, :] = 1
        images[8 + i, 0, :, i] = 1
    return Loaded(images, torch.arange(16, dtype=torch.int64))


@hookimpl
def amemctl_register_stages() -> list[type[Stage]]:
    return [PCA]


@hookimpl
def amemctl_register_similarities() -> list[Similarity | SimilarityFunction]:
    return [
        Similarity("chebyshev", chebyshev, distance=True, doc="L-infinity distance max |q-k|"),
        SimilarityFunction("minkowski", minkowski, {"p": Param(float, 3.0, "the order p of the distance (sum |q - k|^p)^(1/p)", min=1)}, doc="Minkowski distance of order p", distance=True),
    ]


@hookimpl
def amemctl_register_separations() -> list[SeparationFunction]:
    return [SeparationFunction("cubic", cubic, {"normalize": Param(bool, False, "divide the weights by their sum")}, doc="max(s, 0)^3, a rectified cubic")]


@hookimpl
def amemctl_register_corruptions() -> list[Corruption]:
    return [Corruption("dropout_rows", "whole image rows zeroed, each with probability p", dropout_rows, {"p": Param(float, 0.25, "probability that a row is zeroed", min=0, max=1)})]


@hookimpl
def amemctl_register_encoders() -> list[EncoderArchitecture]:
    doc = "one linear map of the flattened image to 32 features (seeded random, or a checkpoint)"
    return [EncoderArchitecture("linear", linear_encoder, 32, {"pixels": Param(int, 3 * 8 * 8, "pixels per image, channels included (images arrive as 3 channels)", min=1)}, doc=doc)]


@hookimpl
def amemctl_register_datasets() -> list[Dataset]:
    return [Dataset("bars", "16 binary 8x8 bars, horizontal and vertical (generated)", ("all",), "all", read_bars, (1, 8, 8))]
