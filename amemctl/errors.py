"""The errors a user can cause, and how they are told.

Every mistake a user can make (a bad pipeline, an unknown stage, a tensor of the wrong
shape, a missing dataset, a damaged store) raises one of these. Each carries the place it
was found (a file, line and column when there is one) and a hint saying what to do
instead. The CLI prints them as one message and exits with code 2; anything else that
escapes is a bug in amemctl or a plugin and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Iterator


@dataclass(frozen=True)
class Location:
    """A place in a source file, 1-based as editors show it."""

    file: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        parts = [self.file]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)


class AmemctlError(Exception):
    """Root of every error caused by input rather than by a bug."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, location: Location | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.location = location

    def at(self, location: Location | None) -> "AmemctlError":
        """Attach a location unless one is already known; returns self for `raise e.at(...)`."""
        if self.location is None and location is not None:
            self.location = location
        return self

    def render(self) -> str:
        """The message as the CLI prints it: `where: message` and an indented hint."""
        head = f"{self.location}: {self.message}" if self.location else self.message
        return f"{head}\n  hint: {self.hint}" if self.hint else head

    def __str__(self) -> str:
        return self.render()


class PipelineError(AmemctlError):
    """A pipeline file is malformed, refers to unknown things, or is wired wrongly."""


class StageError(AmemctlError):
    """A stage was given data it cannot work with (shapes, dtypes, NaN, ranges)."""


class DataError(AmemctlError):
    """A dataset or checkpoint is missing or unreadable."""


class StoreError(AmemctlError):
    """A memory store is missing, locked, damaged or of an incompatible kind."""


class DamagedStore(StoreError):
    """A store whose metadata and chunk files disagree (missing, truncated or of another dtype)."""


class RunFolderError(AmemctlError):
    """A folder named as a run is not one amemctl made, or its run.json (or metrics.json) is damaged."""


class PluginError(AmemctlError):
    """A plugin failed to load or declares something that clashes with another."""


class DeviceError(AmemctlError):
    """The requested device does not exist on this machine."""


class FileSystemError(AmemctlError):
    """The file system refused a read or a write: a full disk, a quota, a size limit, no permission, a read-only or failing disk."""


#: errors of the file system that are the user's (or the machine's) to fix, never a bug: what to do about each
_REFUSALS = {
    errno.ENOSPC: "free space on its disk (`df -h {where}` shows how much is left), then {then}",
    errno.EDQUOT: "your disk quota is used up: free space (or have the quota raised), then {then}",
    errno.EFBIG: "a file grew past the size limit of this process (`ulimit -f`) or of its file system: raise the limit or write elsewhere",
    errno.EROFS: "its file system is mounted read-only: write somewhere else",
    errno.EACCES: "you may not {verb} it: check the permissions of {where} and the folders above it, then {then}",
    errno.EPERM: "you may not {verb} it: check the permissions of {where} and the folders above it, then {then}",
    errno.EIO: "the disk reported an I/O error: check the disk (`dmesg`) before trusting what it holds, then {then}",
}


#: the hints where the refused file is not known (an OSError naming none: the standard output, a library's own file)
_UNPLACED = {
    errno.ENOSPC: "free space on the disk it writes to (`df -h` shows what each disk has left; the standard output too, when it goes to a file), then {then}",
    errno.EACCES: "you may not {verb} it: check the permissions of what it reads and writes (the standard output too, when it goes to a file), then {then}",
    errno.EPERM: "you may not {verb} it: check the permissions of what it reads and writes (the standard output too, when it goes to a file), then {then}",
}


def refused(exc: BaseException) -> bool:
    """Whether `exc` is the file system refusing (full, over quota, too large, read-only, not permitted, failing)."""
    return isinstance(exc, OSError) and exc.errno in _REFUSALS


def refusal_hint(exc: OSError, where: object, verb: str = "write to", then: str = "run it again") -> str | None:
    """What to do about the file system's refusal `exc` of a write (or `verb`) at `where` (None: not known), and `then`; None for other errors."""
    hint = (_UNPLACED.get(exc.errno) if where is None else None) or _REFUSALS.get(exc.errno)
    return hint.format(where=where, verb=verb, then=then) if hint is not None else None


def refusal(exc: OSError, what: object = None, where: object = None, verb: str = "write to", then: str = "run it again") -> FileSystemError:
    """The file system's refusal `exc` as one error with its fix.

    `cannot write to WHAT: No space left on device (FILE)`, or `FILE: No space left on device`
    when what was being done is not known (`what` None), or `a file it did not name: ...` when
    the OSError names none (the standard output on a full disk). `where` is the place the hint
    names (`df -h WHERE`, its permissions): by default the nearest existing folder of the file;
    `then` what to do once it is fixed.
    """
    file = exc.filename
    if where is None:
        where = existing(Path(file)) if file else what
    if what is None:
        message = f"{file or 'a file it did not name'}: {exc.strerror or exc}"
        verb = "read or write"
    else:
        message = f"cannot {verb} {what}: {exc.strerror or exc}" + (f" ({file})" if file and str(file) != str(what) else "")
    return FileSystemError(message, hint=refusal_hint(exc, where, verb, then) or f"check that you may {verb} {where or 'what it reads and writes'}")


