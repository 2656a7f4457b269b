"""Stage `corrupt`: queries made from stored patterns by one of the papers' corruptions."""

from __future__ import annotations

import torch

from amemctl.core.rows import take
from amemctl.corruptions import CORRUPTIONS, get_corruption
from amemctl.engine.context import Context
from amemctl.errors import StageError
from amemctl.plugins import hookimpl
from amemctl.stage import Input, Output, Param, ParamError, Stage

#: Parameters of the individual corruptions, offered flat on the stage.
_KIND_PARAMS = ("mean", "variance", "std", "abs", "rounding", "fraction", "side", "p", "scale", "angles", "brightness", "saturation", "hue", "channels", "steps")


class Corrupt(Stage):
    """Corrupt stored patterns into queries (noise, masks), remembering each query's source row."""

    name = "corrupt"
    kind = Param(str, "gaussian", "the corruption", choices=list(CORRUPTIONS))
    count = Param(int, None, "number of queries: a seeded random choice of rows (default: every row)", min=1)
    mean = Param(float, None, "gaussian: mean of the noise (default 0)")
    variance = Param(float, None, "gaussian: variance of the noise (default 0.1)", min=0)
    std = Param(float, None, "gaussian: standard deviation instead of the variance (the UHN code's sigma)", min=0)
    abs = Param(bool, None, "gaussian: |x + noise| before clipping to [0, 1] (the UHN code's; default false)")
    rounding = Param(str, None, "mask_zero: masked rows rounded to the nearest (default) or up (the UHN code's)", choices=["nearest", "up"])
    fraction = Param(float, None, "mask_zero, mask_noise: fraction of rows masked (default 0.5); inpaint: fraction of each side masked (default 0.5)", min=0, max=1)
    side = Param(str, None, "mask_zero, mask_noise: top, bottom, left, right (mask_noise also random)")
    p = Param(float, None, "random_mask (default 0.5), salt_pepper (default 0.1): probability per pixel", min=0, max=1)
    scale = Param(list, None, "crop: [low, high] fraction of the area kept (default [0.3, 0.6])", items=float)
    angles = Param(list, None, "rotate: angles in degrees to draw from (default [0, 90, -90, 180])", items=float)
    brightness = Param(float, None, "color: largest relative brightness change (default 0.4)", min=0, max=1)
    saturation = Param(float, None, "color: largest relative saturation change (default 0.6)", min=0, max=1)
    hue = Param(float, None, "color: largest hue shift (default 0.1)", min=0, max=0.5)
    channels = Param(float, None, "color: largest relative gain of one channel (default 0.5)", min=0, max=1)
    steps = Param(list, None, "compose: the corruptions in order, each {kind: ..., parameters}", items=dict)
    input = Input("patterns", "the stored patterns to corrupt")
    output = Output("queries", "the corrupted queries")
    targets = Output("targets", "for each query, the row it was made from", optional=True)

    def check(self) -> None:
        corruption = get_corruption(self.kind)
        if self.kind == "compose" and not self.steps:
            raise ParamError("corruption 'compose' needs `steps:`", hint="e.g. steps: [{kind: crop}, {kind: gaussian, variance: 0.05}]", param="kind")
        for i, step in enumerate(self.steps or []):
            kind = step.get("kind")
            if kind is None or kind == "compose" or kind not in CORRUPTIONS:
                raise ParamError(f"step {i + 1} of compose needs a known `kind`, got {kind!r}", hint=f"choose one of {', '.join(k for k in CORRUPTIONS if k != 'compose')}", param="steps")
            try:
                get_corruption(kind).resolve({k: v for k, v in step.items() if k != "kind"})
            except StageError as exc:
                raise ParamError(f"step {i + 1} of compose: {exc.message}", hint=exc.hint, param="steps") from None
        self.refuse_foreign(_KIND_PARAMS, corruption.params, f"corruption {self.kind!r}")
        if self.variance is not None and self.std is not None:
            raise ParamError("gaussian takes a variance or a standard deviation, not both", hint="keep `variance:` (amemctl's) or `std:` (the UHN code's sigma)", param="std")
        for key, value in self.forwarded(_KIND_PARAMS).items():
            try:
                corruption.resolve({key: value})
            except StageError as exc:
                raise ParamError(exc.message, hint=exc.hint, param=key) from None

    def describe(self) -> str:
        return f"corrupt {self.kind}"

    def run(self, ctx: Context) -> None:
        patterns = ctx[self.input]
        rows = torch.arange(len(patterns))
        if self.count is not None:
            if self.count > len(patterns):
                raise StageError(f"count={self.count} queries asked of {len(patterns)} stored patterns", hint=f"use count <= {len(patterns)}")
            rows = torch.randperm(len(patterns), generator=ctx.rng("cpu"))[: self.count].sort().values
        chosen = take(patterns, rows).to(ctx.device)
        ctx[self.output] = get_corruption(self.kind)(chosen, ctx.rng(), **self.forwarded(_KIND_PARAMS))
        if self.targets is not None:
            ctx[self.targets] = rows.to(ctx.device)


@hookimpl
def amemctl_register_stages() -> list[type[Stage]]:
    return [Corrupt]
