"""`amemctl store ...` on a real store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from amemctl.cli import main
from amemctl.store.memory import MemoryStore


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "stores" / "mem.zarr"
    path.parent.mkdir()
    MemoryStore.create(path).append(patterns=torch.rand(40, 1, 8, 8), labels=torch.arange(40) % 4, provenance={"dataset": "test"})
    return path


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_ls_inspect_verify(store_path):
    listing = _invoke("store", "ls", store_path.parent)
    assert listing.exit_code == 0 and "mem.zarr" in listing.output and "40" in listing.output
    info = _invoke("store", "inspect", store_path)
    assert info.exit_code == 0
    for text in ("patterns (40, 1, 8, 8) float32", "zstd+crc32c", "dataset=test", "labels (40,)"):
        assert text in info.output
    assert _invoke("store", "verify", store_path).output.startswith("ok:")


def test_show_and_export(store_path, tmp_path):
    png = tmp_path / "grid.png"
    assert _invoke("store", "show", store_path, "--ids", "0:20", "-o", png).exit_code == 0
    assert png.stat().st_size > 1000
    assert _invoke("store", "show", store_path, "--ids", "3,7", "-o", png).exit_code == 0
    assert _invoke("store", "show", store_path, "--ids", "400", "-o", png).exit_code == 2
    npz = tmp_path / "mem.npz"
    assert _invoke("store", "export", store_path, "-o", npz).exit_code == 0
    data = np.load(npz)
    assert data["patterns"].shape == (40, 1, 8, 8) and data["ids"].tolist() == list(range(40))


def test_export_writes_what_the_store_holds_a_chunk_at_a_time(tmp_path, monkeypatch):
    """Every array's live rows, decoded as to_tensor decodes them, while reading no more than a chunk's rows at once."""
    path = tmp_path / "s.zarr"
    store = MemoryStore.create(path, chunk_bytes=3 * 8 * 8)  # 3 images of uint8 a chunk
    images = torch.randint(0, 256, (40, 1, 8, 8)).float() / 255
    store.append(patterns=images, labels=torch.arange(40) % 4, keys={"pca": torch.randn(40, 5)}, storage={"patterns": "uint8"})
    store.forget(ids=[0, 7, 8, 39])
    taken = []  # rows per read, by either way of reading
    read, take = MemoryStore.read, MemoryStore.take
    monkeypatch.setattr(MemoryStore, "read", lambda self, name, start=0, stop=None: taken.append(min(self.count if stop is None else stop, self.count) - start) or read(self, name, start, stop))
    monkeypatch.setattr(MemoryStore, "take", lambda self, name, rows: taken.append(len(rows)) or take(self, name, rows))
    npz = tmp_path / "s.npz"
    result = _invoke("store", "export", path, "-o", npz)
    assert result.exit_code == 0, result.output
    assert max(taken) <= 3 < 36, "export reads a storage chunk's worth of rows at a time"
    monkeypatch.undo()
    data, again = np.load(npz), MemoryStore.open(path)
    assert sorted(data.files) == ["ids", "keys__pca", "labels", "patterns"]
    for entry, name in (("patterns", "patterns"), ("labels", "labels"), ("keys__pca", "keys/pca")):
        assert np.array_equal(data[entry], again.to_tensor(name).numpy()), entry
    assert data["ids"].tolist() == again.ids().tolist() == [i for i in range(40) if i not in (0, 7, 8, 39)]


def test_forget_by_id_and_label_then_compact(store_path):
    result = _invoke("store", "forget", store_path, "--ids", "1,2", "--label", "3", "--compact")
    assert result.exit_code == 0, result.output
    assert "forgot 12 row(s); 28 remain" in result.output and "compacted: 12" in result.output
    assert MemoryStore.open(store_path).count == 28
    assert _invoke("store", "forget", store_path).exit_code == 2


def test_verify_exits_non_zero_on_damage(store_path):
    chunk = next((store_path / "patterns" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.write_bytes(b"garbage")
    result = _invoke("store", "verify", store_path)
    assert result.exit_code == 1 and "does not decode" in result.output


def test_inspecting_a_missing_store_is_a_clear_error(tmp_path):
    result = _invoke("store", "inspect", tmp_path / "nope.zarr")
    assert result.exit_code == 2 and "no store at" in result.output and "Traceback" not in result.output


def test_show_draws_the_asked_ids_in_the_asked_order(store_path, tmp_path, monkeypatch):
    import amemctl.figures as figures

    drawn = {}
    monkeypatch.setattr(figures, "image_grid", lambda rows, path, title="": drawn.setdefault("rows", rows))
    assert _invoke("store", "show", store_path, "--ids", "7,3", "-o", tmp_path / "g.png").exit_code == 0
    stored = MemoryStore.open(store_path).to_tensor()
    assert torch.equal(drawn["rows"][0][1], stored[[7, 3]])


def test_user_mistakes_end_in_one_message_and_exit_2(store_path, tmp_path):
    for args, message in [
        (("store", "forget", store_path, "--ids", "3,abc"), "--ids: 'abc' is not an integer"),
        (("store", "show", store_path, "--ids", "x:y", "-o", tmp_path / "g.png"), "--ids: 'x' is not an integer"),
        (("store", "export", store_path, "-o", tmp_path / "notes.txt"), "export writes a .npz file, not notes.txt\n  hint: name it notes.npz"),
    ]:
        result = _invoke(*args)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "notes.txt").exists() and not (tmp_path / "notes.txt.npz").exists()
    assert len(MemoryStore.open(store_path)) == 40
    npz = tmp_path / "mine.npz"
    npz.write_text("my notes")
    result = _invoke("store", "export", store_path, "-o", npz)
    assert result.exit_code == 2 and "already exists" in result.output and npz.read_text() == "my notes"
    assert _invoke("store", "export", store_path, "-o", npz, "--force").exit_code == 0
    assert len(np.load(npz)["ids"]) == 40
