"""What a store holds, for people: arrays with their shapes, codecs and sizes, and provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amemctl.store.memory import MemoryStore


def describe(store: MemoryStore) -> dict[str, Any]:
    """A plain summary of the store (the CLI renders it; tests read it)."""
    attrs = store.attrs
    arrays = []
    for name in ["ids", "alive", *store.arrays]:
        array = store._array(name)
        arrays.append(
            {
                "name": name,
                "shape": tuple(array.shape),
                "dtype": str(array.dtype),
                "storage": store.storage(name),
                "chunks": tuple(array.chunks),
                "codecs": [type(c).__name__.replace("Codec", "").lower() for c in array.compressors],
                "bytes_raw": int(array.nbytes),
                "bytes_stored": int(array.nbytes_stored()),
            }
        )
    return {
        "path": str(store.path),
        "schema": attrs["schema"],
        "rows": len(store),
        "published": attrs["count"],
        "forgotten": attrs["count"] - len(store),
        "next_id": attrs["next_id"],
        "created": attrs["created"],
        "updated": attrs["updated"],
        "description": attrs.get("description", ""),
        "arrays": arrays,
        "spaces": attrs["spaces"],
        "provenance": attrs["provenance"],
    }


def disk_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
