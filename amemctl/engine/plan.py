"""Steps of a sweep point: its stages, with the fusions stages offer (score -> separate -> project).

Fusing is what keeps retrieval memory bounded: the three stages become one streaming
retrieval, unless a later stage reads the scores or weights, in which case they run one
by one and those tensors are formed (within the budget). Which stages fuse is for the
stages to say (`Stage.fuse`); the engine knows no stage by name or type.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from torch import Tensor

from amemctl.context import Context
from amemctl.core.rows import materialize
from amemctl.dsl.pipeline import PlannedStage
from amemctl.errors import StageError
from amemctl.stage import Fusion, Stage


@dataclass
class Step:
    """One unit the engine runs and times: a single stage, or a fused run of several."""

    parts: list[PlannedStage]
    fusion: Fusion | None = None

    @property
    def name(self) -> str:
        return self.fusion.name if self.fusion is not None else self.parts[0].stage.name

    @property
    def key(self) -> str:
        return "|".join(p.key for p in self.parts)

    def describe(self) -> str:
        return " -> ".join(p.stage.describe() for p in self.parts)

    def run(self, ctx: Context) -> None:
        """Run the step; a context tensor it changed in place is its bug (`ModifiedInPlace`)."""
        before = _versions(ctx)
        if self.fusion is not None:
            self.fusion.run(ctx)
        else:
            stage = self.parts[0].stage
            with materialized(stage, ctx):
                stage.run(ctx)
        changed = [name for name, (tensor, version) in before.items() if tensor._version != version]
        if changed:
            raise ModifiedInPlace(
                f"it modified the context tensor{'s' if len(changed) > 1 else ''} {', '.join(map(repr, changed))} in place;"
                " a stage writes new tensors (x = x * 2, not x.mul_(2) or x[...] = ...), because sweep points that share"
                " a prefix of stages share its tensors, and a later point would start from the changed one"
            )


class ModifiedInPlace(RuntimeError):
    """A stage changed a tensor it was given, in place: a bug in the stage, reported as its crash."""


def _versions(ctx: Context) -> dict[str, tuple[Tensor, int]]:
    """Every context tensor with its version counter, which each in-place operation on it (or on a view of it) advances.

    Inference-mode tensors keep no counter and are not watched.
    """
    return {name: (t, t._version) for name, t in ctx.values.items() if isinstance(t, Tensor) and not t.is_inference()}


@contextmanager
def materialized(stage: Stage, ctx: Context) -> Iterator[None]:
    """While the stage runs, the inputs it lists in `materialize` are whole tensors on ctx.device.

    Stored rows (a store opened lazily) are read once, if they fit the pipeline's budget; the
    context gets the lazy rows back afterwards unless the stage replaced the tensor itself.
    """
    swapped: dict[str, Tensor] = {}
    saved: dict[str, object] = {}
    for key in stage.materialize:
        name = stage.settings.get(key)
        if name is None or name not in ctx or isinstance(ctx[name], Tensor):
            continue
        rows = ctx[name]
        need = len(rows) * math.prod(rows.row_shape) * 4
        if need > ctx.budget:
            raise StageError(
                f"stage {stage.name!r} reads {name!r} whole: {need / 2**20:.0f} MiB, over the budget of {ctx.budget / 2**20:.0f} MiB",
                hint="raise `budget:`, or let the stage read its input in chunks (amemctl.Rows)",
            )
        saved[name] = rows
        swapped[name] = ctx[name] = materialize(rows).to(ctx.device)
    try:
        yield
    finally:
        for name, rows in saved.items():
            if ctx.values.get(name) is swapped[name]:
                ctx[name] = rows


def plan_steps(stages: list[PlannedStage]) -> list[Step]:
    """Group stages into steps, taking each fusion a stage offers whose unformed tensors no later stage reads."""
    steps: list[Step] = []
    i = 0
    while i < len(stages):
        fusion = stages[i].stage.fuse([p.stage for p in stages[i + 1 :]])
        if fusion is not None and fusion.stages > 1:
            later_reads = {name for p in stages[i + fusion.stages :] for name in p.stage.inputs()}
            if not set(fusion.unformed) & later_reads:
                steps.append(Step(stages[i : i + fusion.stages], fusion))
                i += fusion.stages
                continue
        steps.append(Step([stages[i]]))
        i += 1
    return steps
