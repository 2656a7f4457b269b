"""Stage `report`: example queries and retrievals, drawn into the run's overview figure."""

from __future__ import annotations

from amemctl.context import Context
from amemctl.core.retrieval import nearest_index
from amemctl.core.rows import row_shape, take
from amemctl.errors import StageError
from amemctl.plugins import hookimpl
from amemctl.stage import Input, Param, Stage


class Report(Stage):
    """Show example images in figures/<figure>.png: the originals, then one row per named tensor.

    Retrievals whose nearest stored value is not the query's original are framed in red
    (the index rule of `evaluate`).
    """

    name = "report"
    images = Param(list, ["queries", "retrieved"], "tensors to show, one row each, in order", items=str)
    values = Input("patterns", "stored values; with `targets`, each query's original is shown first", optional=True)
    targets = Input("targets", "for each query, the row of its original", optional=True)
    count = Param(int, 8, "how many examples (columns)", min=1, max=64)
    figure = Param(str, "retrievals", "the figure's name: figures/<figure>.png, one figure for the whole sweep (split per condition when long)")
    judge = Param(list, ["retrieved", "generated"], "rows whose images are framed red where the nearest stored value is not the query's original (with values and targets)", items=str)

    def inputs(self) -> list[str]:
        return [*super().inputs(), *self.images]

    def run(self, ctx: Context) -> None:
        judged = self.values is not None and self.targets is not None
        if judged:
            targets = ctx[self.targets][: self.count]
            ctx.show(self.figure, "original", take(ctx[self.values], targets))
        for name in self.images:
            tensor = ctx[name]
            if not hasattr(tensor, "shape") or tensor.dim() < 2:
                raise StageError(f"tensor {name!r} is not a batch of images (shape {getattr(tensor, 'shape', '?')})", hint="show tensors shaped N x C x H x W or N x d")
            shown = tensor[: self.count]
            wrong = None
            if judged and name in self.judge and tuple(shown.shape[1:]) == row_shape(ctx[self.values]):
                nearest = nearest_index(shown, ctx[self.values], ctx.budget)
                wrong = nearest.cpu() != targets[: len(shown)].cpu()
            ctx.show(self.figure, name, shown, wrong)


@hookimpl
def amemctl_register_stages() -> list[type[Stage]]:
    return [Report]
