"""A disk that fills up (or fails, or refuses permission) under every write to a store.

Nothing already published is lost, nothing half-written is left behind (no temporary file, no
hidden copy), every failure is one StoreError naming the store and the fix, and the operation
succeeds when run again once there is room. Also: stores whose folder may not be written,
symlinked stores, store paths that are files or lie under one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from amemctl.cli import main
from amemctl.errors import AmemctlError, StoreError
from amemctl.store.memory import MemoryStore
from amemctl.store.verify import verify
from tests.fakedisk import BLOCK, FakeDisk

#: names a writer uses for what it has not finished: none may be left after a failure
UNFINISHED = re.compile(r"\.(new|old)-|\.swap|\.partial|\.trim-|\.tmp$")


def _store(path: Path, rows: int = 60) -> Path:
    """60 rows of 4 numbers, labels and keys in the space `pca`, in chunks of 16 rows."""
    store = MemoryStore.create(path, chunk_bytes=4 * 4 * 16)
    store.append(patterns=torch.rand(rows, 4), labels=torch.arange(rows) % 3, keys={"pca": torch.rand(rows, 2)})
    return path


def _rows(path: Path) -> str:
    """Every live row of every array, and the ids, of the store at `path`: what must survive a failure."""
    store = MemoryStore.open(path)
    digest = hashlib.sha256()
    for name in ["ids", *store.arrays]:
        digest.update((store.ids() if name == "ids" else store.to_tensor(name)).numpy().tobytes())
    return f"{len(store)} rows {digest.hexdigest()[:16]}"


def _unfinished(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if UNFINISHED.search(p.name))


def _append(path: Path) -> None:
    MemoryStore.open(path, mode="a").append(patterns=torch.rand(30, 4), labels=torch.ones(30, dtype=torch.long), keys={"pca": torch.rand(30, 2)})


def _fill(store: MemoryStore) -> None:
    store.append(patterns=torch.rand(50, 4), labels=torch.zeros(50, dtype=torch.long), keys={"pca": torch.rand(50, 2)})


def _forgotten(path: Path) -> Path:
    store = MemoryStore.open(path, mode="a")
    store.forget(ids=list(range(0, 60, 3)))
    return path


#: each operation on the store at `path`: (prepare the store, do it)
OPERATIONS = {
    "append": (_store, _append),
    "create": (lambda path: _store(path).with_name("new.zarr"), lambda path: MemoryStore.write_new(path, _fill, chunk_bytes=4 * 4 * 16)),
    "replace": (_store, lambda path: MemoryStore.write_new(path, _fill, replace=True, chunk_bytes=4 * 4 * 16)),
    "forget": (_store, lambda path: MemoryStore.open(path, mode="a").forget(ids=[1, 2, 3])),
    "compact": (lambda path: _forgotten(_store(path)), lambda path: MemoryStore.open(path, mode="a").compact()),
    "add_space": (_store, lambda path: MemoryStore.open(path, mode="a").add_space("pca", torch.rand(60, 2), {"encoder": "other"})),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_store_operation_the_disk_fills_under_loses_nothing_and_runs_again(tmp_path, monkeypatch, operation):
    """At every block the disk may fill at: a StoreError naming the store and the fix, the rows as before, nothing left over."""
    prepare, do = OPERATIONS[operation]
    with monkeypatch.context() as patch:
        measured = prepare(tmp_path / "measure" / "s.zarr")
        disk = FakeDisk(tmp_path / "measure", patch)
        do(measured)
    blocks = disk.used // BLOCK
    failed_at = []
    for free in sorted({*range(0, blocks, max(1, blocks // 6)), blocks - 1}):  # from no room to a block short, 7 or 8 places
        free *= BLOCK
        root = tmp_path / f"free-{free}"
        path = prepare(root / "s.zarr")
        before = _rows(path) if path.exists() else None
        with monkeypatch.context() as patch:
            FakeDisk(root, patch, free=free)
            try:
                do(path)
            except StoreError as exc:
                error = exc
            else:  # room enough, with what the operation's own renames and deletions gave back
                assert verify(path).ok
                continue
        failed_at.append(free)
        assert error.message.startswith(f"cannot write to the store {path}: No space left on device"), (free, error.message)
        assert "free space on its disk" in error.hint and ".new-" not in error.message, (free, error.render())
        assert (_rows(path) == before and verify(path).ok) if before else not path.exists(), free
        assert _unfinished(root) == [], free
        do(path)  # with room again
        assert verify(path).ok, free
    assert failed_at[0] == 0 and len(failed_at) >= 2, (blocks, failed_at)


def test_trim_runs_on_the_disk_a_failed_append_filled(tmp_path, monkeypatch):
    """Trim frees the unpublished rows' chunk files before it writes the shrunk metadata, so a full disk is no obstacle."""
    path = _store(tmp_path / "s.zarr")
    before = _rows(path)
    monkeypatch.setattr(MemoryStore, "_publish", _failing_second_publish(MemoryStore._publish))
    with pytest.raises(StoreError, match="No space left on device"):
        _append(path)  # its rows written, the count not published: the disk is full
    monkeypatch.undo()
    with monkeypatch.context() as patch:
        FakeDisk(tmp_path, patch, free=0)
        result = CliRunner().invoke(main, ["store", "trim", str(path)])
    assert result.exit_code == 0 and result.output.startswith(f"trimmed {path}: 30 row(s) of ids"), result.output
    assert _rows(path) == before and verify(path).ok and _unfinished(tmp_path) == []


