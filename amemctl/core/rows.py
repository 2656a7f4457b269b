"""Stored rows, read in chunks: the one interface retrieval needs from a memory.

Retrieval never asks for all stored patterns at once; it asks for consecutive chunks of
rows, and (for top-k) for a few rows by index. A tensor in memory serves that through
`TensorRows`; a store on disk serves it by reading chunk files (amemctl.store).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Rows(Protocol):
    """N stored rows, each flattened to `width` features."""

    def __len__(self) -> int: ...

    @property
    def row_shape(self) -> tuple[int, ...]: ...

    def chunks(self, size: int) -> Iterator[tuple[int, Tensor]]:
        """(offset, rows offset..offset+size as an n x width tensor), in order."""
        ...

    def take(self, index: Tensor) -> Tensor:
        """The rows at `index` (any order, repeats allowed) as a len(index) x width tensor."""
        ...


@dataclass(frozen=True)
class TensorRows:
    """Rows held in one tensor of shape N x ... (images, embeddings, bit patterns)."""

    data: Tensor

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    @property
    def width(self) -> int:
        return int(torch.Size(self.row_shape).numel())

    def flat(self) -> Tensor:
        return self.data.reshape(len(self), -1)

    def chunks(self, size: int) -> Iterator[tuple[int, Tensor]]:
        flat = self.flat()
        for start in range(0, len(self), size):
            yield start, flat[start : start + size]

    def take(self, index: Tensor) -> Tensor:
        return self.flat()[index.to(self.data.device)]


@dataclass(frozen=True)
class RowwiseRows:
    """Rows with a function applied to each row as it is read (embeddings scaled to length 1, say).

    `fn` maps an n x width tensor to another, each row from that row alone, so that chunks,
    taken rows and shards give what the whole tensor would; a store stays streamed.
    """

    rows: Rows
    fn: Callable[[Tensor], Tensor]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.rows.row_shape)

    @property
    def width(self) -> int:
        return math.prod(self.row_shape)

    def chunks(self, size: int) -> Iterator[tuple[int, Tensor]]:
        for start, chunk in self.rows.chunks(size):
            yield start, self.fn(chunk)

    def take(self, index: Tensor) -> Tensor:
        return self.fn(self.rows.take(index))

    def shard(self, start: int, stop: int) -> "RowwiseRows":
        return RowwiseRows(shard(self.rows, start, stop), self.fn)


def shard(rows: Rows, start: int, stop: int) -> Rows:
    """Rows start..stop of `rows` (for one rank of several), read lazily when they come from a store."""
    if isinstance(rows, TensorRows):
        return TensorRows(rows.data[start:stop])
    if hasattr(rows, "shard"):
        return rows.shard(start, stop)
    raise TypeError(f"cannot split {type(rows).__name__} across ranks")


def as_rows(x: "Tensor | Rows") -> Rows:
    """Wrap a tensor as Rows; anything that already is Rows passes through."""
    if isinstance(x, Tensor):
        if x.dim() == 0:
            raise ValueError("stored memories need at least one dimension (N x ...)")
        if x.dim() == 1:
            x = x[:, None]
        return TensorRows(x)
    return x


def take(x: "Tensor | Rows", index: Tensor) -> Tensor:
    """Rows `index` of a tensor or of Rows (a store), in their stored shape."""
    if isinstance(x, Tensor):
        return x[index.to(x.device)]
    return x.take(index).reshape(len(index), *x.row_shape)


def materialize(x: "Tensor | Rows") -> Tensor:
    """Every row of x as one tensor in the stored shape (Rows from a store are read whole)."""
    if isinstance(x, Tensor):
        return x
    parts = [chunk for _, chunk in x.chunks(max(1, len(x)))]
    flat = torch.cat(parts) if parts else torch.empty(0, math.prod(x.row_shape))
    return flat.reshape(len(x), *x.row_shape)


def row_shape(x: "Tensor | Rows") -> tuple[int, ...]:
    """The shape of one row of a tensor or of Rows."""
    return tuple(x.shape[1:]) if isinstance(x, Tensor) else tuple(x.row_shape)


class Aligned:
    """Rows read in step with another Rows' chunks: `next(n)` gives exactly the next n rows.

    Each Rows chunks in its own way (a store rounds to whole storage chunks, whose rows depend
    on the array's width), so a hetero memory's key and value chunks need not line up.
    """

    def __init__(self, rows: Rows, size: int) -> None:
        self._chunks = rows.chunks(size)
        self._held: list[Tensor] = []
        self._count = 0

    def next(self, n: int) -> Tensor:
        while self._count < n:
            _, chunk = next(self._chunks)
            self._held.append(chunk)
            self._count += len(chunk)
        joined = self._held[0] if len(self._held) == 1 else torch.cat(self._held)
        rest = joined[n:]
        self._held, self._count = ([rest] if len(rest) else []), len(rest)
        return joined[:n]
