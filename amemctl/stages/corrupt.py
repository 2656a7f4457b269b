"""Stage `corrupt`: queries made from stored patterns by one of the papers' corruptions."""

from __future__ import annotations

from typing import Any

import torch

from amemctl.context import Context
from amemctl.core import random
from amemctl.core.rows import take
from amemctl.corruptions import CORRUPTIONS, Corruption, compose, compose_step_kind
from amemctl.errors import AmemctlError, StageError
from amemctl.plugins import hookimpl
from amemctl.stage import Input, Output, Param, ParamError, Stage


class Corrupt(Stage):
    """Corrupt stored patterns into queries (noise, masks), remembering each query's source row.

    The corruption's own parameters are written beside `kind` (`amemctl stages gaussian`
    lists them): `corrupt: {kind: mask_zero, fraction: 0.5, side: top}`.
    """

    name = "corrupt"
    kind = Param(str, "gaussian", "the corruption: a built-in one or a plugin's (`amemctl stages` lists them)")
    count = Param(int, None, "number of queries: a seeded random choice of rows (default: every row)", min=1)
    input = Input("patterns", "the stored patterns to corrupt")
    output = Output("queries", "the corrupted queries")
    targets = Output("targets", "for each query, the row it was made from", optional=True)

    dispatch = {"kind": "corruptions"}

    def check(self) -> None:
        if self.kind != "compose":
            return
        steps = self.options["kind"]["steps"]
        if not steps:
            raise ParamError("corruption 'compose' needs `steps:`", hint="e.g. steps: [{kind: crop}, {kind: gaussian, variance: 0.05}]", param="kind")
        problems = []
        for i, step in enumerate(steps):
            try:
                self._check_step(step)
            except ParamError as exc:  # each of a step's mistakes, and every step's
                problems += [ParamError(f"step {i + 1} of compose: {p.message}", hint=p.hint, param="steps") for p in exc.each()]
            except AmemctlError as exc:
                problems.append(ParamError(f"step {i + 1} of compose: {exc.message}", hint=exc.hint, param="steps"))
        if problems:
            raise ParamError.together(problems, "corruption 'compose'")

    def _check_step(self, step: dict[str, Any]) -> None:
        """A compose step names a corruption of this stage's registry, not compose, with parameters it takes."""
        kind = compose_step_kind(step)
        self._corruption(kind).configure({k: v for k, v in step.items() if k != "kind"})

    def _corruption(self, kind: str) -> Corruption:
        """The corruption `kind` of this stage's registry, so plugin corruptions compose too."""
        from amemctl.plugins import get_registry, lookup

        return lookup(self.registry or get_registry(), "corruptions", kind)

    def describe(self) -> str:
        return f"corrupt {self.kind}"

    def run(self, ctx: Context) -> None:
        patterns = ctx[self.input]
        rows = torch.arange(len(patterns))
        if self.count is not None:
            if self.count > len(patterns):
                raise StageError(f"count={self.count} queries asked of {len(patterns)} stored patterns", hint=f"use count <= {len(patterns)}")
            rows = random.randperm(len(patterns), ctx.rng())[: self.count].sort().values
        images = take(patterns, rows).to(ctx.device)
        generator = ctx.rng()
        if self.kind == "compose":  # the library's compose, finding steps in this stage's registry
            images = compose(images, generator, self.options["kind"]["steps"], find=self._corruption)
        else:
            images = self.chosen("kind")(images, generator, **self.options["kind"])
        ctx[self.output] = images
        if self.targets is not None:
            ctx[self.targets] = rows.to(ctx.device)


@hookimpl
def amemctl_register_stages() -> list[type[Stage]]:
    return [Corrupt]


@hookimpl
def amemctl_register_corruptions() -> list[Corruption]:
    return list(CORRUPTIONS.values())
