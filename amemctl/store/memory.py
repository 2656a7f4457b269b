"""MemoryStore: a persisted associative memory, one zarr v3 group.

Layout (docs/stores.md has the details):

    store.zarr/
      zarr.json            group attributes under "amemctl": schema, count, spaces, provenance
      ids                  N int64, stable, never reused
      alive                N uint8, 0 once a row is forgotten
      patterns             N x ... stored patterns (images: N x C x H x W)
      values               N x ... hetero-associated values (optional)
      labels               N int64 (optional)
      keys/<space>         N x e, one per embedding space (optional)

Safety: every mutation (create, append, forget, add_space, compact, replace) holds the
store's writer lock (store/lock.py) from before its first write until it has published. An
append writes its rows first and publishes the new count last (zarr writes each chunk file
atomically), so a reader, or a writer killed mid-append, only ever sees the rows of completed
appends; rows beyond `count` belong to an interrupted append and are ignored and overwritten.
A whole new copy (create, compact, replace) is written into a hidden folder unique to its
writer and swapped in by renaming (swap_in); the next writer finishes or clears what a killed
one left. Every open checks that the metadata agrees with the chunk files (soundness.py), so
a missing or truncated chunk is refused instead of read as zeros.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch
from torch import Tensor

from amemctl.errors import DamagedStore, StoreError, existing, refusal_hint
from amemctl.store.encoding import decode, encode, stored, widen
from amemctl.store.lock import WriterLock
from amemctl.store.soundness import (
    ATTR,
    EVERY_CHUNK,
    FIXED,
    RESERVED,
    attribute_problems,
    is_count,
    open_array,
    problems,
    trim_hint,
)

SCHEMA = 1
DEFAULT_CHUNK_BYTES = 32 * 2**20
log = logging.getLogger(__name__)
T = TypeVar("T")


#: how often `open` (and `store verify`) starts again when other processes swap a new copy in while it reads a store
OPEN_ATTEMPTS = 10
#: `_copy_on_disk` of a store whose zarr.json is missing (between a swap's renames) or unreadable
_GONE = "(no readable zarr.json)"


def _copy_on_disk(path: Path) -> str | None:
    """The generation of the copy at `path` now, read from its zarr.json (None for stores from before generations)."""
    try:
        generation = json.loads((path / "zarr.json").read_bytes())["attributes"][ATTR].get("generation")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return _GONE
    return generation if isinstance(generation, str) else None


def within_one_copy(path: Path, read: "Callable[[], T]", copy_of: "Callable[[T], str | None] | None" = None) -> "T | None":
    """`read()` of the store at `path` within one copy of it: read again while other processes swap new copies in.

    Readers take no lock, so a copy swapped in while `read` runs (compact, replace) would mix
    two copies in what it read. A result counts when the copy on disk is the same before and
    after (and is the one `copy_of(result)` says it read); a StoreError is raised only when the
    copy did not change meanwhile (else it may be two copies mixed, not damage). None when the
    copy changed each of OPEN_ATTEMPTS times.
    """
    for _ in range(OPEN_ATTEMPTS):
        before = _copy_on_disk(path)
        try:
            result = read()
        except StoreError:
            if _copy_on_disk(path) == before:
                raise
            continue
        if (copy_of is None or copy_of(result) == before) and _copy_on_disk(path) == before:
            return result
    return None


def _generation(group: Any) -> str | None:
    """The copy a store's group belongs to (None for stores written before generations existed)."""
    attrs = dict(group.attrs).get(ATTR)
    return attrs.get("generation") if isinstance(attrs, dict) else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _zarr():
    import zarr

    return zarr


