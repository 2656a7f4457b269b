"""Stores whose metadata, folders or files were damaged or tampered with: a clear StoreError, never a traceback,
a huge loop or garbage rows; and writes that never destroy what is not theirs nor report a failure for a write that happened."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from amemctl.cli import main
from amemctl.errors import DamagedStore, StoreError
from amemctl.store.memory import MemoryStore
from amemctl.store.verify import verify

READ = "stages:\n  - open_store: {{store: {path}}}\n  - corrupt: {{kind: gaussian, variance: 0.01, count: 5}}\n  - score: {{}}\n  - separate: {{function: max}}\n  - project: {{}}\n  - evaluate: {{}}\n"


def _store(tmp_path, rows=40, **options):
    """40 rows of 4 numbers (chunks of 10 rows) with labels, and keys in the space `pca`."""
    path = tmp_path / "s.zarr"
    store = MemoryStore.create(path, chunk_bytes=4 * 4 * 10, **options)
    store.append(patterns=torch.rand(rows, 4) + 0.5, labels=torch.zeros(rows, dtype=torch.long), keys={"pca": torch.rand(rows, 2)})
    return path


def _edit(file: Path, change) -> None:
    """Rewrite the JSON document `file` with `change(doc)` applied."""
    doc = json.loads(file.read_text())
    change(doc)
    file.write_text(json.dumps(doc))


def _edit_attrs(path: Path, change) -> None:
    _edit(path / "zarr.json", lambda doc: change(doc["attributes"]["amemctl"]))


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _refused_everywhere(path: Path, tmp_path, run_text, message: str) -> None:
    """Opening, every `store` command and a run all refuse the store with `message`, without a traceback."""
    with pytest.raises(DamagedStore, match=re.escape(message)):
        MemoryStore.open(path)
    with pytest.raises(StoreError, match=re.escape(message)):
        run_text(READ.format(path=path))
    report = verify(path)
    assert not report.ok and any(message in p for p in report.problems), report.problems
    result = _cli("store", "verify", path)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit) and message in result.output, result.output
    for args in (("inspect", path), ("show", path, "-o", tmp_path / "g.png"), ("export", path, "-o", tmp_path / "e.npz")):
        result = _cli("store", *args)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, (args, result.output)


def test_a_declared_size_beyond_what_appends_could_grow_is_refused_and_verify_reads_only_published_rows(tmp_path, run_text):
    path = _store(tmp_path)
    for name in ("patterns", "ids"):
        _edit(path / name / "zarr.json", lambda doc: doc["shape"].__setitem__(0, 10**12))
        started = time.process_time()
        _refused_everywhere(path, tmp_path, run_text, f"{name} declares 1000000000000 rows")
        assert time.process_time() - started < 20, "a declared size must cost nothing (seconds of this process's CPU: other processes on the machine do not count)"
        _edit(path / name / "zarr.json", lambda doc: doc["shape"].__setitem__(0, 40))
    assert verify(path).ok and verify(path).chunks_checked == 5 * 4


def test_an_interrupted_append_still_opens_and_its_unpublished_rows_are_neither_checked_nor_refused(tmp_path, monkeypatch):
    path = _store(tmp_path)
    store = MemoryStore.open(path, mode="a")
    real = MemoryStore._publish
    calls = []

    def killed_before_publishing_the_count(self, attrs):
        calls.append(attrs["count"])
        if len(calls) > 1:
            raise KeyboardInterrupt  # the kill came after the rows were written, before the count
        real(self, attrs)

    monkeypatch.setattr(MemoryStore, "_publish", killed_before_publishing_the_count)
    with pytest.raises(KeyboardInterrupt):
        store.append(patterns=torch.rand(25, 4), labels=torch.ones(25, dtype=torch.long), keys={"pca": torch.rand(25, 2)})
    monkeypatch.setattr(MemoryStore, "_publish", real)
    assert MemoryStore.open(path).count == 40 and MemoryStore.open(path).group["patterns"].shape[0] == 65
    report = verify(path)
    assert report.ok and report.chunks_checked == 5 * 4 and any("25 unpublished rows" in n for n in report.notes)
    MemoryStore.open(path, mode="a").append(patterns=torch.rand(5, 4), labels=torch.ones(5, dtype=torch.long), keys={"pca": torch.rand(5, 2)})
    assert verify(path).ok and len(MemoryStore.open(path)) == 45


def _killed_mid_append_by_an_older_amemctl(path: Path, rows: int) -> None:
    """What a writer from before `reserved` left when killed between growing the arrays and publishing the count."""
    store = MemoryStore.open(path, mode="a")
    count = store.count
    for name, width in (("patterns", (4,)), ("labels", ()), ("keys/pca", (2,)), ("ids", ()), ("alive", ())):
        array = store.group[name]
        array.resize((count + rows, *width))
        array[count:] = torch.ones(rows, *width).numpy().astype(array.dtype)
    _edit_attrs(path, lambda attrs: attrs.pop("reserved"))


def test_trim_drops_what_an_older_amemctl_left_past_the_published_rows_and_keeps_them(tmp_path, run_text):
    path = _store(tmp_path)
    before = MemoryStore.open(path).to_tensor()
    reader = MemoryStore.open(path)
    _killed_mid_append_by_an_older_amemctl(path, rows=25)
    _refused_everywhere(path, tmp_path, run_text, "patterns declares 65 rows")
    for output in (str(_cli("store", "inspect", path).output), _cli("store", "verify", path).output):
        assert f"if an append was killed (by an amemctl from before 'reserved'), `amemctl store trim {path}` drops its unpublished rows" in output
    result = _cli("store", "trim", path)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"trimmed {path}: 25 row(s) of ids, 25 row(s) of alive, 25 row(s) of patterns"), result.output
    assert sorted(p.name for p in (path / "patterns" / "c").iterdir()) == ["0", "1", "2", "3"]  # 40 rows of 10 a chunk
    trimmed = MemoryStore.open(path)
    assert torch.equal(trimmed.to_tensor(), before) and torch.equal(reader.to_tensor(), before)
    assert trimmed.attrs["provenance"][-1]["trimmed"]["keys/pca"] == 25 and verify(path).ok
    MemoryStore.open(path, mode="a").append(patterns=torch.zeros(5, 4), labels=torch.ones(5, dtype=torch.long), keys={"pca": torch.rand(5, 2)})
    assert torch.equal(MemoryStore.open(path).to_tensor()[40:], torch.zeros(5, 4)) and verify(path).ok
    assert _cli("store", "trim", path).output.strip() == f"trimmed {path}: no unpublished rows"


def test_trim_takes_a_declared_size_at_no_cost_and_refuses_what_it_cannot_mend(tmp_path):
    path = _store(tmp_path)
    _edit(path / "patterns" / "zarr.json", lambda doc: doc["shape"].__setitem__(0, 10**12))
    started = time.process_time()
    result = _cli("store", "trim", path)
    assert result.exit_code == 0 and time.process_time() - started < 20 and verify(path).ok, result.output
    _edit(path / "ids" / "zarr.json", lambda doc: doc["shape"].__setitem__(0, 30))
    (path / "patterns" / "c" / "3" / "0").unlink()
    files = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    result = _cli("store", "trim", path)
    assert result.exit_code == 2 and "ids has 30 rows but the store publishes 40; trimming drops rows, it cannot restore them" in result.output
    assert "Traceback" not in result.output and {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == files
    _edit(path / "ids" / "zarr.json", lambda doc: doc["shape"].__setitem__(0, 40))
    result = _cli("store", "trim", path)  # nothing to drop, but still damaged: said, exit 1
    assert result.exit_code == 1 and "patterns chunk 3 (rows 30..39, file patterns/c/3/0) is missing" in result.output, result.output


def _truncate(doc_file: Path) -> None:
    doc_file.write_text(doc_file.read_text()[:40])


def _set(key, value):
    return lambda f: _edit(f, lambda doc: doc.__setitem__(key, value))


def _unreadable(doc_file: Path) -> None:  # a zarr.json that cannot be read (a folder: works even for root, unlike chmod 000)
    doc_file.unlink()
    doc_file.mkdir()


ARRAY_DAMAGE = {
    "truncated": (_truncate, "is not valid JSON"),
    "unknown codec": (lambda f: _edit(f, lambda doc: doc["codecs"].append({"name": "evil"})), "are not the store's"),
    "negative shape": (_set("shape", [-5, 4]), "shape [-5, 4] is not a list of sizes"),
    "string dtype": (_set("data_type", "string"), "but the array holds string"),
    "a group": (_set("node_type", "group"), "does not describe a zarr v3 array"),
    "zero-row chunks": (lambda f: _edit(f, lambda doc: doc["chunk_grid"]["configuration"].__setitem__("chunk_shape", [0, 4])), "chunk shape [0, 4] is not whole rows"),
    "big-endian": (lambda f: _edit(f, lambda doc: doc["codecs"][0].__setitem__("configuration", {"endian": "big"})), "'big'-endian"),
    "unreadable": (_unreadable, "cannot be read"),
}


@pytest.mark.parametrize("damage", list(ARRAY_DAMAGE))
def test_damaged_array_metadata_is_a_store_error_naming_its_zarr_json(tmp_path, run_text, damage):
    path = _store(tmp_path)
    store = MemoryStore.open(path)  # damage after opening is refused when the array is read
    spoil, message = ARRAY_DAMAGE[damage]
    spoil(path / "patterns" / "zarr.json")
    _refused_everywhere(path, tmp_path, run_text, message)
    with pytest.raises(DamagedStore, match=f"{re.escape(str(path / 'patterns' / 'zarr.json'))} is damaged: .*{re.escape(message)}(.|\n)*restore it from a copy"):
        store.read("patterns")


ATTRIBUTE_DAMAGE = {
    "schema a string": (lambda a: a.__setitem__("schema", "1"), "schema is '1', not a layout version"),
    "schema null": (lambda a: a.__setitem__("schema", None), "schema is None"),
    "row_shape a number": (lambda a: a["arrays"]["patterns"].__setitem__("row_shape", 5), "arrays.patterns: row_shape 5 is not a list of sizes"),
    "arrays a list": (lambda a: a.__setitem__("arrays", ["patterns"]), "arrays is ['patterns'], not a mapping"),
    "a spec a string": (lambda a: a["arrays"].__setitem__("labels", "int64"), "arrays.labels: 'int64' is not a mapping"),
    "spaces a list": (lambda a: a.__setitem__("spaces", [1]), "spaces is [1], not a mapping"),
    "an escaping array name": (lambda a: a["arrays"].__setitem__("../../x", {"storage": "float32", "row_shape": [4]}), "arrays.../../x: not an array name"),
    "an escaping space name": (lambda a: a["spaces"].__setitem__("../x", {}), "spaces.../x: not a space name"),
    "count a string": (lambda a: a.__setitem__("count", "40"), "count is '40', not a number of rows"),
}


@pytest.mark.parametrize("damage", list(ATTRIBUTE_DAMAGE))
def test_damaged_attributes_are_refused_before_anything_uses_them(tmp_path, run_text, damage):
    path = _store(tmp_path)
    spoil, message = ATTRIBUTE_DAMAGE[damage]
    _edit_attrs(path, spoil)
    _refused_everywhere(path, tmp_path, run_text, message)
    assert not (tmp_path / "x").exists()
    with pytest.raises(DamagedStore, match="the attributes of .* are damaged(.|\n)*restore it from a copy"):
        MemoryStore.open(path, mode="a")


def test_a_store_folder_that_cannot_be_read_is_a_store_error(tmp_path, run_text, monkeypatch):
    path = _store(tmp_path)
    real = Path.is_file

    def denied(self):  # what a folder of mode 000 does to a user other than root
        if self.parent == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "is_file", denied)
    with pytest.raises(StoreError, match=f"cannot read the store {path}: Permission denied(.|\n)*check that you may read it"):
        MemoryStore.open(path)
    with pytest.raises(StoreError, match="cannot read the store"):
        run_text(READ.format(path=path))
    result = _cli("store", "verify", path)
    assert result.exit_code == 1 and "cannot read the store" in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a folder of mode 000")
def test_a_store_folder_of_mode_000_is_a_store_error(tmp_path, run_text):
    path = _store(tmp_path)
    path.chmod(0)
    try:
        with pytest.raises(StoreError, match="cannot read the store"):
            run_text(READ.format(path=path))
    finally:
        path.chmod(0o755)


def _foreign(tmp_path) -> dict[str, Path]:
    """Things at a store path that are not amemctl stores: another program's zarr group and array, files, a file."""
    import numpy as np
    import zarr

    group = zarr.create_group(store=str(tmp_path / "group.zarr"), zarr_format=3)
    group.create_array("theirs", shape=(3,), dtype="int32")[:] = [1, 2, 3]
    zarr.save_array(str(tmp_path / "array.zarr"), np.arange(5), zarr_format=3)
    (tmp_path / "files.zarr").mkdir()
    (tmp_path / "files.zarr" / "notes.txt").write_text("mine")
    (tmp_path / "file.zarr").write_text("mine")
    return {name: tmp_path / name for name in ("group.zarr", "array.zarr", "files.zarr", "file.zarr")}


