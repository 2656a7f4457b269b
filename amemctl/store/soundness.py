"""Cheap checks that a store's metadata agrees with its data, made whenever a store is opened.

zarr reads a missing chunk file as the fill value, so a deleted chunk would silently decode
as rows of zeros, and a tampered `storage` attribute would decode one type as another.
These checks look only at metadata and file sizes (no chunk is decoded), so every open can
afford them; `amemctl store verify` adds the full decode of every chunk.
"""

from __future__ import annotations

import json
import math
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np

from amemctl.errors import DamagedStore
from amemctl.store.encoding import STORAGE

ATTR = "amemctl"
#: attribute set by stores that write every chunk (even all-zero ones), so a missing file is damage
EVERY_CHUNK = "every_chunk_written"
#: attribute: the rows an append may have grown the arrays to (recorded before it grows them)
RESERVED = "reserved"
#: the row arrays a store may list besides keys/<space>
ROW_ARRAYS = ("patterns", "values", "labels")
#: ids and alive, which every store with rows has (not listed in the attributes)
FIXED = {"ids": {"storage": "int64", "row_shape": []}, "alive": {"storage": "uint8", "row_shape": []}}
#: a key space's name, which becomes a folder name (keys/<space>): no separators, no leading dot
SPACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
MAX_DIMS = 32
#: how a problem says an array declares rows no append could have written (`trim_hint` offers trim)
BEYOND_GROWTH = "more than the store could have grown it to"


def chunk_file(name: str, index: int, ndim: int) -> str:
    """The file of row-chunk `index` of array `name`, relative to the store (zarr v3 default keys)."""
    return "/".join([name, "c", str(index), *["0"] * (ndim - 1)])


def problems(path: Path, group: Any, attrs: dict) -> list[str]:
    """What is wrong with the store's metadata or chunk files (empty when nothing is)."""
    found = attribute_problems(attrs)
    if found:
        return found
    count = attrs["count"]
    arrays = attrs["arrays"]
    for name, spec in {**FIXED, **arrays}.items():
        try:
            array = open_array(path, group, name, spec, attrs)
        except DamagedStore as exc:
            found.append(f"{name}/zarr.json: {getattr(exc, 'detail', exc.message)}")
            continue
        if array is None:
            if name in arrays or count:  # ids and alive appear with the first append
                found.append(f"array {name!r} is listed in the attributes but missing")
            continue
        if array.shape[0] < count:
            found.append(f"{name} has {array.shape[0]} rows but the store publishes {count}")
            continue
        if array.shape[0] > row_bound(path, attrs, array.shape[0]):
            found.append(
                f"{name} declares {array.shape[0]} rows in {path / name / 'zarr.json'}, {BEYOND_GROWTH}"
                f" ({count} published{_reserved_note(attrs)})"
            )
            continue
        found.extend(_chunk_files(path, name, array, count, attrs))
    return found


def trim_hint(path: Path, found: list[str]) -> str | None:
    """How to open the store at `path` again when the problems `found` include rows a killed append left (else None)."""
    if any(BEYOND_GROWTH in problem for problem in found):
        return f"if an append was killed (by an amemctl from before 'reserved'), `amemctl store trim {path}` drops its unpublished rows"
    return None


def row_bound(path: Path, attrs: dict, shape: int) -> int:
    """The most rows an array of the store may declare: `count`, or what an append reserved before growing it.

    Arrays grow exactly to the rows written (memory.py `_write_rows`), so rows beyond `count`
    come only from an interrupted append, which records its end (RESERVED) before growing
    them. A declared size beyond that is damage; an append that began after `attrs` was read
    may have reserved more, so a size beyond is checked again against the attributes on disk.
    """
    bound = max(attrs["count"], attrs.get(RESERVED, 0))
    if shape <= bound:
        return bound
    try:
        fresh = json.loads((path / "zarr.json").read_text())["attributes"][ATTR]
        again = max(fresh["count"], fresh.get(RESERVED, 0))
    except (OSError, ValueError, KeyError, TypeError):
        return bound
    return max(bound, again) if is_count(again) else bound


def _reserved_note(attrs: dict) -> str:
    return f", {attrs[RESERVED]} reserved by appends" if attrs.get(RESERVED, 0) > attrs["count"] else ""


