"""Stage `report`: example queries and retrievals, drawn into the run's overview figure."""

from __future__ import annotations

from amemctl.context import Context
from amemctl.core.rows import take
from amemctl.errors import StageError
from amemctl.plugins import hookimpl
from amemctl.stage import Input, Param, Stage


class Report(Stage):
    """Show example images in figures/<figure>.png: the originals, then one row per named tensor."""

    name = "report"
    images = Param(list, ["queries", "retrieved"], "tensors to show, one row each, in order", items=str)
    values = Input("patterns", "stored values; with `targets`, each query's original is shown first", optional=True)
    targets = Input("targets", "for each query, the row of its original", optional=True)
    count = Param(int, 8, "how many examples (columns)", min=1, max=64)
    figure = Param(str, "retrievals", "the figure's name: figures/<figure>.png, one figure for the whole sweep")

    def inputs(self) -> list[str]:
        return [*super().inputs(), *self.images]

    def run(self, ctx: Context) -> None:
        if self.values is not None and self.targets is not None:
            ctx.show(self.figure, "original", take(ctx[self.values], ctx[self.targets][: self.count]))
        for name in self.images:
            tensor = ctx[name]
            if not hasattr(tensor, "shape") or tensor.dim() < 2:
                raise StageError(f"tensor {name!r} is not a batch of images (shape {getattr(tensor, 'shape', '?')})", hint="show tensors shaped N x C x H x W or N x d")
            ctx.show(self.figure, name, tensor[: self.count])


@hookimpl
def amemctl_register_stages() -> list[type[Stage]]:
    return [Report]
