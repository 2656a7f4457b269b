"""Each corruption's defining property, seeding, range, and parameter checks."""

from __future__ import annotations

import pytest
import torch

from amemctl.corruptions import CORRUPTIONS, corrupt, get_corruption
from amemctl.errors import StageError
from amemctl.stage import Param, ParamError


def _images(n=64, c=3, h=8, w=8):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1


def _rng(seed=0):
    return torch.Generator().manual_seed(seed)


def test_mask_zero_half_zeroes_exactly_the_top_half():
    x = _images()
    out = corrupt(x, "mask_zero", fraction=0.5, side="top")
    assert (out[..., :4, :] == 0).all()
    assert torch.equal(out[..., 4:, :], x[..., 4:, :])


@pytest.mark.parametrize("side", ["bottom", "left", "right"])
def test_mask_zero_other_sides(side):
    out = corrupt(_images(), "mask_zero", fraction=0.25, side=side)
    region = {"bottom": out[..., 6:, :], "left": out[..., :, :2], "right": out[..., :, 6:]}[side]
    assert (region == 0).all() and (out != 0).sum() == out.numel() * 3 // 4


def test_mask_noise_replaces_one_half_with_uniform_noise():
    x = _images(n=256)
    out = corrupt(x, "mask_noise", _rng(), fraction=0.5, side="bottom")
    assert torch.equal(out[..., :4, :], x[..., :4, :])
    noise = out[..., 4:, :]
    assert abs(noise.mean().item() - 0.5) < 0.01 and abs(noise.var().item() - 1 / 12) < 0.005


def test_gaussian_noise_has_the_asked_mean_and_variance_before_clipping():
    x = torch.full((200, 1, 16, 16), 0.5)
    out = corrupt(x, "gaussian", _rng(), mean=0.1, variance=0.01)
    delta = out - x
    assert abs(delta.mean().item() - 0.1) < 0.005 and abs(delta.var().item() - 0.01) < 0.001


def test_random_mask_and_salt_pepper_hit_the_asked_fraction_of_pixels():
    x = _images(n=400)
    dropped = (corrupt(x, "random_mask", _rng(), p=0.3) == 0).all(1).float().mean()
    assert abs(dropped.item() - 0.3) < 0.01
    sp = corrupt(x, "salt_pepper", _rng(), p=0.2)
    hit = ((sp == 0) | (sp == 1)).all(1)
    assert abs(hit.float().mean().item() - 0.2) < 0.01
    assert abs((sp == 1).all(1).float().mean().item() - 0.1) < 0.01


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_seeds_reproduce_and_outputs_stay_in_range(kind, device):
    x = _images().to(device)
    params = {"steps": [{"kind": "crop"}, {"kind": "salt_pepper"}]} if kind == "compose" else {}
    a = corrupt(x, kind, torch.Generator(device).manual_seed(5), **params)
    b = corrupt(x, kind, torch.Generator(device).manual_seed(5), **params)
    assert torch.equal(a, b) and a.device == x.device
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(x.cpu(), _images())  # the input is never modified


@pytest.mark.parametrize("device", DEVICES)
def test_defining_properties_hold_on_every_device(device):
    x = _images(n=128).to(device)
    g = torch.Generator(device).manual_seed(0)
    top = corrupt(x, "mask_zero", fraction=0.5, side="top")
    assert (top[..., :4, :] == 0).all() and torch.equal(top[..., 4:, :], x[..., 4:, :])
    turned = corrupt(x, "rotate", g)
    assert torch.equal(turned.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    kept = corrupt(x, "inpaint", fraction=0.5)
    assert torch.equal(kept[..., 2:6, 2:6], x[..., 2:6, 2:6])
    dropped = (corrupt(x, "random_mask", g, p=0.25) == 0).all(1).float().mean().item()
    assert abs(dropped - 0.25) < 0.02


def test_flat_patterns_are_masked_by_features():
    x = torch.ones(2, 10)
    assert (corrupt(x, "mask_zero", fraction=0.3, side="top")[:, :3] == 0).all()
    assert (corrupt(x, "mask_zero", fraction=0.3, side="bottom")[:, 7:] == 0).all()


def test_bad_input_gets_the_allowed_range():
    x = _images()
    # the parameters are declared with Param, checked like a stage's own
    with pytest.raises(ParamError, match=r"parameter 'p' is 1.5, out of range\n  hint: p takes a number >= 0 and <= 1"):
        corrupt(x, "random_mask", p=1.5)
    with pytest.raises(ParamError, match="parameter 'variance' is -0.1, out of range"):
        corrupt(x, "gaussian", variance=-0.1)
    with pytest.raises(StageError, match="did you mean 'gaussian'"):
        get_corruption("gausian")
    with pytest.raises(ParamError, match="corruption 'gaussian' takes no parameter 'p'\n  hint: gaussian accepts mean, variance"):
        corrupt(x, "gaussian", p=0.1)
    with pytest.raises(StageError, match="float images"):
        corrupt((x * 255).to(torch.uint8), "none")


def test_rotate_preserves_the_pixel_multiset_and_uses_the_papers_angles():
    x = _images(n=200)
    out = corrupt(x, "rotate", _rng())
    for a, b in zip(x, out):
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)
    turned = {next(k for k in range(4) if torch.equal(torch.rot90(a, k, (-2, -1)), b)) for a, b in zip(x, out)}
    assert turned == {0, 1, 2, 3}  # 0, 90, 180 and -90 degrees all drawn
    only = corrupt(x, "rotate", _rng(), angles=[180])
    assert torch.equal(only, torch.rot90(x, 2, (-2, -1)))