def attribute_problems(attrs: Any) -> list[str]:
    """What is wrong with the types of the attribute document, checked before anything uses it.

    Every reader indexes these fields (count, arrays, spaces, ...) directly, and array names
    become paths inside the store, so a document of the wrong shape (a string schema, an
    `arrays` list, a name like ../x) is refused here as damage rather than crashing later.
    """
    if not isinstance(attrs, dict):
        return [f"the attributes are a {type(attrs).__name__}, not a mapping"]
    found = [f"{key} is {attrs.get(key, 'missing')!r}, not {what}" for key, (ok, what) in _FIELDS.items() if not ok(attrs.get(key))]
    found += [f"{key} is {attrs[key]!r}, not {what}" for key, (ok, what) in _OPTIONAL.items() if key in attrs and not ok(attrs[key])]
    arrays = attrs.get("arrays")
    if isinstance(arrays, dict):
        for name, spec in arrays.items():
            found += [f"arrays.{name}: {p}" for p in _spec_problems(name, spec)]
    spaces = attrs.get("spaces")
    if isinstance(spaces, dict):
        found += [f"spaces.{name}: not a space name with an identity mapping" for name, identity in spaces.items() if not _space_name(name) or not isinstance(identity, dict)]
    provenance = attrs.get("provenance")
    if isinstance(provenance, list) and not all(isinstance(entry, dict) for entry in provenance):
        found.append("provenance holds an entry that is not a mapping")
    return found


def _spec_problems(name: str, spec: Any) -> list[str]:
    if not (name in ROW_ARRAYS or (name.startswith("keys/") and _space_name(name[5:]))):
        return [f"not an array name the store writes ({', '.join(ROW_ARRAYS)} or keys/<space>)"]
    if not isinstance(spec, dict):
        return [f"{spec!r} is not a mapping of storage and row_shape"]
    found = []
    if spec.get("storage") not in STORAGE:
        found.append(f"storage {spec.get('storage')!r} is not one of {', '.join(STORAGE)}")
    row_shape = spec.get("row_shape")
    if not isinstance(row_shape, list) or len(row_shape) > MAX_DIMS or not all(is_count(n) for n in row_shape):
        found.append(f"row_shape {row_shape!r} is not a list of sizes")
    return found


def is_count(value: Any, least: int = 0) -> bool:
    """An integer (not a bool) of at least `least`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _space_name(name: Any) -> bool:
    return isinstance(name, str) and SPACE_NAME.fullmatch(name) is not None


_FIELDS = {
    "schema": (lambda v: is_count(v, 1), "a layout version (an integer from 1)"),
    "count": (is_count, "a number of rows"),
    "next_id": (is_count, "an id (an integer from 0)"),
    "chunk_bytes": (lambda v: is_count(v, 1), "a number of bytes"),
    "chunk_rows": (is_count, "a number of rows"),
    "compression": (lambda v: v in ("zstd", "none"), "zstd or none"),
    "checksum": (lambda v: isinstance(v, bool), "true or false"),
    "arrays": (lambda v: isinstance(v, dict), "a mapping of array names to their storage and row_shape"),
    "spaces": (lambda v: isinstance(v, dict), "a mapping of space names to encoder identities"),
    "provenance": (lambda v: isinstance(v, list), "a list"),
    "created": (lambda v: isinstance(v, str), "a time"),
    "updated": (lambda v: isinstance(v, str), "a time"),
    "description": (lambda v: isinstance(v, str), "a string"),
}
_OPTIONAL = {  # written by newer versions only
    EVERY_CHUNK: (lambda v: isinstance(v, bool), "true or false"),
    "generation": (lambda v: isinstance(v, str), "a string"),
    RESERVED: (is_count, "a number of rows"),
}


def open_array(path: Path, group: Any, name: str, spec: dict, attrs: dict) -> Any:
    """The zarr array `name` (None when the store has no such array), refused as damage unless it is as the store writes it.

    Its zarr.json is read and checked before zarr opens it, in one guarded step, so that
    metadata zarr cannot parse (truncated JSON, an unknown codec, a negative shape, a group
    where an array belongs, an unreadable file) and metadata zarr would accept but the store
    never writes (big-endian bytes, another dtype or chunk layout) are both a DamagedStore
    naming the file, never a traceback or rows decoded as garbage.
    """
    meta = path / name / "zarr.json"
    try:
        text = meta.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _damaged(meta, f"it cannot be read ({exc.strerror or exc})") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise _damaged(meta, f"it is not valid JSON ({exc})") from None
    wrong = metadata_problems(name, doc, spec, attrs)
    if wrong:
        raise _damaged(meta, "; ".join(wrong))
    try:
        array = group[name]
    except Exception as exc:  # whatever zarr cannot open is damage to this file
        raise _damaged(meta, f"zarr cannot open it ({type(exc).__name__}: {exc})") from None
    if not hasattr(array, "chunks"):
        raise _damaged(meta, "zarr opens it as a group, not an array")
    return array


def metadata_problems(name: str, doc: Any, spec: dict, attrs: dict) -> list[str]:
    """How an array's zarr.json differs from what memory.py writes (empty when it does not)."""
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") != "array":
        return ["it does not describe a zarr v3 array"]
    found = []
    storage = spec["storage"]
    if doc.get("data_type") != STORAGE[storage]:
        found.append(f"{name}: the attributes say {storage} (zarr {STORAGE[storage]}) but the array holds {doc.get('data_type')}")
    shape = doc.get("shape")
    if not isinstance(shape, list) or not 1 <= len(shape) <= MAX_DIMS + 1 or not all(is_count(n) for n in shape):
        return [*found, f"shape {shape!r} is not a list of sizes"]
    if "row_shape" in spec and list(spec["row_shape"]) != shape[1:]:
        found.append(f"{name}: the attributes say rows of shape {tuple(spec['row_shape'])} but the array holds {tuple(shape[1:])}")
    grid = doc.get("chunk_grid")
    chunks = grid.get("configuration", {}).get("chunk_shape") if isinstance(grid, dict) and grid.get("name") == "regular" and isinstance(grid.get("configuration"), dict) else None
    if not isinstance(chunks, list) or len(chunks) != len(shape) or not is_count(chunks[0], 1) or chunks[1:] != shape[1:]:
        found.append(f"chunk shape {chunks!r} is not whole rows (the store chunks [rows, *row_shape], rows >= 1)")
    if doc.get("chunk_key_encoding") != {"name": "default", "configuration": {"separator": "/"}}:
        found.append(f"chunk key encoding {doc.get('chunk_key_encoding')!r} is not the default with '/'")
    if doc.get("fill_value") not in (0, 0.0) or isinstance(doc.get("fill_value"), bool):
        found.append(f"fill value {doc.get('fill_value')!r} is not 0")
    if doc.get("storage_transformers", []) != []:
        found.append("it has storage transformers")
    found.extend(_codec_problems(doc.get("codecs"), attrs))
    return found


