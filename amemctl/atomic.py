"""Files written whole or not at all: a temporary name beside the file, renamed over it when done.

A run folder, a figure or a checkpoint that a full disk (or a kill) cuts short must not be
left truncated where the next `--resume` or load would read it, nor leave the temporary file
behind holding the space the user needs back.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from amemctl.errors import naming


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary name beside `path` to write; when the block ends it is renamed over `path`.

    When the block (or the rename) fails, the temporary file is deleted and what was at `path`
    before is kept; an OSError names `path`, not the temporary file the user never named.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # gone already, or its folder is: the error to tell is the write's
            tmp.unlink()
        if isinstance(exc, OSError):
            raise naming(exc, path, instead=tmp) from None
        raise


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` whole, or leave what was there before (and no temporary file)."""
    with replacing(path) as tmp:
        tmp.write_text(text)


__all__ = ["replacing", "write_atomically"]
