"""Corruptions that turn stored images into queries, as the associative-memory papers do.

Each corruption takes a batch N x C x H x W in [0, 1] (or N x d patterns) and a seeded
generator and returns a batch of the same shape, on the same device, still in [0, 1].
Parameters carry amemctl's defaults; the UHN paper's code (Millidge et al. 2022) masks the
bottom half (`side: bottom, rounding: up`) and draws Gaussian noise by its standard deviation,
then takes the absolute value (`std: s, abs: true`); the semantic-memory paper (Salvatori et
al.) uses variance 0.1 with means up to 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import Tensor

from amemctl.core import colour, random
from amemctl.errors import StageError, blame_function
from amemctl.functions import Function
from amemctl.stage import Param, ParamError
from amemctl.suggest import did_you_mean

SIDES = ("top", "bottom", "left", "right")


class Corruption(Function):
    """A named corruption, its declared parameters and the function applying it to a batch.

    `apply(images, generator, **parameters)` gets every parameter, checked and completed
    with its default. Calling the corruption checks the images and the parameters first.
    """

    kind = "corruption"

    def __init__(self, name: str, doc: str, apply: Callable[..., Tensor], params: "dict[str, Param] | None" = None, check: "Callable[[dict[str, Any]], None] | None" = None) -> None:
        super().__init__(name, apply, params, doc, check)

    @property
    def apply(self) -> Callable[..., Tensor]:
        return self.make

    def __call__(self, images: Tensor, generator: torch.Generator | None = None, **params: Any) -> Tensor:
        _check_images(images)
        out = super().__call__(images, generator, **params)  # checked parameters; what it raises is marked as its own
        if not isinstance(out, Tensor) or out.shape != images.shape:
            # a bug of the corruption's: caught here, not as queries that fit no stored key later
            got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
            error = ValueError(f"corruption {self.name!r} returned {got} for images of shape {tuple(images.shape)}; a corruption returns images of the shape it is given")
            raise blame_function(error, self.kind, self.name)
        return out


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or not images.is_floating_point():
        kind = images.dtype if isinstance(images, Tensor) else type(images).__name__
        raise StageError(f"corruptions take float images in [0, 1], got {kind}", hint="load images with a `load` stage, which scales them to [0, 1]")
    if images.dim() < 2:
        raise StageError(f"corruptions take a batch (N x ...), got shape {tuple(images.shape)}")


def _uniform(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return random.rand(like.shape, generator, device=like.device, dtype=like.dtype)


ROUNDINGS = ("nearest", "up")


def _count(size: int, fraction: float, rounding: str = "nearest") -> int:
    """How many of `size` rows a fraction masks: the nearest whole number, or rounded up as
    the UHN code does (it keeps int(size * (1 - fraction)) rows and masks the rest)."""
    return size - int(size * (1 - fraction)) if rounding == "up" else round(size * fraction)


def _rows_mask(images: Tensor, fraction: float, side: str, rounding: str = "nearest") -> Tensor:
    """Boolean mask, broadcastable to the images, over `fraction` of the rows (or columns) from `side`.

    Flat patterns (N x d) count as one row: top/left mask their first features, bottom/right their last.
    """
    if images.dim() == 2:
        d = images.shape[1]
        k = _count(d, fraction, rounding)
        mask = torch.zeros(d, dtype=torch.bool, device=images.device)
        if side in ("top", "left"):
            mask[:k] = True
        elif k:
            mask[d - k :] = True
        return mask
    h, w = images.shape[-2], images.shape[-1]
    mask = torch.zeros(h, w, dtype=torch.bool, device=images.device)
    rows, cols = _count(h, fraction, rounding), _count(w, fraction, rounding)
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


def _variance_or_std(values: dict[str, Any]) -> None:
    if values["variance"] is not None and values["std"] is not None:
        raise ParamError("gaussian takes a variance or a standard deviation, not both", hint="keep `variance:` (amemctl's) or `std:` (the UHN code's sigma)", param="std")


def gaussian(images: Tensor, generator: torch.Generator | None, mean: float, variance: float | None, std: float | None = None, abs: bool = False) -> Tensor:
    """x + mean + noise, clipped to [0, 1]; the noise has the given variance or standard deviation.

    With `abs`, |x + mean + noise| is taken before clipping, as the UHN code's
    `gaussian_perturb_image` does: clamp(abs(x + std * n), 0, 1).
    """
    scale = std if std is not None else math.sqrt(0.1 if variance is None else variance)
    noise = random.randn(images.shape, generator, device=images.device, dtype=images.dtype)
    noisy = images + mean + scale * noise
    return (noisy.abs_() if abs else noisy).clamp_(0, 1)


def mask_zero(images: Tensor, generator: torch.Generator | None, fraction: float, side: str, rounding: str = "nearest") -> Tensor:
    return images.masked_fill(_rows_mask(images, fraction, side, rounding), 0.0)


def mask_noise(images: Tensor, generator: torch.Generator | None, fraction: float, side: str) -> Tensor:
    if side == "random":
        n = images.shape[0]
        picks = random.randint(0, 4, (n,), generator, device=images.device)
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
    drop = random.rand(shape, generator, device=images.device) < p
    return images.masked_fill(drop, 0.0)


def salt_pepper(images: Tensor, generator: torch.Generator | None, p: float) -> Tensor:
    """A fraction p of pixels set to 0 or 1 with equal chance (all channels of a pixel alike)."""
    shape = (images.shape[0], 1, *images.shape[2:]) if images.dim() >= 3 else images.shape
    u = random.rand(shape, generator, device=images.device)
    hit = u < p
    salt = u < p / 2
    out = images.masked_fill(hit, 0.0)
    return out.masked_fill(salt, 1.0)


def _spatial(images: Tensor, kind: str) -> None:
    if images.dim() != 4:
        raise StageError(f"{kind} needs images shaped N x C x H x W, got {tuple(images.shape)}", hint="load images with a `load` stage; flat patterns cannot be cropped or rotated")


def crop(images: Tensor, generator: torch.Generator | None, scale: list) -> Tensor:
    """A zoomed view: a random square crop covering a fraction of the area in `scale`, resized back."""
    from torchvision.ops import roi_align

    _spatial(images, "crop")
    low, high = _pair(scale, "scale")
    n, _, h, w = images.shape
    area = low + (high - low) * random.rand((n,), generator, device=images.device)
    side_h, side_w = area.sqrt() * h, area.sqrt() * w
    top = random.rand((n,), generator, device=images.device) * (h - side_h)
    left = random.rand((n,), generator, device=images.device) * (w - side_w)
    boxes = torch.stack([torch.arange(n, device=images.device, dtype=images.dtype), left, top, left + side_w, top + side_h], 1)
    return roi_align(images, boxes.to(images.dtype), output_size=(h, w), spatial_scale=1.0, sampling_ratio=2, aligned=True).clamp_(0, 1)


def inpaint(images: Tensor, generator: torch.Generator | None, fraction: float) -> Tensor:
    """The border zeroed, the centre kept: `fraction` of each side is masked, half on each edge (UHN paper)."""
    _spatial(images, "inpaint")
    h, w = images.shape[-2:]
    dh, dw = int(h * fraction // 2), int(w * fraction // 2)
    keep = torch.zeros(h, w, dtype=torch.bool, device=images.device)
    keep[dh : h - dh, dw : w - dw] = True
    return images.masked_fill(~keep, 0.0)


def color(images: Tensor, generator: torch.Generator | None, brightness: float, saturation: float, hue: float, channels: float) -> Tensor:
    """A random colour filter per image: channel gains, brightness, saturation and hue changes."""
    _spatial(images, "color")
    if images.shape[1] != 3:
        raise StageError(f"color needs RGB images (3 channels), got {images.shape[1]}", hint="use another corruption for grey images, or load colour images")
    n = images.shape[0]

    def factors(strength: float) -> Tensor:
        u = random.rand((n, 1, 1, 1), generator, device=images.device, dtype=images.dtype)
        return 1 + strength * (2 * u - 1)

    gains = 1 + channels * (2 * random.rand((n, 3, 1, 1), generator, device=images.device, dtype=images.dtype) - 1)
    out = (images * gains * factors(brightness)).clamp(0, 1)
    out = colour.adjust_saturation(out, factors(saturation).view(n))
    if hue > 0:
        shifts = hue * (2 * random.rand((n,), generator, device=images.device, dtype=images.dtype) - 1)
        out = colour.adjust_hue(out, shifts)
    return out.clamp_(0, 1)


def rotate(images: Tensor, generator: torch.Generator | None, angles: list) -> Tensor:
    """Each image turned by an angle drawn from `angles` (degrees; the paper's {0, 90, -90, 180})."""
    from torchvision.transforms.v2 import functional as F

    _spatial(images, "rotate")
    if not angles:
        raise StageError("rotate needs at least one angle", hint="e.g. angles: [0, 90, -90, 180]")
    choice = random.randint(0, len(angles), (images.shape[0],), generator, device=images.device)
    out = images.clone()
    for i, angle in enumerate(angles):
        chosen = choice == i
        if chosen.any():
            out[chosen] = F.rotate(images[chosen], float(angle))
    return out


def compose(images: Tensor, generator: torch.Generator | None, steps: list, find: "Callable[[str], Corruption] | None" = None) -> Tensor:
    """Several corruptions in order, each a mapping {kind: ..., parameters...}, drawing from one generator.

    `find` gives the corruption a step's kind names: the built-in ones by default; the
    `corrupt` stage passes its registry's, so plugin corruptions compose too.
    """
    find = find or get_corruption
    for i, step in enumerate(steps, 1):
        try:
            kind = compose_step_kind(step)
        except StageError as exc:
            raise StageError(f"step {i} of compose: {exc.message}", hint=exc.hint) from None
        images = find(kind)(images, generator, **{k: v for k, v in step.items() if k != "kind"})
    return images


def compose_step_kind(step: Any) -> str:
    """The corruption a compose step names: refused when it names none, or compose itself."""
    kind = step.get("kind") if isinstance(step, Mapping) else None
    if kind is None or kind == "compose":
        raise StageError(f"needs a known `kind` other than compose, got {kind!r}", hint="e.g. steps: [{kind: crop}, {kind: gaussian, variance: 0.05}]")
    return kind


def _angles(value: object) -> None:
    if not isinstance(value, list) or not value or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise StageError(f"angles must be a non-empty list of degrees, got {value!r}", hint="e.g. angles: [0, 90, -90, 180]")


def _pair(value: object, name: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(isinstance(v, (int, float)) for v in value):
        raise StageError(f"{name} must be two numbers [low, high], got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not 0 < low <= high <= 1:
        raise StageError(f"{name} = [{low}, {high}] is out of range", hint=f"{name} needs 0 < low <= high <= 1")
    return low, high


def _fraction(doc: str = "fraction of the rows (or columns) masked") -> Param:
    return Param(float, 0.5, doc, min=0.0, max=1.0)


def _probability(default: float, doc: str) -> Param:
    return Param(float, default, doc, min=0.0, max=1.0)


CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption("none", "the images unchanged", none),
        Corruption(
            "gaussian",
            "additive Gaussian noise of the given mean and variance (or std), clipped to [0, 1]",
            gaussian,
            {
                "mean": Param(float, 0.0, "mean of the noise (semantic-memory paper: 0 to 0.5)", min=-1.0, max=1.0),
                "variance": Param(float, None, "variance of the noise (default 0.1 when std is not given)", min=0.0),
                "std": Param(float, None, "standard deviation of the noise instead of its variance (the UHN code's sigma)", min=0.0),
                "abs": Param(bool, False, "take the absolute value before clipping (the UHN code's)"),
            },
            check=_variance_or_std,
        ),
        Corruption(
            "mask_zero",
            "a fraction of the rows from one side set to zero (the UHN code: the bottom half)",
            mask_zero,
            {
                "fraction": _fraction(),
                "side": Param(str, "top", "which side is masked", choices=SIDES),
                "rounding": Param(str, "nearest", "masked rows: the nearest whole number, or rounded up (the UHN code's)", choices=ROUNDINGS),
            },
        ),
        Corruption(
            "mask_noise",
            "a fraction of the image from one side replaced by uniform noise",
            mask_noise,
            {"fraction": _fraction(), "side": Param(str, "bottom", "which side (or random per image)", choices=(*SIDES, "random"))},
        ),
        Corruption("random_mask", "each pixel zeroed with probability p", random_mask, {"p": _probability(0.5, "probability that a pixel is zeroed")}),
        Corruption("salt_pepper", "a fraction p of pixels set to 0 or 1", salt_pepper, {"p": _probability(0.1, "fraction of pixels hit")}),
        Corruption("crop", "a zoomed view: a random square crop resized back to full size", crop, {"scale": Param(list, [0.3, 0.6], "[low, high]: range of the fraction of the area kept", items=float, validate=lambda v: _pair(v, "scale"))}),
        Corruption("inpaint", "the border zeroed and the centre kept (UHN paper)", inpaint, {"fraction": Param(float, 0.5, "fraction of each side masked, half on each edge; under 1, so the centre stays", min=0.0, below=1.0)}),
        Corruption(
            "color",
            "a random colour filter per image (channel gains, brightness, saturation, hue)",
            color,
            {
                "brightness": _probability(0.4, "largest relative change of brightness"),
                "saturation": _probability(0.6, "largest relative change of saturation"),
                "hue": Param(float, 0.1, "largest hue shift, as a fraction of the colour circle", min=0.0, max=0.5),
                "channels": _probability(0.5, "largest relative gain of a single colour channel"),
            },
        ),
        Corruption("rotate", "each image turned by an angle drawn from a set", rotate, {"angles": Param(list, [0, 90, -90, 180], "the angles in degrees to draw from", items=float, validate=_angles)}),
        Corruption("compose", "several corruptions applied in order", compose, {"steps": Param(list, [], "the corruptions in order, each {kind: ..., parameters}", items=dict)}),
    )
}


def get_corruption(name: str) -> Corruption:
    """The corruption called `name`, or a StageError listing the ones there are."""
    if name in CORRUPTIONS:
        return CORRUPTIONS[name]
    raise StageError(f"unknown corruption {name!r}", hint=did_you_mean(name, CORRUPTIONS) or f"choose one of {', '.join(CORRUPTIONS)}")


def corrupt(images: Tensor, kind: str, generator: torch.Generator | None = None, **params: Any) -> Tensor:
    """Apply the corruption `kind` with `params` to a batch of images, as a pipeline's `corrupt` does.

    `kind` is looked up in the plugin registry, so an installed plugin's corruptions are known by
    name here too, also as the steps of a `compose`.
    """
    from amemctl.plugins import get_registry, lookup  # loads the plugins on first use

    def find(name: str) -> Corruption:
        return lookup(get_registry(), "corruptions", name)

    if kind == "compose":  # its steps are found in the same registry, as the corrupt stage finds them
        return compose(images, generator, find("compose").configure(params)["steps"], find=find)
    return find(kind)(images, generator, **params)
