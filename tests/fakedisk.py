"""A disk that fills up, fabricated: `FakeDisk` makes writes under a folder take whole blocks of a
fixed number left and fail as a full disk's do (OSError ENOSPC from the write, naming no file)
when none is left; deleting a file, or renaming one over it, gives its blocks back.

Writes through Python's open() are metered (zarr's chunk and metadata files, json and text,
zip members, torch.save through a file, figures); files opened by C code are not.
"""

from __future__ import annotations

import builtins
import errno
import io
import math
import os
from pathlib import Path

import pytest

BLOCK = 4096


class FakeDisk:
    """Files written under `root` take whole blocks of `free` bytes left (None: unlimited, only counted)."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch, free: int | None = None, code: int = errno.ENOSPC) -> None:
        self.root = str(root)
        self.free = free
        self.code = code
        self.used = 0
        real_open, real_unlink, real_replace = builtins.open, os.unlink, os.replace

        def opener(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and os.path.abspath(file).startswith(self.root):
                in_place = not any(c in mode for c in "wax")  # "r+": overwriting the blocks a file has takes none
                return _Metered(handle, self, os.path.getsize(file) if in_place else 0, in_place)
            return handle

        def unlink(path, *, dir_fd=None):
            size = self._size(path, dir_fd)
            real_unlink(path, dir_fd=dir_fd)
            self.give(size)

        def replace(src, dst, **kwargs):
            size = self._size(dst, kwargs.get("dst_dir_fd"))
            real_replace(src, dst, **kwargs)
            self.give(size)

        for target, name, value in ((builtins, "open", opener), (io, "open", opener), (os, "unlink", unlink), (os, "remove", unlink), (os, "replace", replace)):
            monkeypatch.setattr(target, name, value)

    @staticmethod
    def _size(path, dir_fd) -> int:
        try:
            return os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_size
        except OSError:
            return 0

    def take(self, blocks: int) -> None:
        if self.free is not None:
            if blocks * BLOCK > self.free:
                raise OSError(self.code, os.strerror(self.code))
            self.free -= blocks * BLOCK
        self.used += blocks * BLOCK

    def give(self, size: int) -> None:
        if self.free is not None:
            self.free += math.ceil(size / BLOCK) * BLOCK


class _Metered:
    """A file being written on a FakeDisk: each block it grows into is taken from the disk first."""

    def __init__(self, handle, disk: FakeDisk, size: int = 0, in_place: bool = False) -> None:
        self._handle, self._disk, self._size, self._in_place = handle, disk, size, in_place

    def write(self, data):
        length = len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes
        size = max(self._size, self._handle.tell() + length) if self._in_place else self._size + length
        self._disk.take(math.ceil(size / BLOCK) - math.ceil(self._size / BLOCK))
        self._size = size
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)
