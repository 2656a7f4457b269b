"""Retrieval over a memory split across torch.distributed ranks.

Each rank owns a contiguous shard of the stored rows, scores the (same) queries against it,
and the ranks merge their partial states exactly: the log-sum-exp merge for softmax (running
maximum, normaliser, weighted sum), sums for elementwise separations, a gathered top-k for max
and top-k. Every rank ends with the full answer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from amemctl.core.retrieval import Recall, Shard, recall
from amemctl.core.rows import Rows, as_rows, shard


def shard_range(rows: int, rank: int, world: int) -> tuple[int, int]:
    """Rows start..stop that `rank` of `world` owns: contiguous, sizes differing by at most one."""
    base, extra = divmod(rows, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def sharded_recall(queries: Tensor, keys: "Tensor | Rows", values: "Tensor | Rows | None" = None, group: Any = None, **options: Any) -> Recall:
    """`recall` with this rank's shard of keys and values, merged across the group's ranks."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    key_rows = as_rows(keys)
    total = len(key_rows)
    start, stop = shard_range(total, rank, world)
    local_keys = shard(key_rows, start, stop)
    local_values = None if values is None else shard(as_rows(values), start, stop)
    return recall(queries, local_keys, local_values, shard=Shard(group, start, total), **options)


def gather_rows(local: Tensor, total: int, group: Any = None) -> Tensor:
    """Every rank's contiguous block of rows (as shard_range splits `total`), concatenated in rank order."""
    world = dist.get_world_size(group)
    sizes = [stop - start for start, stop in (shard_range(total, r, world) for r in range(world))]
    padded = local.new_zeros(max(sizes), *local.shape[1:])
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def embed_sharded(embed: Any, images: "Tensor | Rows", group: Any = None) -> Tensor:
    """`embed(rows)` computed on this rank's shard of `images` and gathered on every rank."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    rows = as_rows(images) if isinstance(images, Tensor) and images.dim() < 2 else images
    total = len(rows)
    start, stop = shard_range(total, rank, world)
    part = rows[start:stop] if isinstance(rows, Tensor) else shard(rows, start, stop)
    return gather_rows(embed(part), total, group)