class MemoryStore:
    """A store opened for reading (`MemoryStore.open(path)`) or writing (`mode="a"`)."""

    def __init__(self, path: Path, group: Any, writable: bool) -> None:
        self.path = path
        self.group = group
        self.writable = writable
        self._alive: np.ndarray | None = None
        self._opened: dict[str, Any] = {}  # arrays checked and opened since the last write (`_array`)
        self._private = False  # a new copy being written aside: the lock of the store it becomes is held
        #: which copy of the store this is: a compaction or replacement writes a new copy with a new one
        self.generation = _generation(group)

    # ----------------------------------------------------------------- opening

    @classmethod
    def create(
        cls,
        path: "str | Path",
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        compression: str = "zstd",
        checksum: bool = True,
        exist_ok: bool = False,
        description: str = "",
    ) -> "MemoryStore":
        """A new, empty store at `path` (an existing store is an error unless exist_ok)."""
        path = store_root(path)
        if compression not in ("zstd", "none"):
            raise StoreError(f"unknown compression {compression!r}", hint="use zstd or none")
        options = dict(chunk_bytes=chunk_bytes, compression=compression, checksum=checksum, description=description)
        with writer_lock(path):
            if path.exists() and exist_ok:
                return cls.open(path, mode="a")
            cls.write_new(path, lambda store: None, replace=False, **options)
        return cls.open(path, mode="a")

    @classmethod
    def write_new(cls, path: "str | Path", fill: Callable[["MemoryStore"], None], *, replace: bool = False, **options: Any) -> None:
        """Write a whole new store with `fill(store)` and put it at `path` only once complete.

        Without `replace`, an existing store is an error. The writer lock is held throughout,
        so no append, forget or compaction of `path` can interleave with it.
        """
        path = store_root(path)
        with writer_lock(path), writing(path, NEW_COPY if os.path.lexists(path) else None):
            if path.exists():
                if not replace:
                    raise StoreError(f"{path} already exists", hint="open it to append, choose another path, or use mode: replace")
                refuse_foreign(path)
                refuse_read_only(path, "replace")
            tmp = _aside(path, "new")
            try:
                fill(cls._create_at(tmp, **options))
            except BaseException:
                _discard_or_warn(tmp, "an unfinished new copy")
                raise
            swap_in(path, tmp)

    @classmethod
    def _create_at(
        cls, path: Path, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES, compression: str = "zstd", checksum: bool = True, description: str = ""
    ) -> "MemoryStore":
        """An empty store at the fresh path `path` (no lock: the caller holds the lock of the store it becomes)."""
        if compression not in ("zstd", "none"):
            raise StoreError(f"unknown compression {compression!r}", hint="use zstd or none")
        attrs = {
            "schema": SCHEMA,
            "created": _now(),
            "updated": _now(),
            "count": 0,
            "next_id": 0,
            "description": description,
            "chunk_bytes": int(chunk_bytes),
            "chunk_rows": 0,  # fixed by the first append
            "compression": compression,
            "checksum": bool(checksum),
            EVERY_CHUNK: True,
            "arrays": {},
            "spaces": {},
            "provenance": [],
            "generation": secrets.token_hex(8),
        }
        group = _zarr().create_group(store=str(path), zarr_format=3, attributes={ATTR: attrs})
        store = cls(path, group, writable=True)
        store._private = True
        return store

    @classmethod
    def open(cls, path: "str | Path", mode: str = "r", check: bool = True) -> "MemoryStore":
        """Open an existing store; mode "r" reads, "a" may also write (taking the lock per write).

        Unless `check` is false, a store whose metadata disagrees with its chunk files is
        refused here (`amemctl store verify` reports everything it finds instead).

        Opening reads the store's files one after another (its zarr.json, then each array's
        metadata and chunk files), without the writer lock. Another process may swap a new copy
        in meanwhile (compact, replace, add_space over a space), and what was read would then mix
        two copies: rows the old attributes publish but the new arrays lack, which looks like
        damage. So the copy on disk is compared before and after, and a store whose copy changed
        while it was opened is opened again, refused only if it is refused within one copy.
        """
        path = store_root(path)
        store = within_one_copy(path, lambda: cls._open_once(path, mode, check), copy_of=lambda opened: opened.generation)
        if store is not None:
            return store
        raise StoreError(
            f"{path} was replaced by other processes each of the {OPEN_ATTEMPTS} times it was opened (compacted or rewritten)",
            hint="run again when fewer processes write to it",
        )

    @classmethod
    def _open_once(cls, path: Path, mode: str, check: bool) -> "MemoryStore":
        """`open` of whatever copy `path` holds now; a swap while it reads may make a sound store look damaged."""
        with reading(path):
            if not path.exists() and _journal(path).exists():  # a swap was interrupted between its renames
                with writer_lock(path):  # taking the lock finishes it
                    pass
            if not path.exists():
                raise StoreError(f"no store at {path}", hint="check the path, or create it with a `persist` stage")
            if not path.is_dir():
                raise StoreError(f"{path} is a file, not a store (a store is a folder)", hint="check the path; amemctl stores are zarr v3 folders written by `persist`")
            if not (path / "zarr.json").is_file():
                raise StoreError(f"{path} is not a zarr v3 store (no zarr.json)", hint="amemctl stores are zarr v3 groups written by `persist`")
        try:
            group = _zarr().open_group(store=str(path), mode="r" if mode == "r" else "r+", zarr_format=3)
        except Exception as exc:  # unreadable metadata: a damaged or foreign store
            raise StoreError(f"cannot open {path} as a zarr v3 group: {exc}", hint="run `amemctl store verify` on it") from None
        attrs = dict(group.attrs).get(ATTR)
        if not isinstance(attrs, dict):  # as `is_store` decides; a mapping without a schema is a damaged store of ours
            raise StoreError(f"{path} is a zarr group but not an amemctl store (no '{ATTR}' attributes)", hint="write amemctl stores with a `persist` stage")
        _check_attributes(path, attrs)
        if check:
            found = problems(path, group, attrs)
            if found:
                raise DamagedStore(
                    f"{path} is damaged: {'; '.join(found[:3])}{' ...' if len(found) > 3 else ''}",
                    hint=trim_hint(path, found) or f"run `amemctl store verify {path}`; restore the store or write it again",
                )
        return cls(path, group, writable=mode != "r")

    # ----------------------------------------------------------------- reading

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)[ATTR]

    @property
    def count(self) -> int:
        """Rows published, including forgotten ones not yet compacted."""
        return int(self.attrs["count"])

    def __len__(self) -> int:
        """Rows alive (published and not forgotten)."""
        return int(self.alive().sum())

    @property
    def arrays(self) -> list[str]:
        """Names of the row arrays: patterns, values, labels, keys/<space> (those present)."""
        return list(self.attrs["arrays"])

    @property
    def spaces(self) -> dict[str, dict]:
        """Embedding spaces with keys, and each one's encoder identity."""
        return dict(self.attrs["spaces"])

    def content_id(self) -> dict[str, Any]:
        """What identifies the rows this store holds now, to tell that it changed since a run read it.

        Rows change only by appends (count and provenance grow), forgets (fewer rows alive: a
        forgotten row never comes back), compaction (provenance grows) and a replace or a new
        store at the path (created, provenance); all of these change this. A key space added
        or recomputed does not: `embed` writes them into the stores it reads, and tells its
        keys apart by the encoder's identity. Reads the attributes and the alive mask, no row.
        """
        attrs = self.attrs
        history = json.dumps([attrs.get("created"), attrs.get("provenance")], sort_keys=True, default=str)
        return {"rows": self.count, "alive": len(self), "created": attrs.get("created"), "history": hashlib.sha256(history.encode()).hexdigest()[:16]}

    def alive(self) -> np.ndarray:
        """Boolean mask over the published rows: True where the row is not forgotten."""
        if self._alive is None:
            count = self.count
            self._alive = self._load("alive", lambda a: a[:count]).astype(bool) if count else np.zeros(0, bool)
        return self._alive

    def live_rows(self) -> np.ndarray:
        """Physical row numbers of the live rows, in order."""
        return np.flatnonzero(self.alive())

    def storage(self, name: str) -> str:
        return self._spec(name)["storage"]

    def _spec(self, name: str) -> dict:
        """What the attributes say of array `name` (storage, row_shape); ids and alive are fixed."""
        return self.attrs["arrays"].get(name) or FIXED.get(name) or {"storage": "float32"}

    def row_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._array(name).shape[1:])

    def read(self, name: str, start: int = 0, stop: int | None = None) -> Tensor:
        """Published rows start..stop (physical numbering, forgotten ones included), decoded."""
        return widen(self.read_stored(name, start, stop), self.storage(name))

    def read_stored(self, name: str, start: int = 0, stop: int | None = None) -> Tensor:
        """`read`, not decoded yet: the rows as stored (`encoding.stored`; `encoding.widen` decodes them, on any device)."""
        stop = self.count if stop is None else min(stop, self.count)
        return stored(self._load(name, lambda a: a[start:stop], f"rows {start}..{stop - 1}"), self.storage(name))

    def take(self, name: str, rows: np.ndarray) -> Tensor:
        """The physical rows `rows` (any order, repeats allowed), decoded."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return decode(self._array(name)[0:0], self.storage(name))
        unique, inverse = np.unique(rows, return_inverse=True)
        data = self._load(name, lambda a: a.get_orthogonal_selection((unique,)), f"{len(unique)} rows")
        return decode(data[inverse.reshape(-1)], self.storage(name))

    def to_tensor(self, name: str = "patterns", device: "str | torch.device" = "cpu") -> Tensor:
        """Every live row of `name` in one tensor (for stores that fit in memory)."""
        return self.take(name, self.live_rows()).to(device)

    def ids(self) -> Tensor:
        """The stable ids of the live rows."""
        return self.take("ids", self.live_rows())

    def rows(self, name: str = "patterns", device: "str | torch.device" = "cpu", prefetch: int = 1):
        """The live rows of `name` as retrieval Rows, read chunk by chunk with prefetch."""
        from amemctl.store.rows import StoreRows

        return StoreRows(self, name, torch.device(device), prefetch)

    def iter_chunks(self, name: str = "patterns", device: "str | torch.device" = "cpu", prefetch: int = 1) -> Iterator[tuple[int, Tensor]]:
        """(offset, tensor) over the live rows of `name`, one storage chunk at a time, on `device`."""
        rows = self.rows(name, device, prefetch)
        return rows.chunks(self.chunk_rows(name))

    def chunk_rows(self, name: str) -> int:
        return int(self._array(name).chunks[0])

    def space_identity(self, space: str) -> dict:
        if space not in self.spaces:
            raise StoreError(f"{self.path} has no keys in space {space!r}", hint=f"its spaces: {', '.join(self.spaces) or 'none'}")
        return self.spaces[space]

    def check_space(self, space: str, identity: dict) -> None:
        """Refuse to score with keys made by another encoder than `identity` describes."""
        stored = self.space_identity(space)
        differing = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
        if differing:
            detail = "; ".join(f"{k}: store {stored.get(k)!r}, pipeline {identity.get(k)!r}" for k in differing)
            raise StoreError(
                f"the keys/{space} of {self.path} were made by another encoder ({detail})",
                hint="embed with the same encoder, or re-embed the store into a new key space",
            )

    def _load(self, name: str, get: Callable[[Any], np.ndarray], what: str = "rows") -> np.ndarray:
        """`get(array)`, with a chunk that fails to decode (damage after opening) told as a StoreError."""
        array = self._array(name)
        try:
            data = get(array)
        except StoreError:
            raise
        except Exception as exc:
            self._check_not_replaced()  # a chunk gone because the store was swapped is no damage
            raise StoreError(
                f"cannot read {what} of {name} in {self.path}: {type(exc).__name__}: {exc}",
                hint=f"run `amemctl store verify {self.path}` to find the damaged chunk file",
            ) from None
        self._check_not_replaced()
        return data

    def _check_not_replaced(self) -> None:
        """Refuse rows read after another process swapped a new copy in (compaction, replace).

        Chunk files are read by path: after a swap they are the new copy's, so a reader that
        went on would mix two stores. Checked after each read, so every row returned was read
        before any swap. A store opened to append reads outside the lock too, so it is checked
        as well; its own writes move its `generation` with the file's (`_refresh`, `compact`).
        (Stores written before generations existed have none; a swap gives them one.)
        """
        if self._private:
            return
        if _copy_on_disk(self.path) != self.generation:
            raise StoreError(
                f"{self.path} was replaced while it was being read (compacted or rewritten by another process)",
                hint="run again: a new read sees the new store whole",
            )

    def _array(self, name: str) -> Any:
        """Array `name`, opened in one guarded step: damaged metadata is a DamagedStore naming its zarr.json.

        Kept once opened (every chunk read asks for it) until this store writes: rows are read
        only below the `count` published when the store was opened, which a later append by
        another process does not move, and a swap or rewrite of the arrays is caught after each
        read by `_check_not_replaced`.
        """
        array = self._opened.get(name)
        if array is not None:
            return array
        try:
            array = open_array(self.path, self.group, name, self._spec(name), self.attrs) if name in (*FIXED, *self.arrays) else None
        except StoreError:
            self._check_not_replaced()  # the metadata of a copy swapped in since, which may differ from this copy's: no damage
            raise
        if array is None:
            self._check_not_replaced()  # a copy swapped in since may lack it
            raise StoreError(f"{self.path} has no array {name!r}", hint=f"it has: {', '.join(['ids', 'alive', *self.arrays])}")
        self._opened[name] = array
        return array

    # ----------------------------------------------------------------- writing

    def append(
        self,
        *,
        patterns: Tensor | None = None,
        values: Tensor | None = None,
        labels: Tensor | None = None,
        keys: dict[str, Tensor] | None = None,
        identities: dict[str, dict] | None = None,
        storage: dict[str, str] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> Tensor:
        """Add rows; returns their new ids. The first append fixes which arrays a store has.

        storage: per array name, "float32" (default), "float16", "bfloat16" or "uint8".
        identities: per key space, the encoder identity (architecture, weights sha256, ...).
        """
        self._require_writable()
        given = {k: v for k, v in (("patterns", patterns), ("values", values), ("labels", labels)) if v is not None}
        given.update({f"keys/{space}": k for space, k in (keys or {}).items()})
        if not given:
            raise StoreError("nothing to append: give patterns, values, labels or keys")
        sizes = {name: len(t) for name, t in given.items()}
        n = next(iter(sizes.values()))
        if any(s != n for s in sizes.values()):
            raise StoreError(f"arrays to append differ in length: {sizes}", hint="append the same rows to every array")
        with self._writer(APPENDED.format(path=self.path)):
            self._refresh()
            attrs = self.attrs
            existing = set(attrs["arrays"])
            if attrs["count"] and set(given) != existing:
                missing, extra = sorted(existing - set(given)), sorted(set(given) - existing)
                raise StoreError(
                    f"append to {self.path} must give the same arrays it holds ({', '.join(sorted(existing))})"
                    + (f"; missing {', '.join(missing)}" if missing else "")
                    + (f"; not in the store: {', '.join(extra)}" if extra else ""),
                    hint="add a new key space to every row with add_space()" if any(e.startswith("keys/") for e in extra) else None,
                )
            start = int(attrs["count"])
            first_id = int(attrs["next_id"])
            encoded = {name: self._encode(name, t, (storage or {}).get(name), attrs) for name, t in given.items()}
            if not attrs.get("chunk_rows"):
                attrs["chunk_rows"] = chunk_rows_for(encoded.values(), attrs["chunk_bytes"], n)
            if start + n > max(start, attrs.get(RESERVED, 0)):  # say how far the arrays may grow before growing them
                attrs[RESERVED] = start + n
                self._publish(attrs)
            for name, data in encoded.items():
                self._write_rows(name, data, start, attrs)
            ids = np.arange(first_id, first_id + n, dtype=np.int64)
            self._write_rows("ids", ids, start, attrs)
            self._write_rows("alive", np.ones(n, np.uint8), start, attrs)
            for space in keys or {}:
                attrs["spaces"][space] = dict((identities or {}).get(space, attrs["spaces"].get(space, {"encoder": "unknown"})))
            attrs["provenance"].append({"rows": [start, start + n], "time": _now(), **(provenance or {})})
            attrs.update(count=start + n, next_id=first_id + n, updated=_now())
            self._publish(attrs)  # the moment the new rows become visible
        return torch.from_numpy(ids)

    def add_space(self, space: str, keys: Tensor, identity: dict, storage: str = "float32") -> None:
        """Add (or replace) the keys of every published row in a new embedding space."""
        self._require_writable()
        with self._writer():
            self._refresh()
            attrs = self.attrs
            if len(keys) != attrs["count"]:
                raise StoreError(f"keys for {len(keys)} rows, but the store has {attrs['count']} rows", hint="embed every stored row, forgotten ones included")
            name = f"keys/{space}"
            if name in attrs["arrays"]:  # rewritten in place: readers of the old keys must stop, as after a swap
                attrs["generation"] = self.generation = secrets.token_hex(8)
                self._publish(attrs)
                del self.group[name]
                del attrs["arrays"][name]
            self._write_rows(name, self._encode(name, keys, storage, attrs), 0, attrs)
            attrs["spaces"][space] = dict(identity)
            attrs["updated"] = _now()
            self._publish(attrs)

    def forget(self, ids: "Tensor | list[int] | None" = None, where: Callable[[Tensor], Tensor] | None = None) -> int:
        """Forget rows by id, or where `where(labels)` is true; returns how many were forgotten.

        Forgotten rows stop being retrieved at once; `compact()` reclaims their space.
        """
        self._require_writable()
        with self._writer():
            self._refresh()
            count = self.count
            alive = self.alive().copy()
            hit = np.zeros(count, bool)
            if ids is not None:
                wanted = np.asarray(torch.as_tensor(ids).cpu().numpy(), dtype=np.int64).reshape(-1)
                stored = self._array("ids")[:count]
                unknown = np.setdiff1d(wanted, stored)
                if unknown.size:
                    raise StoreError(f"no rows with ids {', '.join(map(str, unknown[:5]))}{' ...' if unknown.size > 5 else ''} in {self.path}")
                hit |= np.isin(stored, wanted)
            if where is not None:
                if "labels" not in self.attrs["arrays"]:
                    raise StoreError(f"{self.path} stores no labels to select by")
                hit |= np.asarray(where(self.read("labels")).cpu().numpy(), dtype=bool)
            newly = hit & alive
            if newly.any():
                self._writable_array("alive").set_orthogonal_selection((np.flatnonzero(newly),), 0)
                attrs = self.attrs
                attrs["updated"] = _now()
                self._publish(attrs)
            return int(newly.sum())

    def compact(self) -> int:
        """Rewrite the store without its forgotten rows; returns how many rows were dropped.

        The compacted copy is written beside the store and swapped in by renaming, so an
        interruption leaves either the old store or the new one, never a mix.
        """
        self._require_writable()
        with self._writer():
            self._refresh()
            attrs = self.attrs
            live = self.live_rows()
            dropped = self.count - len(live)
            if dropped == 0:
                return 0
            refuse_read_only(self.path, "compact")
            tmp = _aside(self.path, "new")
            with writing(self.path, NEW_COPY):
                try:
                    self._copy_live(tmp, attrs, live, dropped)
                except BaseException:
                    _discard_or_warn(tmp, "an unfinished compacted copy")
                    raise
                swap_in(self.path, tmp)
        reopened = MemoryStore.open(self.path, mode="a")
        self.group, self.generation = reopened.group, reopened.generation
        self._forget_read()
        return dropped

    def _copy_live(self, tmp: Path, attrs: dict, live: np.ndarray, dropped: int) -> None:
        """Write the rows `live` of this store as a new store at `tmp` (compaction's copy).

        One storage chunk's worth of rows at a time, so compacting a store larger than memory
        holds about two chunks (the rows read, and the chunk being written), never an array.
        """
        new = MemoryStore._create_at(tmp, chunk_bytes=attrs["chunk_bytes"], compression=attrs["compression"], checksum=attrs["checksum"], description=attrs["description"])
        new_attrs = new.attrs
        for name in ["ids", *attrs["arrays"]]:
            like, spec = self._array(name), attrs["arrays"].get(name)
            step = int(like.chunks[0])
            for start in range(0, max(len(live), 1), step):  # an empty store still gets its (empty) arrays
                rows = live[start : start + step]
                raw = self._load(name, lambda a, rows=rows: a.get_orthogonal_selection((rows,)) if len(rows) else a[0:0])
                new._write_rows(name, raw, start, new_attrs, like=like, spec=spec)
        new._write_rows("alive", np.ones(len(live), np.uint8), 0, new_attrs)
        new_attrs.update(
            {k: attrs[k] for k in ("created", "next_id", "spaces", "provenance", "arrays", "chunk_rows")},
            count=len(live),
            updated=_now(),
        )
        new_attrs["provenance"] = [*attrs["provenance"], {"time": _now(), "compacted": {"dropped": dropped}}]
        new._publish(new_attrs)

    # ----------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _writer(self, note: str | None = None) -> Iterator[None]:
        """Hold the writer lock (with what killed writers left tidied) and tell refused writes as StoreErrors.

        A new copy being written aside (`_private`) is inside the write of the store it becomes
        (write_new, compact), which holds the lock and tells a refused write naming that store,
        not the hidden folder the user never named.
        """
        if self._private:
            yield
            return
        with writer_lock(self.path), writing(self.path, note):
            yield

    def _require_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.path} is open read-only", hint="open it with mode='a' to write")

    def _refresh(self) -> None:
        self.group = _zarr().open_group(store=str(self.path), mode="r+", zarr_format=3)
        self.generation = _generation(self.group)
        self._forget_read()

    def _publish(self, attrs: dict) -> None:
        self.group.attrs.update({ATTR: json.loads(json.dumps(attrs))})
        self._forget_read()

    def _forget_read(self) -> None:
        """Drop what was read of the store's metadata (the alive mask, opened arrays): a write has changed it."""
        self._alive = None
        self._opened.clear()

    def _encode(self, name: str, t: Tensor, storage: str | None, attrs: dict) -> np.ndarray:
        if name == "labels":
            storage = "int64"
        known = attrs["arrays"].get(name)
        if known is not None:
            if storage is not None and storage != known["storage"]:
                raise StoreError(f"{name} is stored as {known['storage']}, cannot append {storage}")
            storage = known["storage"]
            if tuple(t.shape[1:]) != tuple(known["row_shape"]):
                raise StoreError(
                    f"{name} rows are shaped {tuple(known['row_shape'])} in {self.path}, got {tuple(t.shape[1:])}",
                    hint="append rows of the shape the store holds",
                )
        return encode(t, storage or "float32", name)

    def _write_rows(self, name: str, data: np.ndarray, start: int, attrs: dict, like: Any = None, spec: dict | None = None) -> None:
        """Write rows start..start+len(data) of `name`, creating or growing the array first."""
        n = len(data)
        try:
            array = self.group[name]
        except KeyError:
            array = self._create_array(name, data, attrs, like)
            if name not in ("ids", "alive"):
                attrs["arrays"][name] = spec or {"storage": _storage_of(name, data), "row_shape": list(data.shape[1:])}
        if array.shape[0] < start + n:
            array.resize((start + n, *array.shape[1:]))
        if n:
            array.with_config({"write_empty_chunks": True})[start : start + n] = data

    def _writable_array(self, name: str) -> Any:
        """The array, set to write every chunk, all-zero ones too (a missing chunk file then means damage)."""
        return self._array(name).with_config({"write_empty_chunks": True})

    def _create_array(self, name: str, data: np.ndarray, attrs: dict, like: Any) -> Any:
        from zarr.codecs import Crc32cCodec, ZstdCodec

        rows = int(like.chunks[0]) if like is not None else int(attrs.get("chunk_rows") or chunk_rows_for([data], attrs["chunk_bytes"], len(data)))
        codecs = [ZstdCodec(level=3)] if attrs["compression"] == "zstd" else []
        if attrs["checksum"]:
            codecs.append(Crc32cCodec())
        return self.group.create_array(
            name,
            shape=(0, *data.shape[1:]),
            chunks=(rows, *data.shape[1:]),
            dtype=data.dtype,
            compressors=codecs,
            fill_value=0,
        )


def chunk_rows_for(arrays: "Iterable[np.ndarray]", chunk_bytes: int, first_rows: int) -> int:
    """Rows per chunk, shared by every array of a store so that chunk i covers the same rows everywhere.

    The widest row decides (its chunks come closest to `chunk_bytes`); a store whose first
    append is small gets smaller chunks, so reading it does not decode mostly-empty chunks.
    """
    widest = max(max(1, math.prod(a.shape[1:]) * a.dtype.itemsize) for a in arrays)
    by_bytes = max(1, chunk_bytes // widest)
    return int(min(by_bytes, max(1024, 1 << max(0, first_rows - 1).bit_length())))


def _storage_of(name: str, data: np.ndarray) -> str:
    return {np.dtype("uint16"): "bfloat16"}.get(data.dtype, str(data.dtype)) if name != "labels" else "int64"


def store_root(path: "str | Path") -> Path:
    """`path` if it can name a store's own folder: not `.` or `..`, and not inside another store."""
    raw = Path(path)
    if raw.name in ("", ".", "..") or str(path).strip() == "":
        raise StoreError(f"{str(path)!r} cannot be a store path", hint="name a folder of its own, such as stores/digits.zarr")
    names = [raw]
    if os.path.islink(raw):  # the store is where the link points: locked, written and swapped there, the link left as it is
        raw = Path(os.path.realpath(raw))
        names.append(raw)
        if raw.name in ("", ".", ".."):
            raise StoreError(f"{path} links to {raw}, which cannot be a store path", hint="link to a folder of its own, such as /data/stores/digits.zarr")
    for name in names:
        for ancestor in Path(os.path.abspath(name)).parents:
            with reading(ancestor):  # a folder above that may not be read
                inside = (ancestor / "zarr.json").is_file()
            if inside:
                raise StoreError(
                    f"{name} lies inside the store (or zarr group) {ancestor}",
                    hint="a store path names a store's own folder, outside any other store, such as stores/other.zarr",
                )
    return raw


@contextlib.contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Hold the writer lock of `path`, tidying what killed writers left when this takes it.

    Only the outermost hold tidies: nested in it (a persist's append or new copy), nothing of a
    killed writer can have appeared since, and what lies aside is the holder's own work.
    """
    with WriterLock(path) as lock:
        if lock.outermost:
            with writing(path):
                tidy(path)
        yield


#: what a write that ran out of room adds to its hint
NEW_COPY = "; a replace or a compaction needs room for a whole new copy of the store beside the old one until it is done"
APPENDED = "; the rows the append wrote are unpublished: running it again overwrites them, `amemctl store trim {path}` frees their space now"
_FULL = (errno.ENOSPC, errno.EDQUOT)


def writing(path: Path, note: str | None = None) -> "contextlib.AbstractContextManager[None]":
    """Tell a write the file system refuses (a read-only store, a full disk) as a StoreError naming the store and the fix.

    `note` is added to the hint when the disk is full (NEW_COPY, APPENDED): what the write needed room for, or left.
    """
    return _refused(path, "write to", "check that you may write to it and that its disk has room", note)


def reading(path: Path) -> "contextlib.AbstractContextManager[None]":
    """Tell a read the file system refuses (a store folder without read permission) as a StoreError."""
    return _refused(path, "read", "check that you may read it (the folder, its files and the folders above it)")


@contextlib.contextmanager
def _refused(path: Path, verb: str, hint: str, note: str | None = None) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        fix = refusal_hint(exc, existing(path), verb) if verb != "read" or exc.errno not in (errno.EACCES, errno.EPERM) else None
        if fix is not None and note and exc.errno in _FULL:
            fix += note
        raise StoreError(f"cannot {verb} the store {path}: {exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else ""), hint=fix or hint) from None


def refuse_read_only(path: Path, doing: str) -> None:
    """Refuse to `doing` (replace, compact) a store whose folder this process may not change.

    Both write a new copy beside the store and swap it in by renaming, which the folder
    above allows; the old copy, read-only, could then not be deleted and would stay behind,
    hidden, as large as the store.
    """
    if path.is_dir() and not os.access(path, os.W_OK):
        raise StoreError(
            f"cannot {doing} {path}: the store folder is read-only, so its old copy could not be deleted",
            hint=f"make it writable first (`chmod -R u+w {path}`) if it may change, or write the new store elsewhere",
        )


def _check_attributes(path: Path, attrs: dict) -> None:
    """Refuse an attribute document of a newer schema, or with fields of the wrong types, before anything uses it."""
    schema = attrs.get("schema")
    if is_count(schema) and schema > SCHEMA:
        raise StoreError(f"{path} has store schema {schema}, newer than this amemctl understands ({SCHEMA})", hint="upgrade amemctl to read it")
    found = attribute_problems(attrs)
    if found:
        raise DamagedStore(
            f"the attributes of {path} ({path / 'zarr.json'}, under {ATTR!r}) are damaged: {'; '.join(found[:3])}{' ...' if len(found) > 3 else ''}",
            hint="the store is damaged: restore it from a copy, or write it again (persist with mode: replace)",
        )


def is_store(path: Path) -> bool:
    """Whether `path` holds an amemctl store (a zarr group with amemctl attributes, sound or not)."""
    try:
        doc = json.loads((path / "zarr.json").read_bytes())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return False
    attributes = doc.get("attributes") if isinstance(doc, dict) and doc.get("node_type") == "group" else None
    return isinstance(attributes, dict) and isinstance(attributes.get(ATTR), dict)


def refuse_foreign(path: Path) -> None:
    """Refuse to replace what is at `path` unless it is an amemctl store or an empty folder.

    A replace deletes the old contents, so anything else there (another program's zarr
    store, a folder of files, a file) is left alone with an error instead.
    """
    if path.is_dir() and not any(path.iterdir()):
        return
    if not is_store(path):
        raise StoreError(
            f"{path} exists and is not an amemctl store; refusing to replace it",
            hint="delete it yourself if it may go, or choose another path",
        )


def _aside(path: Path, kind: str) -> Path:
    """A fresh hidden folder name beside `path`, unique to this writer (`.x.zarr.new-<pid>-<random>`)."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _journal(path: Path) -> Path:
    return path.with_name(f".{path.name}.swap")


def _discard_or_warn(folder: Path, what: str) -> None:
    """`_discard(folder)`, a failure only logged: the write it follows (or gives up) has not failed because of it."""
    try:
        _discard(folder)
    except OSError as exc:
        log.warning("cannot delete %s, %s (%s); delete it by hand", folder, what, exc.strerror or exc)


def _discard(folder: Path) -> None:
    """Delete a folder of ours, its zarr.json first so that a half-deleted one is no store.

    Once zarr's writes in flight have ended: when one chunk write fails (a full disk), zarr
    raises at once while the others of the same call go on in its event loop, and a chunk
    written after the deletion would leave the folder behind.
    """
    _writes_ended()
    if not folder.exists():
        return
    (folder / "zarr.json").unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def _writes_ended() -> None:
    """Wait until the tasks in zarr's event loop have ended (zarr.core.sync: zarr gathers a call's chunk writes there, and does not cancel them when one fails)."""
    from zarr.core.sync import sync

    async def ended() -> None:
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        await asyncio.gather(*others, return_exceptions=True)

    sync(ended())


def swap_in(path: Path, new: Path) -> None:
    """Put the complete store `new` at `path` by renaming; the old one (if any) aside, then away.

    The caller holds the writer lock of `path`. A journal names both folders while `path`
    does not exist, so a kill between the renames is finished by `tidy` (the next writer or
    opener); a kill while the old copy is deleted leaves a hidden folder without zarr.json.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        new.rename(path)
        return
    refuse_foreign(path)
    old = _aside(path, "old")
    journal = _journal(path)
    staged = journal.with_name(journal.name + "-" + secrets.token_hex(4))
    try:
        staged.write_text(json.dumps({"new": new.name, "old": old.name}))
        os.replace(staged, journal)
    except BaseException:  # nothing is renamed yet: the store stays as it was, and the new copy, as large, goes now
        with contextlib.suppress(OSError):  # gone already, or its folder is: the error to tell is the write's
            staged.unlink()
        _discard_or_warn(new, "a new copy that could not be swapped in")
        raise
    path.rename(old)
    new.rename(path)
    journal.unlink()
    _discard_or_warn(old, f"the old copy of {path} (replaced)")  # the swap is done: a leftover is no failure of it


def tidy(path: Path) -> None:
    """Finish a swap a killed writer left between its renames, and delete its temporary folders.

    Only on taking the writer lock of `path` (`writer_lock`): then no live writer owns any of
    these folders.
    """
    journal = _journal(path)
    if journal.exists():
        try:
            names = json.loads(journal.read_text())
            new = path.with_name(names["new"])  # the old copy, if any, is discarded below
        except (OSError, ValueError, KeyError, TypeError):
            new = None
        if new is not None and not path.exists() and (new / "zarr.json").exists():
            new.rename(path)
        journal.unlink(missing_ok=True)
    name = glob.escape(path.name)
    for leftover in [*path.parent.glob(f".{name}.new-*"), *path.parent.glob(f".{name}.old-*")]:
        _discard_or_warn(leftover, "what an earlier writer left")
    for leftover in path.parent.glob(f".{name}.swap-*"):
        try:
            leftover.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot delete %s, which an earlier writer left (%s); delete it by hand", leftover, exc.strerror or exc)


__all__ = ["MemoryStore", "SCHEMA"]
