"""SimCLR's random views for a whole batch at once, on the batch's device.

torchvision's v2 transforms draw one set of random parameters per call, so a per-image view
generator means a Python loop over images on the CPU, which bounds SimCLR training at a few
thousand images per second however fast the GPU is. Here every random parameter is drawn per
image as one small tensor (from a CPU generator, so views do not depend on the device), and
each augmentation is a few tensor ops over the batch:

- random resized crop (torchvision's sampling: 10 tries of area and log-aspect, then the
  centre crop) with the horizontal flip folded in, as one affine grid and a bilinear
  `grid_sample` (what `resized_crop` does without antialiasing; crops only ever enlarge);
- colour jitter with probability 0.8 (brightness, contrast, saturation 0.8 s, hue 0.2 s, in
  a random order per image, as torchvision's ColorJitter);
- grey with probability p; optional Gaussian blur (p = 0.5, sigma in [0.1, 2]), per-channel
  colour filters and right-angle turns;
- optional random erasing (a rectangle of 2-50% of the area, aspect ratio in [0.3, 3.3], filled
  with uniform noise in [0, 1]: torchvision's RandomErasing draws its rectangle so, but up to 0.33
  of the area, and with value="random" fills it with normal noise) and additive Gaussian noise (p = 0.5, std
  drawn in [0, noise]): not SimCLR's, they teach phi to ignore occlusions and sensor noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from amemctl.core import colour, random

#: torchvision's RandomResizedCrop aspect ratios
RATIO = (3 / 4, 4 / 3)
TRIES = 10


@dataclass(frozen=True)
class ViewSpec:
    """What one SimCLR view does to an image (the augmentation part of SimCLRConfig)."""

    size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    jitter: float = 0.5
    jitter_p: float = 0.8
    grayscale: float = 0.2
    blur: bool = False
    filters: float = 0.0
    rotations: float = 0.0
    erase: float = 0.0  #: probability of erasing a random rectangle
    noise: float = 0.0  #: largest standard deviation of the additive Gaussian noise


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], generator: torch.Generator) -> Tensor:
    """n boxes (top, left, h, w) drawn as torchvision's RandomResizedCrop.get_params draws one."""
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * random.rand((n, TRIES), generator, dtype=torch.float64))
    log_low, log_high = math.log(RATIO[0]), math.log(RATIO[1])
    aspect = torch.exp(log_low + (log_high - log_low) * random.rand((n, TRIES), generator, dtype=torch.float64))
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.int8).argmax(dim=1, keepdim=True)
    found = ok.any(dim=1)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    fallback_w, fallback_h = _centre_crop(height, width)
    w = torch.where(found, w, torch.full_like(w, fallback_w))
    h = torch.where(found, h, torch.full_like(h, fallback_h))
    u = random.rand((n, 2), generator, dtype=torch.float64)
    top = torch.where(found, torch.floor(u[:, 0] * (height - h + 1)), torch.full_like(h, (height - fallback_h) // 2))
    left = torch.where(found, torch.floor(u[:, 1] * (width - w + 1)), torch.full_like(w, (width - fallback_w) // 2))
    return torch.stack((top, left, h, w), dim=1)


def _centre_crop(height: int, width: int) -> tuple[int, int]:
    """torchvision's fallback crop (width, height) when no try fits: the whole image within the ratios."""
    ratio = width / height
    if ratio < RATIO[0]:
        return width, int(round(width / RATIO[0]))
    if ratio > RATIO[1]:
        return int(round(height * RATIO[1])), height
    return width, height


def resized_crops(images: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """Each image's box (top, left, h, w) resized bilinearly to size x size, mirrored where `flip`.

    The same samples as torchvision's `resized_crop` without antialiasing (F.interpolate with
    align_corners=False: source positions clamped to the box), for every image in one
    `grid_sample`.
    """
    n, _, height, width = images.shape
    top, left, h, w = random.moved(boxes, images.device, torch.float32).unbind(dim=1)
    steps = torch.arange(size, device=images.device, dtype=torch.float32) + 0.5

    def positions(start: Tensor, extent: Tensor, side: int) -> Tensor:
        inside = (steps * (extent[:, None] / size) - 0.5).clamp(min=0)
        inside = torch.minimum(inside, extent[:, None] - 1)
        return (2 * (start[:, None] + inside) + 1) / side - 1  # grid_sample's [-1, 1], align_corners=False

    xs, ys = positions(left, w, width), positions(top, h, height)
    if flip is not None:
        xs = torch.where(random.moved(flip, images.device)[:, None], xs.flip(1), xs)
    grid = torch.stack((xs[:, None, :].expand(n, size, size), ys[:, :, None].expand(n, size, size)), dim=-1)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * random.rand((n,), generator)


def jitter(images: Tensor, strength: float, p: float, generator: torch.Generator) -> Tensor:
    """torchvision's ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s), each image with probability p and its own order."""
    n = len(images)
    s, h = 0.8 * strength, 0.2 * strength
    applied = random.rand((n,), generator) < p
    factors = [_uniform(n, max(0.0, 1 - s), 1 + s, generator) for _ in range(3)] + [_uniform(n, -h, h, generator)]
    order = random.rand((n, 4), generator).argsort(dim=1)  # a random permutation of the four per image
    ops = (colour.adjust_brightness, colour.adjust_contrast, colour.adjust_saturation, colour.adjust_hue)
    out = images.clone()
    for position in range(4):
        for k, op in enumerate(ops):
            chosen = torch.nonzero(applied & (order[:, position] == k)).squeeze(1)  # on the CPU: no device sync
            if len(chosen):
                rows = random.moved(chosen, images.device)
                out[rows] = op(out[rows], factors[k][chosen])
    return out


def blur(images: Tensor, generator: torch.Generator) -> Tensor:
    """Gaussian blur with probability 0.5, sigma in [0.1, 2] per image, kernel ~10% of the side (reflect padding)."""
    n, c, height, width = images.shape
    k = max(3, int(0.1 * width) // 2 * 2 + 1)
    sigma = random.moved(_uniform(n, 0.1, 2.0, generator), images.device, images.dtype)
    sigma = torch.where(random.rand((n,), generator, device=images.device) < 0.5, sigma, torch.zeros_like(sigma))
    x = torch.arange(k, device=images.device, dtype=images.dtype) - k // 2
    kernel = torch.exp(-(x**2) / (2 * sigma.clamp_min(1e-6)[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # sigma 0 (no blur): a unit impulse
    kernel = kernel.repeat_interleave(c, dim=0)  # one kernel per image and channel
    flat = F.pad(images.reshape(1, n * c, height, width), (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, k), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, k, 1), groups=n * c)
    return flat.view(n, c, height, width)


def turn(images: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """A right-angle turn (90, 180 or 270 degrees, uniformly) of each image with probability p (square images)."""
    n = len(images)
    quarter = random.randint(1, 4, (n,), generator, device=images.device)
    quarter = torch.where(random.rand((n,), generator, device=images.device) < p, quarter, torch.zeros_like(quarter))
    out = images
    for k in (1, 2, 3):
        out = torch.where((quarter == k).view(-1, 1, 1, 1), torch.rot90(images, k, dims=(-2, -1)), out)
    return out


#: random erasing: the range of the erased area fraction and of the rectangle's aspect ratio
ERASE_SCALE = (0.02, 0.5)
ERASE_RATIO = (0.3, 3.3)


def erase_boxes(n: int, height: int, width: int, generator: torch.Generator) -> Tensor:
    """n rectangles (top, left, h, w), each drawn to cover 2-50% of the image at an aspect ratio in [0.3, 3.3].

    A side longer than the image is cut to it (the rectangle then covers less), where
    torchvision's RandomErasing redraws up to 10 times and erases nothing if none fits:
    about 1 draw in 11 (long thin ones) differs; kept so that trained encoders stay reproducible.
    """
    area = height * width * _uniform(n, *ERASE_SCALE, generator)
    aspect = torch.exp(_uniform(n, math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]), generator))
    h = torch.sqrt(area / aspect).round().clamp(1, height)
    w = torch.sqrt(area * aspect).round().clamp(1, width)
    top = torch.floor(random.rand((n,), generator) * (height - h + 1))
    left = torch.floor(random.rand((n,), generator) * (width - w + 1))
    return torch.stack((top, left, h, w), dim=1)


def erase(images: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """With probability p per image, a random rectangle (erase_boxes) replaced by uniform noise in [0, 1]."""
    n, _, height, width = images.shape
    top, left, h, w = random.moved(erase_boxes(n, height, width, generator), images.device).unbind(dim=1)
    chosen = random.rand((n,), generator, device=images.device) < p
    rows = torch.arange(height, device=images.device)[None, :]
    cols = torch.arange(width, device=images.device)[None, :]
    inside_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    inside_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    mask = (inside_rows[:, :, None] & inside_cols[:, None, :] & chosen[:, None, None]).unsqueeze(1)
    filling = random.rand(images.shape, generator, device=images.device, dtype=images.dtype)
    return torch.where(mask, filling, images)


def noise(images: Tensor, largest: float, generator: torch.Generator) -> Tensor:
    """With probability 0.5 per image, Gaussian noise of a standard deviation drawn in [0, largest] added, clipped to [0, 1]."""
    n = len(images)
    std = largest * random.rand((n,), generator) * (random.rand((n,), generator) < 0.5)
    draws = random.randn(images.shape, generator, device=images.device, dtype=images.dtype)
    return (images + random.moved(std, images.device, images.dtype).view(-1, 1, 1, 1) * draws).clamp_(0, 1)


def views(images: Tensor, spec: ViewSpec, generator: torch.Generator) -> Tensor:
    """One random SimCLR view of every image (N x 3 x H x W in [0, 1]) -> N x 3 x size x size."""
    n, _, height, width = images.shape
    boxes = crop_boxes(n, height, width, spec.crop_scale, generator)
    flip = random.rand((n,), generator) < 0.5
    out = resized_crops(images, boxes, spec.size, flip)
    if spec.jitter > 0 and spec.jitter_p > 0:
        out = jitter(out, spec.jitter, spec.jitter_p, generator)
    if spec.grayscale > 0:
        grey = random.rand((n,), generator, device=images.device) < spec.grayscale
        out = torch.where(grey.view(-1, 1, 1, 1), colour.grayscale(out).expand_as(out), out)
    if spec.blur:
        out = blur(out, generator)
    if spec.filters > 0:
        gains = 1 + spec.filters * (2 * random.rand((n, 3, 1, 1), generator, device=images.device, dtype=out.dtype) - 1)
        out = (out * gains).clamp_(0, 1)
    if spec.rotations > 0:
        out = turn(out, spec.rotations, generator)
    if spec.erase > 0:
        out = erase(out, spec.erase, generator)
    if spec.noise > 0:
        out = noise(out, spec.noise, generator)
    return out