def naming(exc: OSError, path: object, instead: object = None) -> OSError:
    """`exc` naming `path` as its file when it names none (a write that failed after its file was opened) or `instead` (a temporary file the user never named)."""
    if exc.filename is not None and (instead is None or str(exc.filename) != str(instead)):
        return exc
    named = OSError(exc.errno, exc.strerror, str(path))  # of the same subclass (PermissionError, ...), as OSError picks it by errno
    named.__cause__ = exc
    return named


def existing(path: Path) -> Path:
    """`path` when it is a folder, else the nearest existing folder above it (what `df` and `ls -ld` can be asked about)."""
    for candidate in (path, *path.parents) if os.path.isdir(path) else (path.parent, *path.parent.parents):
        if os.path.isdir(candidate):
            return candidate
    return path


class StageCrash(AmemctlError):
    """A stage raised something other than an AmemctlError: a bug in it, not in the pipeline.

    The message names the stage, its package and the pipeline line; the traceback is saved
    in the run folder rather than printed. Exit code 1, as for any bug.
    """

    exit_code = 1


def blame_function(exc: BaseException, noun: str, name: str) -> BaseException:
    """Mark `exc` as the fault of the registered function `name` (a similarity, separation, corruption...); returns it.

    For what amemctl finds wrong with what a function gave it (a kernel's scores of the wrong
    shape, a corruption's images of another shape, a separation class that cannot be made): no
    frame of the function's package is in the traceback, so without the mark a crash would be
    blamed on amemctl. The innermost mark wins (a plugin's corruption inside `compose`).
    """
    if getattr(exc, "amemctl_function", None) is None:
        try:  # an exception that takes no attribute (a frozen dataclass's) goes on unmarked, never replaced by that refusal
            exc.amemctl_function = (noun, name)  # type: ignore[attr-defined]
        except Exception:
            pass
    return exc


def blaming(noun: str, name: str) -> "_Blaming":
    """A `with` block marking what it raises as the fault of the registered function `name` (blame_function); an AmemctlError goes on unmarked.

    Wrapped around each call amemctl makes into a function's own code (a Function's `make`, a
    similarity's kernel, a separation's reducer and weights): a crash is then blamed on the
    function that raised and placed at the stage that chose it, even where one plugin package
    provides several functions of one step (its similarity and its separation). An
    AmemctlError is the user's to fix, not a bug of the function's.
    """
    return _Blaming(noun, name)


@dataclass(frozen=True)
class _Blaming:
    """The context manager of `blaming`: a class, as contextlib's generator ones set `__traceback__` on
    the exception they pass on, which an exception that takes no attributes refuses."""

    noun: str
    name: str

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if isinstance(exc, Exception) and not isinstance(exc, AmemctlError):
            blame_function(exc, self.noun, self.name)
        return False  # raised on unchanged


def made_by(made: object, noun: str, name: str) -> object:
    """Tag `made` as made by the registered function `name` (a `noun`: "separation"); returns it.

    A separation object's own `name` is whatever its class says (a plugin's
    `SeparationFunction("a", lambda: Elementwise("b", fn))` makes one called "b"), and the
    runner places a crash at the stage that chose the registered name: code that runs the
    object's methods marks what they raise with `maker_of` instead. An object that takes no
    attribute (`__slots__`) goes on untagged, and is blamed by its own name.
    """
    try:
        object.__setattr__(made, "amemctl_made_by", (noun, name))  # past a frozen dataclass's __setattr__
    except (AttributeError, TypeError):
        pass
    return made


def maker_of(made: object, noun: str) -> tuple[str, str]:
    """The registered function that made `made` (`made_by`), as (noun, name) for `blaming`; else its own `name`.

    Untagged: a separation made in a notebook or by `make_separation`, whose name is its registered one.
    """
    tag = getattr(made, "amemctl_made_by", None)
    return tag if tag is not None else (noun, str(getattr(made, "name", type(made).__name__)))


def blamed_function(exc: BaseException) -> tuple[str, str] | None:
    """The (noun, name) `blame_function` marked `exc` or an exception it was raised from, if any (see `chain`)."""
    return next((marked for seen in chain(exc) if (marked := getattr(seen, "amemctl_function", None)) is not None), None)


def chain(exc: BaseException, implicit: bool = True) -> Iterator[BaseException]:
    """`exc`, then each exception it was raised from, as Python's traceback prints them; without `implicit`, causes only.

    Each step is the cause (`raise ... from exc`), else the exception it was raised while
    handling, unless `raise ... from None` suppressed that one: its code said the error it
    handled is no part of the new one, so nothing is blamed through it. Stops where the chain
    loops back on itself (an exception re-raised from one raised from it).
    """
    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        yield seen
        if seen.__cause__ is not None or not implicit or seen.__suppress_context__:
            seen = seen.__cause__
        else:
            seen = seen.__context__