def test_crop_zooms_in():
    # a horizontal ramp: zooming in narrows the range of values a row spans
    ramp = torch.linspace(0, 1, 32).expand(50, 3, 32, 32).contiguous()
    out = corrupt(ramp, "crop", _rng(), scale=[0.25, 0.25])
    spans = out[:, 0, 16].amax(1) - out[:, 0, 16].amin(1)
    assert torch.allclose(spans, torch.full_like(spans, 0.5), atol=0.05)
    whole = corrupt(ramp, "crop", _rng(), scale=[1.0, 1.0])  # the full image: unchanged away from the border
    assert torch.allclose(whole[..., 1:-1], ramp[..., 1:-1], atol=1e-5)


def test_inpaint_keeps_exactly_the_centre():
    x = _images()
    out = corrupt(x, "inpaint", fraction=0.5)
    assert torch.equal(out[..., 2:6, 2:6], x[..., 2:6, 2:6])
    assert (out.sum((0, 1)) == 0).sum() == 64 - 16


def test_color_filters_change_colour_not_structure():
    x = _images(n=100)
    out = corrupt(x, "color", _rng())
    assert not torch.allclose(out, x)
    # the spatial pattern survives: each image stays strongly correlated with its original
    a = (x - x.mean((1, 2, 3), keepdim=True)).flatten(1)
    b = (out - out.mean((1, 2, 3), keepdim=True)).flatten(1)
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    assert corr.median() > 0.5
    with pytest.raises(StageError, match="color needs RGB images"):
        corrupt(torch.rand(2, 1, 8, 8), "color")


def test_compose_applies_in_order():
    x = _images()
    steps = [{"kind": "mask_zero", "fraction": 0.5}, {"kind": "rotate", "angles": [180]}]
    out = corrupt(x, "compose", _rng(), steps=steps)
    assert torch.equal(out, torch.rot90(corrupt(x, "mask_zero", fraction=0.5), 2, (-2, -1)))
    with pytest.raises(StageError, match=r"step 1 of compose: needs a known `kind` other than compose"):
        corrupt(x, "compose", steps=[{"variance": 0.1}])
    with pytest.raises(ParamError, match=r"scale = \[0.0, 0.5\] is out of range"):
        corrupt(x, "crop", scale=[0.0, 0.5])


def test_gaussian_takes_a_variance_or_a_std_not_both(tmp_path):
    from click.testing import CliRunner

    from amemctl.cli import main

    with pytest.raises(ParamError, match="not both"):
        corrupt(torch.rand(2, 1, 4, 4), "gaussian", torch.Generator(), variance=0.1, std=0.2)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("data: {dataset: digits}\nstages:\n  - corrupt: {kind: gaussian, variance: 0.1, std: 0.2}\n")
    result = CliRunner().invoke(main, ["validate", str(pipeline)])
    assert result.exit_code == 2 and "not both" in result.output and "p.yaml:3" in result.output


def test_the_corrupt_stage_composes_exactly_as_the_library_for_the_same_seed():
    """The stage runs the library's compose (steps found in its registry): the same seed gives
    the same queries, plugin corruptions included."""
    from amemctl.context import Context
    from amemctl.corruptions import Corruption, compose
    from amemctl.plugins import build_registry
    from amemctl.stages.corrupt import Corrupt

    def dim_rows(images, generator, amount):
        keep = torch.rand(images.shape[:-1] + (1,), generator=generator) > amount
        return images * keep.to(images.dtype)

    registry = build_registry(entry_points=False)
    registry.corruptions["dim_rows"] = Corruption("dim_rows", "a plugin's: rows zeroed at random", dim_rows, {"amount": Param(float, 0.5, "share of rows zeroed")})
    steps = [{"kind": "crop", "scale": [0.4, 0.8]}, {"kind": "dim_rows", "amount": 0.3}, {"kind": "gaussian", "std": 0.1}, {"kind": "mask_noise", "side": "random"}]
    x = _images(n=16)
    outputs = []
    for seed in (3, 4):
        ctx = Context(torch.device("cpu"), 0, 2**20, None, stage_seed=seed)
        ctx["patterns"] = x
        Corrupt(registry, kind="compose", steps=steps).run(ctx)
        library = compose(x, _rng(seed), steps, find=registry.corruptions.__getitem__)
        assert torch.equal(ctx["queries"], library)
        outputs.append(library)
    assert not torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], x)
    builtin = steps[:1] + steps[2:]
    ctx = Context(torch.device("cpu"), 0, 2**20, None, stage_seed=5)
    ctx["patterns"] = x
    Corrupt(registry, kind="compose", steps=builtin).run(ctx)
    assert torch.equal(ctx["queries"], corrupt(x, "compose", _rng(5), steps=builtin))
