"""Batched colour ops, SimCLR views and device-safe random draws against torchvision, image by image."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from amemctl.core import colour, random
from amemctl.training import augment

PACKAGE = Path(__file__).resolve().parents[1] / "amemctl"


def _images(n: int = 24, side: int = 12, seed: int = 0) -> torch.Tensor:
    x = torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))
    x[0] = 0.5  # grey: no hue
    x[1] = 0.0  # black
    x[2] = x[2].round()  # saturated primaries and white
    x[3, :, :2] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # pure red, where hue wraps around
    return x


@pytest.mark.parametrize("name,low,high", [("brightness", 0.0, 2.0), ("contrast", 0.0, 2.0), ("saturation", 0.0, 2.0), ("hue", -0.5, 0.5)])
def test_each_colour_op_with_a_factor_per_image_equals_torchvision_image_by_image(name, low, high):
    x = _images()
    factors = low + (high - low) * torch.rand(len(x), generator=torch.Generator().manual_seed(1))
    ours = getattr(colour, f"adjust_{name}")(x, factors)
    reference = torch.stack([getattr(TF, f"adjust_{name}")(img, float(f)) for img, f in zip(x, factors)])
    torch.testing.assert_close(ours, reference, atol=2e-6, rtol=0)


def test_hsv_round_trip_and_grayscale():
    x = _images()
    torch.testing.assert_close(colour.hsv_to_rgb(colour.rgb_to_hsv(x)), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(colour.grayscale(x), TF.rgb_to_grayscale(x), atol=3e-7, rtol=0)


def test_crops_resize_as_torchvision_resized_crop_and_flip_mirrors():
    x = _images(side=16)
    boxes = augment.crop_boxes(len(x), 16, 16, (0.08, 1.0), torch.Generator().manual_seed(2))
    ours = augment.resized_crops(x, boxes, 16)
    reference = torch.stack([TF.resized_crop(img, *(int(v) for v in box), [16, 16], antialias=False) for img, box in zip(x, boxes)])
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)
    flipped = augment.resized_crops(x, boxes, 16, flip=torch.arange(len(x)) % 2 == 1)
    torch.testing.assert_close(flipped[1::2], reference[1::2].flip(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(flipped[::2], reference[::2], atol=1e-6, rtol=0)


def test_crop_boxes_follow_torchvision_bounds_areas_and_ratios():
    n, h, w = 4000, 32, 32
    boxes = augment.crop_boxes(n, h, w, (0.2, 0.5), torch.Generator().manual_seed(3))
    top, left, bh, bw = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    area = bh * bw / (h * w)
    # rounding the sides moves the area a little past the drawn range, never far
    assert area.min() > 0.15 and area.max() < 0.57 and 0.3 < area.mean() < 0.4
    ratio = bw / bh
    assert ratio.min() > 0.6 and ratio.max() < 1.6
    assert len(set(top.tolist())) > 10 and len(set(left.tolist())) > 10  # positions vary
    # an impossible scale falls back to torchvision's centre crop (the whole image within the ratios)
    wide = augment.crop_boxes(3, 10, 40, (1.0, 1.0), torch.Generator().manual_seed(0))
    assert wide[:, 2].tolist() == [10.0] * 3 and wide[:, 3].tolist() == [13.0] * 3 and wide[:, 1].tolist() == [13.0] * 3


def test_jitter_applies_torchvisions_ops_in_each_images_own_order():
    x = _images(n=40)
    strength, p, seed = 0.5, 0.8, 4
    ours = augment.jitter(x, strength, p, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)  # the same draws, in the same order, replayed by hand
    s, hue = 0.8 * strength, 0.2 * strength
    applied = torch.rand(len(x), generator=g) < p
    factors = [(1 - s) + 2 * s * torch.rand(len(x), generator=g) for _ in range(3)]
    factors.append(-hue + 2 * hue * torch.rand(len(x), generator=g))
    order = torch.rand(len(x), 4, generator=g).argsort(dim=1)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i, img in enumerate(x):
        if applied[i]:
            for k in order[i].tolist():
                img = ops[k](img, float(factors[k][i]))
        torch.testing.assert_close(ours[i], img, atol=1e-5, rtol=0)
    assert 0 < applied.sum() < len(x)


def test_blur_equals_torchvisions_gaussian_blur_with_the_drawn_sigma():
    x = _images(n=16, side=20)
    ours = augment.blur(x, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    sigma = 0.1 + 1.9 * torch.rand(len(x), generator=g)
    blurred = torch.rand(len(x), generator=g) < 0.5
    k = max(3, int(0.1 * 20) // 2 * 2 + 1)
    for i in range(len(x)):
        expected = TF.gaussian_blur(x[i], [k, k], [float(sigma[i])] * 2) if blurred[i] else x[i]
        torch.testing.assert_close(ours[i], expected, atol=1e-5, rtol=0)


def test_turns_are_right_angle_rotations_of_the_chosen_images():
    x = _images(n=200)
    out = augment.turn(x, 0.5, torch.Generator().manual_seed(6))
    kinds = []
    for img, res in zip(x, out):
        matches = [k for k in range(4) if torch.equal(torch.rot90(img, k, dims=(-2, -1)), res)]
        kinds.append(matches[0])
    counts = [kinds.count(k) for k in range(4)]
    assert 70 < counts[0] < 130 and all(15 < c < 55 for c in counts[1:])


def test_erasing_replaces_one_rectangle_of_the_chosen_images_by_noise():
    x = torch.full((400, 3, 20, 24), 0.25)
    out = augment.erase(x, 0.5, torch.Generator().manual_seed(4))
    changed = (out != x).any(dim=1)  # pixels whose channels were drawn anew
    touched = changed.flatten(1).any(dim=1)
    assert 160 < int(touched.sum()) < 240  # p = 0.5
    for mask in changed[touched]:
        rows, cols = mask.any(dim=1).nonzero().squeeze(1), mask.any(dim=0).nonzero().squeeze(1)
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.float().mean() > 0.97  # one solid rectangle (a noise value may equal 0.25 by chance only)
        assert 0.02 * 480 - 20 <= mask.sum() <= 0.5 * 480 + 25  # 2-50% of the area, up to rounding of the sides
    filled = out[changed.unsqueeze(1).expand_as(out)]
    assert abs(filled.mean().item() - 0.5) < 0.02 and filled.min() >= 0 and filled.max() <= 1  # uniform noise


def test_erased_rectangles_lie_inside_the_image_anywhere_and_cover_2_to_50_percent():
    top, left, h, w = augment.erase_boxes(4000, 20, 24, torch.Generator().manual_seed(6)).unbind(dim=1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 20).all() and (left + w <= 24).all()
    inner_h, inner_w = h < 20, w < 24  # rectangles that have room to move
    assert (top == 0)[inner_h].any() and (top + h == 20)[inner_h].any() and (left == 0)[inner_w].any() and (left + w == 24)[inner_w].any()
    area = h * w / 480
    assert area.min() < 0.03 and area.max() > 0.4 and (area >= 0.01).all() and (area <= 0.56).all()  # up to rounding of the sides


def test_noise_is_added_to_half_the_images_with_stds_up_to_the_largest():
    x = torch.full((400, 3, 16, 16), 0.5)
    out = augment.noise(x, 0.2, torch.Generator().manual_seed(5))
    stds = (out - x).flatten(1).std(dim=1)
    untouched = stds == 0
    assert 160 < int(untouched.sum()) < 240
    assert stds.max() < 0.2 * 1.15 and stds[~untouched].median() > 0.06  # spread over [0, 0.2]
    assert out.min() >= 0 and out.max() <= 1


def test_configurations_without_the_later_augmentations_keep_their_digest():
    from amemctl.training.simclr import SimCLRConfig

    plain = SimCLRConfig()
    assert plain.digest("d") == "eccb77b6f9a5"  # the digest before erase and noise existed: its checkpoints resume
    assert SimCLRConfig(erase=0.5).digest("d") != plain.digest("d") != SimCLRConfig(noise=0.1).digest("d")


def test_views_are_valid_reproducible_and_differ_between_draws():
    x = _images(n=16, side=32)
    spec = augment.ViewSpec(32, blur=True, filters=0.3, rotations=0.5, erase=0.5, noise=0.2)
    a = augment.views(x, spec, torch.Generator().manual_seed(7))
    b = augment.views(x, spec, torch.Generator().manual_seed(7))
    c = augment.views(x, spec, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_random_draws_come_from_the_generators_device_and_land_on_the_tensors():
    g = torch.Generator().manual_seed(9)
    expected = torch.randn(3, 4, generator=torch.Generator().manual_seed(9))
    out = random.randn((3, 4), g, device="meta", dtype=torch.float16)
    assert out.device.type == "meta" and out.dtype == torch.float16
    torch.testing.assert_close(random.randn((3, 4), torch.Generator().manual_seed(9)), expected)
    assert random.randperm(5, torch.Generator().manual_seed(0)).sort().values.tolist() == list(range(5))
    assert set(random.randint(2, 4, (100,), g).tolist()) == {2, 3}


def test_every_seeded_draw_in_the_package_goes_through_amemctl_core_random():
    """torch.rand*(..., generator=g) fails when g and the tensor live on different devices (the
    CUDA crash of `color`); amemctl.core.random cannot, so it is the only place that calls them."""
    drawing = {"rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like", "bernoulli", "multinomial", "normal", "poisson"}
    offenders = []
    for path in [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "plugins").rglob("*.py")]:
        if path.name == "random.py" and path.parent.name == "core":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in drawing:
                if any(k.arg == "generator" for k in node.keywords):
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not offenders, f"draw through amemctl.core.random instead: {offenders}"


def test_the_colour_corruption_is_one_batched_pass_with_a_hue_shift_per_image():
    from amemctl.corruptions import corrupt

    x = _images(n=64, side=8)
    out = corrupt(x, "color", torch.Generator().manual_seed(0), brightness=0.0, saturation=0.0, channels=0.0, hue=0.5)
    hue_in, hue_out = colour.rgb_to_hsv(x)[:, 0], colour.rgb_to_hsv(out)[:, 0]
    shift = ((hue_out - hue_in + 0.5) % 1 - 0.5)[4:, 2:, :]  # images with colour, away from the red patch
    per_image = shift.reshape(len(shift), -1)
    spread = (per_image - per_image.median(dim=1, keepdim=True).values).abs()
    assert (spread.quantile(0.9, dim=1) < 1e-3).all()  # one shift per image...
    assert per_image.median(dim=1).values.std() > 0.1  # ...different between images
    assert math.isclose(float(out.clamp(0, 1).sub(out).abs().max()), 0.0)