def _contents(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()} if path.is_dir() else {"": path.read_bytes()}


def test_replace_refuses_what_is_not_an_amemctl_store_but_takes_an_empty_folder(tmp_path, run_text):
    for name, path in _foreign(tmp_path).items():
        before = _contents(path)
        with pytest.raises(StoreError, match=f"{path} exists and is not an amemctl store; refusing to replace it(.|\n)*delete it yourself"):
            MemoryStore.write_new(path, lambda s: s.append(patterns=torch.rand(3, 4)), replace=True)
        with pytest.raises(StoreError, match="is not an amemctl store"):
            run_text(f"data: {{dataset: digits, limit: 10}}\nstages:\n  - persist: {{store: {path}, mode: replace}}\n")
        assert _contents(path) == before, name
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    run_text(f"data: {{dataset: digits, limit: 10}}\nstages:\n  - persist: {{store: {empty}, mode: replace}}\n")
    assert len(MemoryStore.open(empty)) == 10
    damaged = _store(tmp_path / "d")  # a damaged amemctl store is what replace is for
    (damaged / "patterns" / "zarr.json").write_text("{")
    MemoryStore.write_new(damaged, lambda s: s.append(patterns=torch.ones(2, 4)), replace=True)
    assert torch.equal(MemoryStore.open(damaged).to_tensor(), torch.ones(2, 4))


