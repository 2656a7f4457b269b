"""Stage `binarize`: the binary or bipolar patterns classical models store."""

from __future__ import annotations

from amemctl.context import Context
from amemctl.core.rows import materialize
from amemctl.plugins import hookimpl
from amemctl.stage import Param, Stage


class Binarize(Stage):
    """Threshold tensors into bipolar (+1/-1) or binary (1/0) patterns, replacing them in the context."""

    name = "binarize"
    threshold = Param(float, 0.5, "values above it become +1 (or 1)")
    bipolar = Param(bool, True, "+1/-1 (the Hopfield network's states); false gives 1/0 (sparse distributed memory)")
    tensors = Param(list, ["patterns", "queries"], "the tensors to binarize (each replaced by its binary version)", items=str)

    def inputs(self) -> list[str]:
        return list(self.tensors)

    def outputs(self) -> list[str]:
        return list(self.tensors)

    def run(self, ctx: Context) -> None:
        low = -1.0 if self.bipolar else 0.0
        for name in self.tensors:
            x = materialize(ctx[name])
            ctx[name] = (x > self.threshold).to(x.dtype) * (1.0 - low) + low


@hookimpl
def amemctl_register_stages() -> list[type[Stage]]:
    return [Binarize]
