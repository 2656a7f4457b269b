"""Colour operations on whole batches with a different factor per image.

torchvision's functional colour ops take one factor for the whole batch, so per-image
randomness (SimCLR's colour jitter, the `color` corruption) would otherwise mean a Python loop
over images. These take a factor per image (a tensor of N values) and run as a handful of
tensor ops on any device; they agree with torchvision's per-image results to rounding
(tests compare them). Images are N x 3 x H x W in [0, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor

from amemctl.core import random

#: luma weights (ITU-R 601-2), exactly as torchvision's rgb_to_grayscale
LUMA = (0.2989, 0.587, 0.114)

#: per hue sector (0..5), which of (v, p, q, t) each of r, g, b takes (hsv_to_rgb)
SECTORS = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]])


def grayscale(images: Tensor) -> Tensor:
    """N x 1 x H x W luma of N x 3 x H x W images."""
    r, g, b = images.unbind(dim=-3)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(-3)


def _per_image(factors: Tensor, images: Tensor) -> Tensor:
    return random.moved(factors, images.device, images.dtype).reshape(-1, *([1] * (images.dim() - 1)))


def _blend(images: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    return (ratio * images + (1 - ratio) * other).clamp_(0, 1)


def adjust_brightness(images: Tensor, factors: Tensor) -> Tensor:
    """Each image scaled by its factor (0 gives black, 1 the image)."""
    return (images * _per_image(factors, images)).clamp_(0, 1)


def adjust_contrast(images: Tensor, factors: Tensor) -> Tensor:
    """Each image blended with the mean of its grey levels (0 gives a flat grey image)."""
    mean = grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, _per_image(factors, images))


def adjust_saturation(images: Tensor, factors: Tensor) -> Tensor:
    """Each image blended with its grey version (0 gives grey, 1 the image)."""
    return _blend(images, grayscale(images), _per_image(factors, images))


def rgb_to_hsv(images: Tensor) -> Tensor:
    """Hue (a fraction of the colour circle), saturation and value, stacked like the channels."""
    r, g, b = images.unbind(dim=-3)
    high, _ = images.max(dim=-3)
    low, _ = images.min(dim=-3)
    spread = high - low
    flat = spread == 0
    safe = torch.where(flat, torch.ones_like(spread), spread)
    saturation = spread / torch.where(high == 0, torch.ones_like(high), high)
    rc, gc, bc = (high - r) / safe, (high - g) / safe, (high - b) / safe
    hue = torch.where(high == r, bc - gc, torch.where(high == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(flat, torch.zeros_like(hue), (hue / 6.0) % 1.0)
    return torch.stack((hue, saturation, high), dim=-3)


def hsv_to_rgb(images: Tensor) -> Tensor:
    """The inverse of rgb_to_hsv."""
    h, s, v = images.unbind(dim=-3)
    h6 = (h % 1.0) * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    p = (v * (1 - s)).clamp(0, 1)
    q = (v * (1 - s * f)).clamp(0, 1)
    t = (v * (1 - s * (1 - f))).clamp(0, 1)
    sector = sector.long() % 6
    # the table reaches a GPU from pinned memory without blocking: torch.tensor(..., device=) would
    # wait for the GPU (a blocking copy), once per call, and SimCLR's jitter calls this per view
    table = random.moved(SECTORS, images.device)
    choices = torch.stack((v, p, q, t), dim=-3)
    index = table[:, sector].movedim(0, -3)
    return choices.gather(-3, index)


def adjust_hue(images: Tensor, shifts: Tensor) -> Tensor:
    """Each image's hue turned by its shift (a fraction of the colour circle, -0.5 to 0.5)."""
    hsv = rgb_to_hsv(images)
    hue = (hsv[:, :1] + _per_image(shifts, images)) % 1.0
    return hsv_to_rgb(torch.cat((hue, hsv[:, 1:]), dim=1))
