"""Stage `evaluate`: how many retrievals came back wrong, by the papers' two rules."""

from __future__ import annotations

import torch
from torch import Tensor

from amemctl.context import Context
from amemctl.core.retrieval import nearest_index
from amemctl.core.rows import row_shape, take
from amemctl.errors import StageError
from amemctl.plugins import hookimpl
from amemctl.stage import Input, Metric, Output, Param, ParamError, Stage


class Evaluate(Stage):
    """Score retrievals: nearest stored memory is the source (index rule), squared error under a threshold (pixel rule)."""

    name = "evaluate"
    threshold = Param(float, 50.0, "a retrieval is correct when its sum of squared errors to the target is at most this (the UHN code: 60)", min=0)
    threshold_pixels = Param(int, None, "the threshold is meant for patterns of this many values: scale it by this / the values per pattern (the UHN code's Fig. 2: 784)", min=1)
    prefix = Param(str, "", "put before each metric name, ending with a separator (pass1_), to evaluate several retrievals in one pipeline", validate=lambda p: _ends_a_word(p))
    retrieved = Input("retrieved", "the retrievals, Q x (value shape)")
    values = Input("patterns", "the stored values the retrievals should reproduce")
    targets = Input("targets", "for each query, the row of the stored value it should retrieve")
    labels = Input(None, "labels of the stored values: also count retrievals nearest a memory of another label (error_label)", optional=True)
    recalled = Output("recalled", "for each query, the row of the stored value nearest its retrieval", optional=True)

    def metrics(self) -> list[Metric]:
        recorded = [
            Metric("error_index", "wrongly retrieved (nearest stored pattern is not the original)", "wrongly retrieved", 0.0, 1.0),
            Metric("error_pixels", "not retrieved exactly (squared error above the threshold)", "not retrieved exactly", 0.0, 1.0),
            Metric("mse", "mean squared error per value", "mean squared error", 0.0),
        ]
        if self.labels:
            recorded.append(Metric("error_label", "retrieved a pattern of another label", "wrong label", 0.0, 1.0))
        return [m.prefixed(self.prefix) for m in recorded]

    def scaled_threshold(self, values: int) -> float:
        """The threshold for patterns of `values` entries: as given, or scaled as the UHN code does."""
        return self.threshold if self.threshold_pixels is None else self.threshold * self.threshold_pixels / values

    def run(self, ctx: Context) -> None:
        retrieved, values, targets = ctx[self.retrieved], ctx[self.values], ctx[self.targets]
        if len(retrieved) != len(targets):
            raise StageError(f"{len(retrieved)} retrievals but {len(targets)} targets", hint="evaluate the retrievals of the queries the targets belong to")
        _check_targets(targets, len(values), self.targets)
        if tuple(retrieved.shape[1:]) != row_shape(values):
            raise StageError(
                f"retrievals are shaped {tuple(retrieved.shape[1:])} but stored values {row_shape(values)}",
                hint="compare retrievals with the values they were projected from",
            )
        nearest = nearest_index(retrieved, values, ctx.budget)
        targets = targets.to(nearest.device)
        wanted = take(values, targets).reshape(len(targets), -1).to(retrieved.device, retrieved.dtype)
        sse = (retrieved.reshape(len(retrieved), -1) - wanted).square().sum(1)
        ctx.metric(f"{self.prefix}error_index", (nearest != targets).float().mean())
        ctx.metric(f"{self.prefix}error_pixels", (sse > self.scaled_threshold(wanted.shape[1])).float().mean())
        ctx.metric(f"{self.prefix}mse", sse.mean() / wanted.shape[1])
        if self.labels is not None:
            labels = ctx[self.labels].to(nearest.device)
            ctx.metric(f"{self.prefix}error_label", (labels[nearest] != labels[targets]).float().mean())
        if self.recalled is not None:
            ctx[self.recalled] = nearest


def _ends_a_word(prefix: str) -> None:
    """Refuse a prefix whose last character is a letter or digit: its metrics (pass1error_index) would not read as prefixed.

    Metric names are read as words in report.md's tables and `runs show`, where `pass1_error_index`
    reads as prefixed and `pass1error_index` as one unknown word (the figures' titles come from
    the declared Metric, "pass1: wrongly retrieved", either way). Refused at validate rather than
    left to puzzle a reader later.
    """
    if prefix and prefix[-1].isalnum():
        names = ", ".join(f"{prefix}_{m}" for m in ("error_index", "error_pixels", "mse"))
        raise ParamError(
            f"evaluate's prefix {prefix!r} does not end with a separator: its metrics would be {prefix}error_index, {prefix}mse..., "
            "which report.md's tables and `runs show` would show as one word, the prefix not told apart",
            hint=f"end it with one: prefix: {prefix}_ (metrics {names}, titled '{prefix}: wrongly retrieved' and so on)",
        )


def _check_targets(targets: Tensor, rows: int, name: str) -> None:
    """Targets are row numbers of the stored values: an integer vector within 0..rows-1 (else the tensor named is not targets)."""
    if targets.dim() != 1 or targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise StageError(
            f"targets ({name!r}) must be row numbers of the stored values, a vector of integers; it is {str(targets.dtype).removeprefix('torch.')} shaped {tuple(targets.shape)}",
            hint="name in `targets:` the tensor that holds, for each query, the row it should retrieve (corrupt writes `targets`)",
        )
    if len(targets) and not bool(((targets >= 0) & (targets < rows)).all()):
        raise StageError(f"targets ({name!r}) hold row numbers outside 0..{rows - 1}, the {rows} stored values", hint="evaluate against the values the targets number")


@hookimpl
def amemctl_register_stages() -> list[type[Stage]]:
    return [Evaluate]
