"""One writer at a time: an OS lock (flock, through `filelock`) on a file beside the store.

The lock file sits next to the store (`stores/.x.zarr.lock` for `stores/x.zarr`), not inside
it, so that it outlives the store folder being swapped for a new copy (replace, compact) and
every writer of one path contends on one file. The kernel releases the lock when its holder
dies, so there is no stale lock to take over and no way to take a live holder's lock. The
holder writes who it is into the file (waiters never truncate it), so a writer that gives up
waiting can say whom it waited for.

Readers never take the lock; they see only what a writer has published. The lock is
reentrant within one thread, so an operation that holds it may call others that take it;
`outermost` tells the acquisition that took it from the ones nested inside.
"""

from __future__ import annotations

import errno
import getpass
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import filelock

from amemctl.errors import StoreError, refusal_hint

#: seconds a writer waits for another to finish before giving up (environment AMEMCTL_LOCK_WAIT)
DEFAULT_WAIT = 120.0
WAIT_ENV = "AMEMCTL_LOCK_WAIT"

_held: dict[tuple[Path, int], list] = {}  # (lock file, thread) -> [FileLock, depth]


def lock_path(store_path: "str | Path") -> Path:
    """The lock file guarding the store at `store_path`: `.NAME.lock` in the same folder."""
    full = Path(os.path.abspath(store_path))
    return full.parent / f".{full.name}.lock"


class WriterLock:
    """`with WriterLock(store_path):` holds the store's writer lock for the block, waiting up to `wait` seconds."""

    def __init__(self, store_path: "str | Path", wait: float | None = None) -> None:
        self.store = Path(store_path)
        self.path = lock_path(store_path)
        self.wait = wait
        self.outermost = False  #: whether this acquisition took the lock (rather than nesting in this thread's hold)

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        key = (self.path, threading.get_ident())
        if key in _held:
            _held[key][1] += 1
            self.outermost = False
            return
        wait = self.wait if self.wait is not None else float(os.environ.get(WAIT_ENV, DEFAULT_WAIT))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = filelock.FileLock(self.path, thread_local=False)
            lock.acquire(timeout=wait)
        except filelock.Timeout:
            raise StoreError(
                f"store {self.store} is being written by another process: {_describe(self._holder())}",
                hint=f"wait for it to finish (waited {wait:g} s; set {WAIT_ENV} to wait longer)",
            ) from None
        except OSError as exc:
            blocking = next((p for p in [self.path.parent, *self.path.parent.parents] if p.exists() and not p.is_dir()), None)
            if blocking is not None:  # mkdir says "File exists" or "Not a directory", which names neither the file nor the fix
                raise StoreError(
                    f"cannot lock {self.store} for writing: {blocking} is a file, not a folder",
                    hint="a store path names a folder inside folders: check the path",
                ) from None
            access = f"a writer needs write access to {self.path.parent}"
            raise StoreError(
                f"cannot lock {self.store} for writing: {exc.strerror or exc}",
                hint=access if exc.errno in (errno.EACCES, errno.EPERM) else refusal_hint(exc, self.path.parent) or access,
            ) from None
        _held[key] = [lock, 1]
        self.outermost = True
        self._write_holder()

    def release(self) -> None:
        key = (self.path, threading.get_ident())
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            entry[0].release()

    def _write_holder(self) -> None:
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "user": _user(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:200],
        }
        try:
            self.path.write_text(json.dumps(me))
        except OSError:  # only a courtesy for whoever waits
            pass

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name on some containers
        return "?"


def _describe(holder: dict | None) -> str:
    if holder is None:
        return "unknown holder"
    return f"pid {holder.get('pid')} on {holder.get('host')} (user {holder.get('user')}) since {holder.get('since')}: {holder.get('command')}"