def _failing_second_publish(real):
    calls = []

    def publish(self, attrs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, attrs)

    return publish


def test_a_trim_the_disk_refuses_leaves_no_staged_metadata(tmp_path, monkeypatch):
    path = _store(tmp_path / "s.zarr")
    monkeypatch.setattr(MemoryStore, "_publish", _failing_second_publish(MemoryStore._publish))
    with pytest.raises(StoreError):
        _append(path)
    monkeypatch.undo()
    before = _rows(path)
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(".zarr.json.") and self.name.endswith(".tmp"):  # trim's staged metadata (atomic.replacing)
            real(self, "")  # created, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    result = CliRunner().invoke(main, ["store", "trim", str(path)])
    assert result.exit_code == 2 and f"cannot write to the store {path}: No space left on device" in result.output and "Traceback" not in result.output
    monkeypatch.undo()
    assert _unfinished(tmp_path) == [] and _rows(path) == before and verify(path).ok
    assert CliRunner().invoke(main, ["store", "trim", str(path)]).exit_code == 0 and verify(path).ok


def test_a_swap_the_disk_refuses_deletes_its_new_copy_at_once(tmp_path, monkeypatch):
    """The journal of a swap cannot be written: the store stays as it was, and the new copy (as large) is not left to the next writer."""
    path = _store(tmp_path / "s.zarr")
    before = _rows(path)
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(".s.zarr.swap"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(StoreError, match="a replace or a compaction needs room for a whole new copy"):
        MemoryStore.write_new(path, _fill, replace=True)
    assert _unfinished(tmp_path) == [] and _rows(path) == before


@pytest.mark.parametrize("code, fix", [(errno.EDQUOT, "disk quota is used up"), (errno.EIO, "I/O error: check the disk"), (errno.EROFS, "mounted read-only")])
def test_each_refusal_of_the_disk_is_told_with_its_own_fix(tmp_path, monkeypatch, code, fix):
    path = _store(tmp_path / "s.zarr")
    before = _rows(path)
    with monkeypatch.context() as patch:
        FakeDisk(tmp_path, patch, free=0, code=code)
        with pytest.raises(StoreError) as failed:
            _append(path)
    assert failed.value.message == f"cannot write to the store {path}: {os.strerror(code)}" and fix in failed.value.hint
    assert _rows(path) == before and verify(path).ok


# ----------------------------------------------------------------- export


def test_an_export_the_disk_fills_under_keeps_the_earlier_file_and_leaves_no_partial(tmp_path, monkeypatch):
    path = _store(tmp_path / "s.zarr")
    output = tmp_path / "out" / "rows.npz"
    output.parent.mkdir()
    output.write_bytes(b"an earlier export")
    with monkeypatch.context() as patch:
        FakeDisk(output.parent, patch, free=0)
        result = CliRunner().invoke(main, ["store", "export", str(path), "-o", str(output), "--force"])
    assert result.exit_code == 2 and "Traceback" not in result.output and not isinstance(result.exception, OSError), result.output
    assert f"cannot write {output}: No space left on device (nothing was written; an earlier file there is kept)" in result.output
    assert f"free space on its disk (`df -h {output.parent}`" in result.output
    assert output.read_bytes() == b"an earlier export" and _unfinished(tmp_path) == []
    assert CliRunner().invoke(main, ["store", "export", str(path), "-o", str(output), "--force"]).exit_code == 0


def test_an_export_into_a_folder_that_is_missing_or_a_file_is_one_message(tmp_path):
    path = _store(tmp_path / "s.zarr")
    (tmp_path / "a-file").write_text("x")
    for output, why in ((tmp_path / "missing" / "rows.npz", f"the folder {tmp_path / 'missing'} does not exist"), (tmp_path / "a-file" / "rows.npz", f"{tmp_path / 'a-file'} is not a folder")):
        result = CliRunner().invoke(main, ["store", "export", str(path), "-o", str(output)])
        assert result.exit_code == 2 and f"cannot write {output}: {why}" in result.output and "Traceback" not in result.output, result.output


# ----------------------------------------------------------------- permissions and odd paths


def test_replacing_or_compacting_a_read_only_store_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """Its old copy could not be deleted: it would stay behind, hidden and as large as the store."""
    path = _forgotten(_store(tmp_path / "s.zarr"))
    before = _rows(path)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == path and mode & os.W_OK else real(p, mode, **kw))  # as for anyone but root
    for operation, do in (("replace", lambda: MemoryStore.write_new(path, _fill, replace=True)), ("compact", lambda: MemoryStore.open(path, mode="a").compact())):
        with pytest.raises(StoreError) as failed:
            do()
        assert failed.value.message == f"cannot {operation} {path}: the store folder is read-only, so its old copy could not be deleted"
        assert f"chmod -R u+w {path}" in failed.value.hint
    assert _rows(path) == before and sorted(p.name for p in tmp_path.iterdir()) == [".s.zarr.lock", "s.zarr"]


