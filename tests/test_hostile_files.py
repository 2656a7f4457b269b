"""Hostile or damaged image and checkpoint files: a clear DataError, never a traceback, a huge allocation or wrong data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amemctl.errors import DataError
from amemctl.models.autoencoders import build_autoencoder, load_autoencoder, save_autoencoder
from tests.conftest import error_of


def _folder(tmp_path):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    return tmp_path / "imgs" / "a"


def test_a_16_bit_greyscale_png_keeps_its_values(tmp_path):
    from PIL import Image

    from amemctl.data.folders import read_image

    grey = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)  # 0 .. 63000
    path = _folder(tmp_path) / "deep.png"
    Image.fromarray(grey).save(path)
    t = read_image(path)
    assert t.shape == (3, 8, 8)
    torch.testing.assert_close(t[0], torch.from_numpy(grey.astype(np.float32) / 65535))
    assert torch.equal(t[0], t[2])
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)  # 8-bit stays exact
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert torch.equal(read_image(tmp_path / "rgb.png"), torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)


def test_an_image_over_the_decompression_bomb_limit_is_refused(tmp_path, monkeypatch):
    from PIL import Image

    from amemctl.data.folders import read_image

    path = _folder(tmp_path) / "big.png"
    Image.new("L", (300, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 200 - 1)  # the warning zone: PIL alone would load it
    with pytest.raises(DataError, match=r"big.png is too large to load safely \(300x200 pixels, over PIL's limit of 59,999\)"):
        read_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's own error zone: the message still gives the size
    with pytest.raises(DataError, match=r"too large to load safely \(300x200 pixels"):
        read_image(path)


def test_a_small_file_declaring_a_huge_image_is_refused_from_its_header(tmp_path, run_text, monkeypatch):
    from PIL import Image

    from amemctl.data import folders

    folder = _folder(tmp_path)
    Image.new("I;16", (6000, 6000)).save(folder / "huge.png")  # 36 M pixels in about 70 KB: 3 GB decoded
    assert (folder / "huge.png").stat().st_size < 200_000
    decoded = []
    monkeypatch.setattr(folders, "read_image", lambda path: decoded.append(path))
    with pytest.raises(DataError, match=r"huge.png is too large to load safely \(6000x6000 pixels, over the limit of 33,554,432\)"):
        run_text(f"stages:\n  - load: {{dataset: folder, root: {tmp_path / 'imgs'}, size: 32}}\n  - persist: {{store: {tmp_path / 's.zarr'}}}\n")
    assert decoded == []


def test_images_that_would_not_fit_in_memory_are_refused_before_decoding(tmp_path, run_text, monkeypatch):
    from PIL import Image

    from amemctl.data import folders

    folder = _folder(tmp_path)
    for i in range(4):
        Image.new("RGB", (100, 50)).save(folder / f"{i}.png")
    monkeypatch.setattr(folders, "_memory", lambda: 2 * 4 * 3 * 100 * 50 * 4 - 2)  # just under twice what they take
    stages = f"stages:\n  - load: {{dataset: folder, root: {tmp_path / 'imgs'}}}\n  - persist: {{store: {tmp_path / 's.zarr'}}}\n"
    with pytest.raises(DataError, match=r"the 4 images under .* take 0.0 GiB as float32, more than half of this machine's memory"):
        run_text(stages)
    monkeypatch.setattr(folders, "_memory", lambda: 2 * 4 * 3 * 100 * 50 * 4)
    run_text(stages)
    Image.new("RGB", (50, 100)).save(folder / "turned.png")  # a size differs: refused from the headers too
    with pytest.raises(DataError, match=r"differ in size \(50x100, 100x50\)"):
        run_text(stages)


def test_a_corrupt_jpeg_is_a_data_error_naming_it(tmp_path, run_text):
    from PIL import Image

    folder = _folder(tmp_path)
    Image.new("RGB", (8, 8), "red").save(folder / "ok.jpg")
    data = (folder / "ok.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="broken.jpg is not a readable image"):
        run_text(f"stages:\n  - load: {{dataset: folder, root: {tmp_path / 'imgs'}}}\n  - persist: {{store: {tmp_path / 's.zarr'}}}\n")


def _checkpoint(tmp_path, **changes):
    module = build_autoencoder("mlp", (1, 4, 4), [8], 3)
    path = tmp_path / "ae.pt"
    save_autoencoder(module, path, "mlp", (1, 4, 4), [8], 3)
    if changes:
        payload = torch.load(path, weights_only=True)
        payload.update(changes)
        torch.save(payload, path)
    return path


def test_autoencoder_checkpoint_metadata_is_checked_before_allocating(tmp_path):
    assert load_autoencoder(_checkpoint(tmp_path)).code == 3
    with pytest.raises(DataError, match=r"does not fit this architecture: .*wrong shapes"):
        load_autoencoder(_checkpoint(tmp_path, hidden=[300_000, 300_000]))  # would allocate ~360 GB if built for real
    with pytest.raises(DataError, match=r"does not fit this architecture: .*wrong shapes: encoder.1.weight \(8, 16\) vs \(9, 16\)"):
        load_autoencoder(_checkpoint(tmp_path, hidden=[9]))
    with pytest.raises(DataError, match="damaged metadata: kind 'big' is not one of mlp, conv; hidden -1 is not a list"):
        load_autoencoder(_checkpoint(tmp_path, kind="big", hidden=-1))
    state = torch.load(_checkpoint(tmp_path), weights_only=True)["state_dict"]
    state["decoder.0.weight"] = torch.zeros(2, 2)
    with pytest.raises(DataError, match="wrong shapes: decoder.0.weight"):
        load_autoencoder(_checkpoint(tmp_path, state_dict=state))


def test_empty_checkpoints_are_data_errors(tmp_path):
    from amemctl.models.encoders import checkpoint_encoder

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.pt is not a PyTorch tensor file"):
        checkpoint_encoder(empty, "small", None, None)
    with pytest.raises(DataError, match="empty.pt is not a tensor file"):
        load_autoencoder(empty)
    torch.save({"format": "amemctl-encoder"}, empty)
    for arch in (None, "small"):  # with arch given, the missing metadata was a KeyError
        with pytest.raises(DataError, match="damaged metadata"):
            checkpoint_encoder(empty, arch, None, None)
    torch.save({"format": "amemctl-encoder", "arch": ["x"], "cifar_stem": True, "preprocessing": {}, "state_dict": {}}, empty)
    with pytest.raises(DataError, match=r"damaged metadata \(arch \['x'\]"):  # was: unhashable type
        checkpoint_encoder(empty, None, None, None)


def test_a_checkpoint_that_inflates_is_refused_from_its_zip_directory(tmp_path, monkeypatch):
    import zipfile

    from amemctl.models.encoders import checkpoint_encoder

    plain = tmp_path / "plain.pt"
    torch.save({"format": "amemctl-autoencoder", "w": torch.zeros(1 << 20)}, plain)  # 4 MiB of zeros
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for entry in source.infolist():
            out.writestr(entry.filename, source.read(entry))
    assert bomb.stat().st_size < 100_000 and torch.load(bomb, weights_only=True)["w"].numel() == 1 << 20  # torch would load it
    loaded = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loaded.append(a))
    for load in (load_autoencoder, lambda p: checkpoint_encoder(p, "small", None, None)):
        with pytest.raises(DataError, match=r"bomb.pt is not a .*tensor file .*: UnsafeTensorFile: its entries declare 4,19.* bytes in a file of"):
            load(bomb)
    assert loaded == []


def test_generate_takes_a_checkpoint_as_documented(tmp_path):
    from amemctl.dsl.pipeline import parse_text

    path = _checkpoint(tmp_path)
    pipeline = parse_text(f"stages:\n  - load: {{dataset: digits, limit: 10}}\n  - generate: {{checkpoint: {path}, input: patterns}}\n", "g.yaml")
    generate = pipeline.plans[0].stages[-1].stage
    assert generate.inputs() == ["patterns"]  # no `decoder: null` needed beside a checkpoint
    assert "autoencoder" in error_of("stages:\n  - load: {dataset: digits, limit: 10}\n  - generate: {input: patterns}\n")
