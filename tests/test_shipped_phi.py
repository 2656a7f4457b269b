"""The phi that ships inside the package: its identity, offline loading, and what it buys.

These tests read the real file in amemctl/weights/, not a fabricated one: a release that
dropped it from the package data, damaged it, or swapped it without a new card fails here.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import shutil

import pytest
import torch

from amemctl.dsl.pipeline import load_pipeline
from amemctl.engine.runner import run_pipeline
from amemctl.errors import DataError
from amemctl.models import pretrained
from amemctl.models.encoders import ARCHITECTURES, file_sha256
from tests.conftest import ROOT

SHIPPED = "small-cifar10-simclr"
ROBUST = "small-cifar10-simclr-robust"
CPU = torch.device("cpu")


@pytest.mark.parametrize("name", [SHIPPED, ROBUST])
def test_the_shipped_phi_is_listed_and_its_file_is_the_one_its_card_names(name):
    entry = pretrained.shipped()[name]
    path = pretrained.WEIGHTS / entry.file
    assert file_sha256(path) == entry.sha256
    card = (pretrained.WEIGHTS / f"{name}.md").read_text()
    assert entry.sha256 in card and "{sha256}" not in card
    assert "kNN accuracy" in card and "not measured" not in card
    assert path.stat().st_size < 16 * 2**20  # the package stays small


def test_every_shipped_file_is_in_the_package_data():
    """The tests read the source tree: only pyproject's package-data puts these files into a wheel."""
    section = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]", 1)[1]  # no tomllib on 3.10
    patterns = ast.literal_eval(re.search(r"^amemctl\s*=\s*(\[.*?\])", section, re.M | re.S).group(1))
    shipped = [pretrained.INDEX] + [name for e in pretrained.shipped().values() for name in (e.file, f"{e.name}.md")]
    assert {SHIPPED, ROBUST} <= set(pretrained.shipped())
    for name in shipped:
        inside = (pretrained.WEIGHTS / name).relative_to(ROOT / "amemctl").as_posix()
        assert any(fnmatch.fnmatch(inside, pattern) for pattern in patterns), (inside, patterns)


@pytest.mark.parametrize("name", [SHIPPED, ROBUST])
def test_the_shipped_phi_loads_offline_with_weights_only_and_embeds_in_its_space(name):
    entry = pretrained.shipped()[name]
    payload = torch.load(pretrained.WEIGHTS / entry.file, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.bfloat16 for v in payload["state_dict"].values() if v.is_floating_point())
    phi = pretrained.load(name)
    assert phi.weights_sha256 == entry.sha256 and phi.identity()["weights_sha256"] == entry.sha256
    for name, tensor in phi.module.state_dict().items():  # the weights are the file's, not a fresh network's
        torch.testing.assert_close(tensor.float(), payload["state_dict"][name].float(), rtol=0, atol=0)
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    keys = phi.embed(images, CPU)
    assert keys.shape == (8, ARCHITECTURES[entry.arch]) and torch.isfinite(keys).all()
    torch.testing.assert_close(phi.embed(images, CPU), keys)  # eval mode: no batch statistics


def test_a_changed_copy_of_the_shipped_phi_is_refused(tmp_path):
    folder = tmp_path / "weights"
    shutil.copytree(pretrained.WEIGHTS, folder)
    entry = pretrained.shipped(folder)[SHIPPED]
    data = bytearray((folder / entry.file).read_bytes())
    data[-100] ^= 0x01
    (folder / entry.file).write_bytes(bytes(data))
    with pytest.raises(DataError, match="damaged or replaced"):
        pretrained.load(SHIPPED, folder)


def test_the_semantic_quickstart_beats_pixels_on_crop_rotation_and_colour(tmp_path):
    """The offline claims of pipelines/semantic_quickstart.yaml, on a smaller memory to stay fast.

    The shipped phi beats pixels on crops, rotations and colour filters; the robust one on crops
    and rotations, and it also recalls masked queries that defeat the shipped one.
    """
    pipeline = load_pipeline(
        ROOT / "pipelines" / "semantic_quickstart.yaml",
        ["stages.0.subset=256", "sweep.corruption=[{kind: crop}, {kind: rotate}, {kind: color}, {kind: mask_noise, side: random}]", "sweep.similarity=[cosine]"],
    )
    result = run_pipeline(pipeline, out_root=tmp_path / "runs", device="cpu", progress=False)
    errors = {(p.point.values["corruption"]["kind"], p.point.values["model"]["name"]): p.metrics["error_index"] for p in result.points}
    for kind in ("crop", "rotate", "color"):
        assert errors[kind, "semantic"] < errors[kind, "pixels"], (kind, errors)
    for kind in ("crop", "rotate"):
        assert errors[kind, "semantic-robust"] < errors[kind, "pixels"], (kind, errors)
    assert errors["mask_noise", "semantic-robust"] < errors["mask_noise", "semantic"] - 0.2, errors
