"""Retrieval over a memory split across torch.distributed ranks.

Each rank owns a contiguous shard of the stored rows, scores the (same) queries against it,
and the ranks merge their partial states exactly: the log-sum-exp merge for softmax (running
maximum, normaliser, weighted sum), sums for elementwise separations, a gathered top-k for max
and top-k. Every rank ends with the full answer.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import Tensor

from amemctl.core.retrieval import Recall, Shard, recall
from amemctl.core.rows import Rows, TensorRows, as_rows


def shard_range(rows: int, rank: int, world: int) -> tuple[int, int]:
    """Rows start..stop that `rank` of `world` owns: contiguous, sizes differing by at most one."""
    base, extra = divmod(rows, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_rows(rows: Rows, start: int, stop: int) -> Rows:
    """Rows start..stop of `rows`, read lazily when they come from a store."""
    if isinstance(rows, TensorRows):
        return TensorRows(rows.data[start:stop])
    if hasattr(rows, "shard"):
        return rows.shard(start, stop)
    raise TypeError(f"cannot split {type(rows).__name__} across ranks")


def sharded_recall(queries: Tensor, keys: "Tensor | Rows", values: "Tensor | Rows | None" = None, group: Any = None, **options: Any) -> Recall:
    """`recall` with this rank's shard of keys and values, merged across the group's ranks."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    key_rows = as_rows(keys)
    total = len(key_rows)
    start, stop = shard_range(total, rank, world)
    local_keys = shard_rows(key_rows, start, stop)
    local_values = None if values is None else shard_rows(as_rows(values), start, stop)
    return recall(queries, local_keys, local_values, shard=Shard(group, start, total), **options)
