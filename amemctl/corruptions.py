"""Corruptions that turn stored images into queries, as the associative-memory papers do.

Each corruption takes a batch N x C x H x W in [0, 1] (or N x d patterns) and a seeded
generator and returns a batch of the same shape, on the same device, still in [0, 1].
Parameters carry the papers' defaults: the UHN paper (Millidge et al. 2022) masks the top
half and adds zero-mean Gaussian noise of a given variance; the semantic-memory paper
(Salvatori et al.) uses variance 0.1 with means up to 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from amemctl.errors import StageError
from amemctl.suggest import did_you_mean

SIDES = ("top", "bottom", "left", "right")


@dataclass(frozen=True)
class Spec:
    """One parameter of a corruption: default, documentation and allowed range."""

    default: Any
    doc: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Corruption:
    """A named corruption, its parameters and the function applying it to a batch."""

    name: str
    doc: str
    apply: Callable[..., Tensor]
    params: dict[str, Spec] = field(default_factory=dict)

    def resolve(self, given: dict[str, Any]) -> dict[str, Any]:
        """The full parameter set: given values checked against their ranges, defaults for the rest."""
        unknown = [k for k in given if k not in self.params]
        if unknown:
            accepted = ", ".join(self.params) or "no parameters"
            raise StageError(f"corruption {self.name!r} takes no parameter {unknown[0]!r}", hint=f"{self.name} accepts {accepted}")
        resolved = {}
        for key, spec in self.params.items():
            value = given.get(key, spec.default)
            if spec.choices is not None and value not in spec.choices:
                raise StageError(f"{key}={value!r} is not valid for {self.name}", hint=f"choose one of {', '.join(map(str, spec.choices))}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
                    raise StageError(f"{key}={value} is out of range for {self.name}", hint=f"{key} must lie in [{spec.low}, {spec.high}]: {spec.doc}")
            resolved[key] = value
        return resolved

    def __call__(self, images: Tensor, generator: torch.Generator | None = None, **params: Any) -> Tensor:
        _check_images(images)
        return self.apply(images, generator, **self.resolve(params))


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or not images.is_floating_point():
        kind = images.dtype if isinstance(images, Tensor) else type(images).__name__
        raise StageError(f"corruptions take float images in [0, 1], got {kind}", hint="load images with a `load` stage, which scales them to [0, 1]")
    if images.dim() < 2:
        raise StageError(f"corruptions take a batch (N x ...), got shape {tuple(images.shape)}")


def _uniform(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def _rows_mask(images: Tensor, fraction: float, side: str) -> Tensor:
    """Boolean mask, broadcastable to the images, over `fraction` of the rows (or columns) from `side`.

    Flat patterns (N x d) count as one row: top/left mask their first features, bottom/right their last.
    """
    if images.dim() == 2:
        d = images.shape[1]
        k = round(d * fraction)
        mask = torch.zeros(d, dtype=torch.bool, device=images.device)
        if side in ("top", "left"):
            mask[:k] = True
        elif k:
            mask[d - k :] = True
        return mask
    h, w = images.shape[-2], images.shape[-1]
    mask = torch.zeros(h, w, dtype=torch.bool, device=images.device)
    rows, cols = round(h * fraction), round(w * fraction)
    if side == "top":
        mask[:rows] = True
    elif side == "bottom" and rows:
        mask[h - rows :] = True
    elif side == "left":
        mask[:, :cols] = True
    elif side == "right" and cols:
        mask[:, w - cols :] = True
    return mask


def none(images: Tensor, generator: torch.Generator | None) -> Tensor:
    return images.clone()


def gaussian(images: Tensor, generator: torch.Generator | None, mean: float, variance: float) -> Tensor:
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return (images + mean + math.sqrt(variance) * noise).clamp_(0, 1)


def mask_zero(images: Tensor, generator: torch.Generator | None, fraction: float, side: str) -> Tensor:
    return images.masked_fill(_rows_mask(images, fraction, side), 0.0)


def mask_noise(images: Tensor, generator: torch.Generator | None, fraction: float, side: str) -> Tensor:
    if side == "random":
        n = images.shape[0]
        picks = torch.randint(0, 4, (n,), generator=generator, device=images.device)
        out = images.clone()
        for i, s in enumerate(SIDES):
            chosen = picks == i
            if chosen.any():
                out[chosen] = mask_noise(images[chosen], generator, fraction, s)
        return out
    mask = _rows_mask(images, fraction, side)
    return torch.where(mask, _uniform(images, generator), images)


def random_mask(images: Tensor, generator: torch.Generator | None, p: float) -> Tensor:
    """Each pixel (all its channels together) zeroed with probability p."""
    shape = (images.shape[0], 1, *images.shape[2:]) if images.dim() >= 3 else images.shape
    drop = torch.rand(shape, generator=generator, device=images.device) < p
    return images.masked_fill(drop, 0.0)


def salt_pepper(images: Tensor, generator: torch.Generator | None, p: float) -> Tensor:
    """A fraction p of pixels set to 0 or 1 with equal chance (all channels of a pixel alike)."""
    shape = (images.shape[0], 1, *images.shape[2:]) if images.dim() >= 3 else images.shape
    u = torch.rand(shape, generator=generator, device=images.device)
    hit = u < p
    salt = u < p / 2
    out = images.masked_fill(hit, 0.0)
    return out.masked_fill(salt, 1.0)


_FRACTION = Spec(0.5, "fraction of the rows (or columns) masked", 0.0, 1.0)

CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption("none", "the images unchanged", none),
        Corruption(
            "gaussian",
            "additive Gaussian noise of the given mean and variance, clipped to [0, 1]",
            gaussian,
            {"mean": Spec(0.0, "mean of the noise (semantic-memory paper: 0 to 0.5)", -1.0, 1.0), "variance": Spec(0.1, "variance of the noise", 0.0, None)},
        ),
        Corruption(
            "mask_zero",
            "a fraction of the rows from one side set to zero (UHN paper: the top half)",
            mask_zero,
            {"fraction": _FRACTION, "side": Spec("top", "which side is masked", choices=SIDES)},
        ),
        Corruption(
            "mask_noise",
            "a fraction of the image from one side replaced by uniform noise",
            mask_noise,
            {"fraction": _FRACTION, "side": Spec("bottom", "which side (or random per image)", choices=(*SIDES, "random"))},
        ),
        Corruption("random_mask", "each pixel zeroed with probability p", random_mask, {"p": Spec(0.5, "probability that a pixel is zeroed", 0.0, 1.0)}),
        Corruption("salt_pepper", "a fraction p of pixels set to 0 or 1", salt_pepper, {"p": Spec(0.1, "fraction of pixels hit", 0.0, 1.0)}),
    )
}


def get_corruption(name: str) -> Corruption:
    """The corruption called `name`, or a StageError listing the ones there are."""
    if name in CORRUPTIONS:
        return CORRUPTIONS[name]
    raise StageError(f"unknown corruption {name!r}", hint=did_you_mean(name, CORRUPTIONS) or f"choose one of {', '.join(CORRUPTIONS)}")


def corrupt(images: Tensor, kind: str, generator: torch.Generator | None = None, **params: Any) -> Tensor:
    """Apply the corruption `kind` with `params` to a batch of images."""
    return get_corruption(kind)(images, generator, **params)
