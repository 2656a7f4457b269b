"""One writer at a time: a lock file inside the store naming its holder.

Readers never take the lock; they see only what a writer has published. A lock left by a
process that died on this machine is recognised (its pid no longer runs) and taken over.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
import time
from pathlib import Path

from amemctl.errors import StoreError

LOCK_NAME = ".amemctl.lock"


class WriterLock:
    """`with WriterLock(store_path):` holds the store's writer lock for the block."""

    def __init__(self, store_path: Path) -> None:
        self.path = Path(store_path) / LOCK_NAME
        self.held = False

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "user": _user(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:200],
        }
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and _is_stale(holder):
                    self.path.unlink(missing_ok=True)
                    continue
                raise StoreError(
                    f"store {self.path.parent} is being written by another process: {_describe(holder)}",
                    hint=f"wait for it to finish; if it no longer runs, delete {self.path}",
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

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


def _is_stale(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


def _describe(holder: dict | None) -> str:
    if holder is None:
        return "unknown holder (unreadable lock file)"
    return f"pid {holder.get('pid')} on {holder.get('host')} (user {holder.get('user')}) since {holder.get('since')}: {holder.get('command')}"