def test_a_replace_whose_old_copy_cannot_be_deleted_succeeds_with_a_warning(tmp_path, run_text, monkeypatch, caplog):
    path = tmp_path / "s.zarr"
    write = f"data: {{dataset: digits, limit: 10}}\nstages:\n  - persist: {{store: {path}, mode: replace}}\n"
    run_text(write)
    real = Path.unlink

    def read_only(self, *args, **kwargs):  # the old copy sits in a folder this user may not write
        if self.parent.name.startswith(".s.zarr.old-"):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", read_only)
    with caplog.at_level(logging.WARNING, logger="amemctl.store.memory"):
        run = run_text(write.replace("limit: 10", "limit: 12"))
    assert run.points[0].metrics["persisted"] == 12 and len(MemoryStore.open(path)) == 12
    assert any("cannot delete" in r.message and "replaced" in r.message for r in caplog.records)
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".s.zarr.old-")]
    assert len(leftovers) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="amemctl.store.memory"):  # later writes go on, warning of the leftover
        MemoryStore.open(path, mode="a").append(patterns=torch.rand(1, 1, 8, 8), labels=torch.zeros(1, dtype=torch.long))
        run_text(write)
    assert len(MemoryStore.open(path)) == 10 and any("an earlier writer left" in r.message for r in caplog.records)
    monkeypatch.setattr(Path, "unlink", real)
    MemoryStore.open(path, mode="a").forget(ids=[0])  # once it may, the next writer clears them
    assert not any(p.name.startswith(".s.zarr.old-") for p in tmp_path.iterdir())


def test_a_chunk_replaced_by_a_folder_is_damage(tmp_path, run_text):
    path = _store(tmp_path)
    chunk = path / "patterns" / "c" / "2" / "0"
    chunk.unlink()
    chunk.mkdir()
    _refused_everywhere(path, tmp_path, run_text, "patterns chunk 2 (rows 20..29, file patterns/c/2/0) is not a regular file")
    shutil.rmtree(chunk)