def _codec_problems(codecs: Any, attrs: dict) -> list[str]:
    """The codecs must be those the store writes: little-endian bytes, then zstd and crc32c as the attributes say."""
    expected = ["bytes", *(["zstd"] if attrs["compression"] == "zstd" else []), *(["crc32c"] if attrs["checksum"] else [])]
    if not isinstance(codecs, list) or not all(isinstance(c, dict) for c in codecs):
        return [f"codecs {codecs!r} are not a list of codecs"]
    names = [c.get("name") for c in codecs]
    if names != expected:
        return [f"codecs {names} are not the store's {expected} (compression {attrs['compression']}, checksum {str(attrs['checksum']).lower()})"]
    configuration = codecs[0].get("configuration") or {}
    endian = configuration.get("endian", "little") if isinstance(configuration, dict) else configuration
    if endian != "little":
        return [f"the bytes codec is {endian!r}-endian; the store writes little-endian only"]
    return []


def _damaged(meta: Path, what: str) -> DamagedStore:
    """The error for an array's zarr.json that is not as the store writes it; `detail` says what without the path."""
    error = DamagedStore(f"{meta} is damaged: {what}", hint="the store is damaged: restore it from a copy, or write it again (persist with mode: replace)")
    error.detail = what
    return error


def _chunk_files(path: Path, name: str, array: Any, count: int, attrs: dict) -> list[str]:
    """Problems with the chunk files of the published rows: missing (where every chunk is written), not a file, truncated."""
    rows = int(array.chunks[0])
    raw = math.prod(array.chunks) * np.dtype(str(array.dtype)).itemsize + (4 if attrs.get("checksum") else 0)
    found = []
    for index in range(math.ceil(count / rows)):
        relative = chunk_file(name, index, array.ndim)
        span = f"rows {index * rows}..{min(count, (index + 1) * rows) - 1}"
        try:
            status = (path / relative).stat()
        except FileNotFoundError:
            if attrs.get(EVERY_CHUNK):
                found.append(f"{name} chunk {index} ({span}, file {relative}) is missing")
            continue
        except OSError as exc:
            found.append(f"{name} chunk {index} ({span}, file {relative}) cannot be read ({exc.strerror or exc})")
            continue
        size = status.st_size
        if not stat.S_ISREG(status.st_mode):
            found.append(f"{name} chunk {index} ({span}, file {relative}) is not a regular file")
        elif size == 0 or (attrs.get("compression") == "none" and size != raw):
            found.append(f"{name} chunk {index} ({span}, file {relative}) is truncated ({size} bytes{'' if attrs.get('compression') != 'none' else f', expected {raw}'})")
    return found
