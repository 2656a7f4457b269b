"""Stages `sdm-write` and `sdm-read`: Kanerva's sparse distributed memory (Kanerva 1988).

`- model: {preset: sdm, form: kanerva, locations: L, radius: r}` stands for the two. The math
is `amemctl.core.sdm`: random hard locations, counters, a read that sums the counters of the
locations within the radius and thresholds at 0.
"""

from __future__ import annotations

import math

from amemctl.context import Context
from amemctl.core import sdm
from amemctl.core.modules import SparseDistributedMemory
from amemctl.core.rows import row_shape
from amemctl.errors import StageError
from amemctl.plugins import hookimpl
from amemctl.stage import REQUIRED, Input, Metric, Output, Param, ParamError, Stage


class SdmWrite(Stage):
    """Write patterns into a sparse distributed memory with random hard locations (Kanerva 1988).

    The `locations` hard-location addresses are drawn uniformly from {0,1}^n with the
    pipeline's seed (a new draw for each repeat). Every location within Hamming distance
    `radius` of an address adds the data written there to its counters, +1 for each bit
    above 0 and -1 for the others. Give `radius`, or `p`, the probability that a location
    fires for a given address: the radius is then the smallest whose binomial probability
    reaches p. Records `sdm_radius` and `sdm_written`, the mean number of locations each
    pattern was written to (about L times the probability at that radius).
    """

    name = "sdm-write"
    locations = Param(int, REQUIRED, "the number L of hard locations", min=1)
    radius = Param(int, None, "the Hamming distance within which a location is written and read", min=0)
    p = Param(float, None, "instead of radius: the probability that a location fires for a given address (Kanerva's p; n = 1,000, p = 0.001 gives r = 451)", above=0, max=1)
    memory = Input("patterns", "the addresses written at (N x ...); entries > 0 read as 1")
    values = Input(None, "hetero-association: the data written at each address (default: the addresses themselves)", optional=True)
    output = Output("sdm", "the memory: hard locations, counters and radius")

    def check(self) -> None:
        if (self.radius is None) == (self.p is None):
            raise ParamError("sdm-write needs the radius or the activation probability p, one of the two", hint="radius: 22, or p: 0.01", param="radius", about="key")

    def metrics(self) -> list[Metric]:
        return [
            Metric("sdm_radius", "activation radius of the hard locations (bits)", "radius", 0.0),
            Metric("sdm_written", "hard locations each pattern was written to (mean)", "locations written", 0.0),
        ]

    def describe(self) -> str:
        return f"sdm-write L={self.locations} " + (f"r={self.radius}" if self.radius is not None else f"p={self.p:g}")

    def run(self, ctx: Context) -> None:
        addresses = ctx[self.memory]
        data = ctx[self.values] if self.values is not None else None
        n = math.prod(row_shape(addresses))
        locations = sdm.hard_locations(self.locations, n, ctx.rng(), device=ctx.device)
        shape = row_shape(data) if data is not None else row_shape(addresses)
        memory = SparseDistributedMemory(locations, radius=self.radius, p=self.p, data_shape=shape, budget=ctx.budget)
        memory.write(addresses, data)
        ctx[self.output] = memory
        ctx.metric("sdm_radius", memory.radius)
        if len(addresses):
            ctx.metric("sdm_written", sdm.activated(locations, addresses, radius=memory.radius, budget=ctx.budget).sum() / len(addresses))


class SdmRead(Stage):
    """Read a sparse distributed memory: sum the counters of the locations within the radius of each query, threshold at 0.

    A sum of exactly 0 (a query that activates no location, too) reads as 1 (+1). With more
    than one step, each output is the next address (Kanerva's iterated reading) until a read
    leaves a query unchanged (metrics `iterations`, `converged`). Records `sdm_active`, the
    mean number of locations a query activates, and `sdm_silent`, the fraction of queries
    that activate none.
    """

    name = "sdm-read"
    steps = Param(int, 1, "reads, each output the next address; a query stops at a fixed point", min=1)
    bipolar = Param(bool, False, "answer +1/-1 (bipolar patterns); false gives 1/0")
    memory = Input("sdm", "the memory sdm-write made")
    queries = Input("queries", "the read addresses, shaped like the written ones")
    output = Output("retrieved", "the data read, Q x (data shape)")

    def metrics(self) -> list[Metric]:
        read = [
            Metric("sdm_active", "hard locations a query activates (mean)", "active locations", 0.0),
            Metric("sdm_silent", "queries that activate no hard location", "silent queries", 0.0, 1.0),
        ]
        if self.steps > 1:
            read += [
                Metric("iterations", "read steps taken (mean over queries)", "steps", 0.0),
                Metric("converged", "queries that reached a fixed point within the steps", "converged", 0.0, 1.0),
            ]
        return read

    def describe(self) -> str:
        return f"sdm-read steps={self.steps}"

    def run(self, ctx: Context) -> None:
        memory, queries = ctx[self.memory], ctx[self.queries]
        if not isinstance(memory, SparseDistributedMemory):
            raise StageError(f"{self.memory!r} is not a sparse distributed memory but {type(memory).__name__}", hint="read what an sdm-write stage wrote")
        if len(queries) == 0:
            raise StageError("no queries to read")
        active = sdm.activated(queries, memory.locations, radius=memory.radius, budget=ctx.budget)
        ctx.metric("sdm_active", active.mean())
        ctx.metric("sdm_silent", (active == 0).float().mean())
        if self.steps == 1:
            out = sdm.read(queries, memory.locations, memory.counters, radius=memory.radius, budget=ctx.budget)
        else:
            result = sdm.iterated_read(queries, memory.locations, memory.counters, radius=memory.radius, steps=self.steps, budget=ctx.budget)
            out = result.state
            ctx.metric("iterations", result.steps.float().mean())
            ctx.metric("converged", result.converged.float().mean())
        ctx[self.output] = out if self.bipolar else (out > 0).to(out.dtype)


@hookimpl
def amemctl_register_stages() -> list[type[Stage]]:
    return [SdmWrite, SdmRead]
