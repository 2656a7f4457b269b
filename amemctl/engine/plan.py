"""Steps of a sweep point: its stages, with built-in score -> separate -> project fused.

Fusing is what keeps retrieval memory bounded: the three stages become one streaming
retrieval, unless a later stage reads the scores or weights, in which case they run one
by one and those tensors are formed (within the budget).
"""

from __future__ import annotations

from dataclasses import dataclass

from amemctl.dsl.pipeline import PlannedStage
from amemctl.engine.context import Context
from amemctl.stages.retrieval import fusable, run_fused


@dataclass
class Step:
    """One unit the engine runs and times: a single stage, or a fused retrieval."""

    parts: list[PlannedStage]

    @property
    def fused(self) -> bool:
        return len(self.parts) > 1

    @property
    def name(self) -> str:
        return "retrieve" if self.fused else self.parts[0].stage.name

    @property
    def key(self) -> str:
        return "|".join(p.key for p in self.parts)

    def describe(self) -> str:
        return " -> ".join(p.stage.describe() for p in self.parts)

    def run(self, ctx: Context) -> None:
        if self.fused:
            score, separate, project = (p.stage for p in self.parts)
            run_fused(score, separate, project, ctx)
        else:
            self.parts[0].stage.run(ctx)


def plan_steps(stages: list[PlannedStage]) -> list[Step]:
    """Group stages into steps, fusing each score -> separate -> project whose middles no one else reads."""
    steps: list[Step] = []
    i = 0
    while i < len(stages):
        window = stages[i : i + 3]
        if len(window) == 3 and fusable(*(p.stage for p in window)):
            later_reads = {name for p in stages[i + 3 :] for name in p.stage.inputs()}
            middles = {window[0].stage.settings["output"], window[1].stage.settings["output"]}
            if not middles & later_reads:
                steps.append(Step(window))
                i += 3
                continue
        steps.append(Step([stages[i]]))
        i += 1
    return steps
