"""The files, folders and stores a pipeline's stages read: checked before anything runs, and identified for resuming.

Stages declare the paths they read and write (`Param(..., reads="store")`, `Stage.files()`).
Before a run starts, and in `amemctl validate`, every path a stage reads must be there (a
store must open as a sound amemctl store), unless an earlier stage of the same sweep point
writes it: a mistyped path is told at its YAML line, not minutes into the run. Paths are
relative to the directory amemctl runs in; a resumed run runs in the one its run started in.

The paths a run reads that none of its stages writes are its inputs from outside. Their
identity (a store's rows, a file's bytes, a folder's listing) is recorded in run.json when
the run starts, and a resumed run refuses to reuse finished points computed from an input
that has changed since, rather than mix results of two different inputs in one table.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any, Iterator

from amemctl.dsl.pipeline import Pipeline, PlannedStage, PointPlan, raise_together
from amemctl.errors import AmemctlError, DataError, StageCrash, StoreError
from amemctl.stage import PATH_KINDS, FileUse

#: files up to this size are identified by their sha256; larger ones by size and modification time
HASHED_BYTES = 256 * 2**20


def resolved(path: str) -> Path:
    """The absolute path a stage opens for `path`: `~` expanded, relative to the current directory."""
    return Path(os.path.abspath(Path(path).expanduser()))


def uses(planned: PlannedStage) -> list[FileUse]:
    """The paths a configured stage declares (Stage.files); a files() that raises is a bug of its package, told as one."""
    try:
        return list(planned.stage.files())
    except AmemctlError:
        raise
    except Exception as exc:
        registry = planned.stage.registry
        package = registry.package_of("stages", planned.stage.name) if registry is not None else "?"
        raise StageCrash(
            f"stage {planned.stage.name!r} (package {package}) crashed while naming the files it reads: {type(exc).__name__}: {exc}",
            hint=f"a bug in the package {package} (its files()), not a mistake in the pipeline",
            location=planned.location,
        ) from exc


def reads(pipeline: Pipeline) -> Iterator[tuple[PlannedStage, FileUse, Path]]:
    """Every path a stage reads that no earlier stage of its sweep point writes, with the stage and the resolved path (once per stage and path)."""
    seen: set[tuple[str, Path]] = set()
    for plan in pipeline.plans:
        for planned, use, path in point_reads(plan):
            if (planned.stage.name, path) not in seen:
                seen.add((planned.stage.name, path))
                yield planned, use, path


def point_reads(plan: PointPlan) -> Iterator[tuple[PlannedStage, FileUse, Path]]:
    """The paths the stages of one sweep point read that no earlier stage of it writes."""
    written: set[Path] = set()
    for planned in plan.stages:
        for use in uses(planned):
            path = resolved(use.path)
            if use.writes:
                written.add(path)
            elif not _within(path, written):
                yield planned, use, path


def _within(path: Path, written: set[Path]) -> bool:
    """Whether `path` is one of the `written` paths or inside one (a checkpoint in the folder a training wrote)."""
    return path in written or any(parent in written for parent in path.parents)


def check_files(pipeline: Pipeline) -> None:
    """Refuse a pipeline whose stages read a file, folder or store that is not there: every one, each at its parameter's line."""
    errors = []
    for planned, use, path in reads(pipeline):
        error = _problem(planned, use, path)
        if error is not None:
            errors.append(error.at(planned.location_of(use.param)))
    raise_together(errors)


def _problem(planned: PlannedStage, use: FileUse, path: Path) -> AmemctlError | None:
    """What is wrong with a path a stage reads (None when it is there as it should be).

    A store that does not open is told by the store's own error (a StoreError, a
    DamagedStore with its fix), a missing file or folder as a DataError, as the stage
    itself would have told them when it ran.
    """
    what = f"stage {planned.stage.name!r} reads the {PATH_KINDS[use.kind]} {use.path!r} ({use.param}:)"
    where = "" if Path(use.path).expanduser().is_absolute() else f"; relative paths are read from the directory amemctl runs in, {os.getcwd()}"
    if use.kind == "store":
        from amemctl.store.memory import MemoryStore

        try:
            MemoryStore.open(path)  # metadata and chunk files checked against each other; no row is read
        except StoreError as exc:
            error = copy.copy(exc)  # its class and fix: a DamagedStore stays one
            error.location = None
            if path.exists():
                error.message = f"{what}, which does not open: {exc.message}"
            else:
                error.message = f"{what}, which does not exist"
                error.hint = f"check the path, or make the store first (a `persist` stage before this one, or the pipeline that persists it){where}"
            return error
        return None
    folder = use.kind == "folder"
    if not path.exists():
        return DataError(f"{what}, which does not exist", hint=f"check the path{where}")
    if folder != path.is_dir():
        return DataError(f"{what}, but {path} is a {'file' if folder else 'folder'}", hint=f"give the path of a {PATH_KINDS[use.kind]}")
    return None


def inputs(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """The identity of every path the run reads that none of its stages writes, by resolved path: what run.json records."""
    written = {resolved(use.path) for plan in pipeline.plans for planned in plan.stages for use in uses(planned) if use.writes}
    found: dict[str, dict[str, Any]] = {}
    for _, use, path in reads(pipeline):
        if not _within(path, written) and str(path) not in found:
            found[str(path)] = identity(path, use.kind)
    return found


def identity(path: Path, kind: str) -> dict[str, Any]:
    """What a path holds now, compared on resume: a store's rows (MemoryStore.content_id), a file's sha256, a folder's listing."""
    if kind == "store":
        from amemctl.store.memory import MemoryStore

        return {"kind": kind, **MemoryStore.open(path).content_id()}
    if kind == "folder":
        return {"kind": kind, **_listing(path)}
    size = path.stat().st_size
    if size > HASHED_BYTES:
        return {"kind": kind, "bytes": size, "modified_ns": path.stat().st_mtime_ns}
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"kind": kind, "bytes": size, "sha256": digest.hexdigest()}


def _listing(folder: Path) -> dict[str, Any]:
    """A folder's files (names, sizes, modification times, every level down) as a count and a digest; nothing is read."""
    entries = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            stat = (Path(root) / name).stat()
            entries.append(f"{os.path.relpath(os.path.join(root, name), folder)}\0{stat.st_size}\0{stat.st_mtime_ns}")
    return {"files": len(entries), "listing": hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]}


def changes(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, str]:
    """The recorded inputs that now hold something else, each with what changed (`rows 200 -> 150`); inputs new or gone are not changes."""
    changed = {}
    for path, before in recorded.items():
        now = current.get(path)
        if isinstance(before, dict) and now is not None and before != now:
            fields = [f"{k} {_short(before.get(k))} -> {_short(now.get(k))}" for k in dict.fromkeys([*before, *now]) if before.get(k) != now.get(k)]
            changed[path] = ", ".join(fields)
    return changed


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 else text  # a sha256: its first digits tell them apart
