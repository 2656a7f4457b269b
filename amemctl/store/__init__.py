"""Persistent memories: zarr v3 stores of patterns, keys per embedding space, values, labels."""

from amemctl.store.memory import MemoryStore
from amemctl.store.rows import StoreRows

__all__ = ["MemoryStore", "StoreRows"]