def test_reading_a_store_takes_no_lock_and_writes_nothing(tmp_path, monkeypatch):
    """A store in a folder the reader may not write to (no lock file can be made there) reads, verifies and exports."""
    from amemctl.store import lock

    path = _store(tmp_path / "s.zarr")
    before = _rows(path)

    def no_lock(self):
        raise AssertionError("a reader took the writer lock")

    monkeypatch.setattr(lock.WriterLock, "acquire", no_lock)
    with monkeypatch.context() as patch:
        FakeDisk(tmp_path / "s.zarr", patch, free=0)  # any write into the store fails
        assert _rows(path) == before and verify(path).ok
        result = CliRunner().invoke(main, ["store", "export", str(path), "-o", str(tmp_path / "rows.npz")])
    assert result.exit_code == 0, result.output


def test_a_symlinked_store_is_written_where_it_points_and_the_link_is_kept(tmp_path):
    """Replace and compact swap the store the link points to; before, they swapped the link itself, deleting the target's zarr.json."""
    from amemctl.store.lock import lock_path
    from amemctl.store.memory import store_root

    real = _store(tmp_path / "data" / "real.zarr")
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    assert lock_path(store_root(link)) == lock_path(store_root(real))  # writers through either name wait for each other
    MemoryStore.write_new(link, _fill, replace=True)
    assert link.is_symlink() and len(MemoryStore.open(real)) == 50 and verify(real).ok
    MemoryStore.open(link, mode="a").forget(ids=list(range(10)))
    MemoryStore.open(link, mode="a").compact()
    assert link.is_symlink() and len(MemoryStore.open(real)) == MemoryStore.open(real).count == 40 and verify(link).ok
    assert _unfinished(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["data", "link.zarr"]


def test_a_store_path_that_is_a_file_or_under_one_is_told_as_such(tmp_path, run_text):
    file = tmp_path / "file.zarr"
    file.write_text("not a store\n")
    with pytest.raises(StoreError, match=f"{file} is a file, not a store"):
        MemoryStore.open(file)
    with pytest.raises(AmemctlError, match=f"cannot lock {file / 'sub.zarr'} for writing: {file} is a file, not a folder"):
        run_text(f"name: under\ndata: {{dataset: digits, limit: 20}}\nstages:\n  - persist: {{store: {file / 'sub.zarr'}, mode: append}}\n")
    assert file.read_text() == "not a store\n"


def test_a_failed_chunk_write_leaves_no_folder_behind_however_late_its_siblings_land(tmp_path, monkeypatch):
    """zarr gathers a call's chunk writes and raises at the first that fails, while the others go on:
    one landing after the unfinished copy was deleted must not bring its folder back."""
    import asyncio
    import time

    import zarr.storage

    real = zarr.storage.LocalStore.set
    landed = []

    async def set(self, key, value):
        if key.endswith("/c/0/0"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if key.endswith("/c/1/0"):
            await asyncio.sleep(0.3)  # lands well after its sibling failed
            landed.append(key)
        return await real(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set)
    with pytest.raises(StoreError, match="No space left on device"):
        MemoryStore.write_new(tmp_path / "new.zarr", _fill, chunk_bytes=4 * 4 * 16)
    time.sleep(0.5)
    assert landed and _unfinished(tmp_path) == [] and not (tmp_path / "new.zarr").exists()
