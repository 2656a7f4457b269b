"""The module amemctl loads through the entry point: one function per hook it implements."""

from __future__ import annotations

import torch

from amemctl import Similarity, Stage, hookimpl
from amemctl_example.pca import PCA


def chebyshev(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """L-infinity distance: the largest difference in any one feature."""
    return torch.cdist(queries, keys, p=float("inf"))


@hookimpl
def amemctl_register_stages() -> list[type[Stage]]:
    return [PCA]


@hookimpl
def amemctl_register_similarities() -> list[Similarity]:
    return [Similarity("chebyshev", chebyshev, distance=True, doc="L-infinity distance max |q-k|")]
