"""PNG figures: image grids of queries and retrievals, curves across a sweep, overviews.

matplotlib runs with the Agg backend, so figures are written on machines without a screen.
Every figure is a PNG; `extra_formats(["svg", "pdf"])` (the pipeline's `report.formats`)
writes those beside it too, for papers.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from pathlib import Path
from typing import Iterator, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from torch import Tensor  # noqa: E402

from amemctl.atomic import replacing  # noqa: E402


def as_images(x: Tensor) -> np.ndarray:
    """N x H x W x C (or N x H x W) floats in [0, 1] for imshow, from N x C x H x W or N x d.

    Flat patterns are shown as squares when d is a square (or 3 x a square, for colour).
    """
    x = x.detach().float().cpu()
    if x.dim() == 2:
        d = x.shape[1]
        side = math.isqrt(d)
        if side * side == d:
            x = x.reshape(-1, 1, side, side)
        elif d % 3 == 0 and math.isqrt(d // 3) ** 2 == d // 3:
            side = math.isqrt(d // 3)
            x = x.reshape(-1, 3, side, side)
        else:
            x = x.reshape(-1, 1, 1, d)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.min() < 0:  # bipolar or centred patterns: show their range
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-12)
    x = x.clamp(0, 1)
    if x.shape[1] == 1:
        return x[:, 0].numpy()
    return x[:, :3].permute(0, 2, 3, 1).numpy()


_FORMATS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("amemctl_figure_formats", default=())


@contextlib.contextmanager
def extra_formats(formats: Sequence[str]) -> Iterator[None]:
    """Within the block, every figure is also written as each of `formats` (svg, pdf) beside its PNG."""
    token = _FORMATS.set(tuple(f for f in formats if f != "png"))
    try:
        yield
    finally:
        _FORMATS.reset(token)


MAX_ROWS = 8  #: rows of images in one grid figure: at 100 px a row it fits a 1080p screen
MAX_COLUMNS = 14  #: images across one line of a grid: at 95 px each, with the labels, under 1600 px


def lines_per_row(images: int) -> int:
    """Lines a row of `images` images takes in a grid: longer rows wrap, so a figure fits a screen."""
    return max(1, math.ceil(images / MAX_COLUMNS))


def image_grid(rows: Sequence[tuple], path: "str | Path", title: str = "") -> Path:
    """One labelled row per (label, images N x ...[, wrong]) entry, N images across; returns the path.

    `wrong`, a boolean per image, frames those images in red (a retrieval that is not the
    query's original). A row of more than MAX_COLUMNS images wraps onto several lines (its
    label on the first); callers split grids longer than MAX_ROWS lines into several figures.
    """
    rows = [(entry[0], as_images(entry[1]), entry[2] if len(entry) > 2 else None) for entry in rows]
    longest = max(len(images) for _, images, _ in rows)
    wraps = lines_per_row(longest)
    n_cols = math.ceil(longest / wraps)
    lines = []  # (label or "", images, wrong) per drawn line
    for label, images, wrong in rows:
        for k in range(max(1, math.ceil(len(images) / n_cols))):
            part = slice(k * n_cols, (k + 1) * n_cols)
            lines.append((label if k == 0 else "", images[part], None if wrong is None else wrong[part]))
    n_rows = len(lines)
    head = 0.45 if title else 0.0
    height = 1.0 * n_rows + head
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(0.95 * n_cols + 1.8, height), squeeze=False)
    for r, (label, images, wrong) in enumerate(lines):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                img = images[c]
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
                if wrong is not None and c < len(wrong) and bool(wrong[c]):
                    for spine in ax.spines.values():
                        spine.set_visible(True)
                        spine.set_color("red")
                        spine.set_linewidth(2.5)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if any(wrong is not None and bool(wrong.any()) for _, _, wrong in rows):
        fig.text(0.99, 0.0, "red frame: wrong retrieval (nearest stored pattern is not the original)", ha="right", va="bottom", fontsize=7, color="red")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.02, 1, 1 - head / height if title else 1))
    return _save(fig, path)


def curves(
    series: "dict[str, tuple[list[float], list[float]] | tuple[list[float], list[float], list[float]]]",
    path: "str | Path",
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    percent: bool = False,
    bounds: "tuple[float | None, float | None]" = (None, None),
    legend_title: str | None = None,
) -> Path:
    """Lines of y against x, one per named series; a third list per series gives a +-1 std band.

    `bounds` (in the data's units, e.g. (0, 1) for a fraction) clip the bands: a rate's
    band never runs below 0 % or above 100 %.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    scale = 100 if percent else 1
    lo, hi = (None if b is None else scale * b for b in bounds)
    for name, (xs, ys, *rest) in series.items():
        ys = [scale * y for y in ys]
        line = ax.plot(xs, ys, marker="o", label=name)[0]
        if rest and any(rest[0]) and all(isinstance(x, (int, float)) for x in xs):
            err = [scale * e for e in rest[0]]
            low = [y - e if lo is None else max(lo, y - e) for y, e in zip(ys, err)]
            high = [y + e if hi is None else min(hi, y + e) for y, e in zip(ys, err)]
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)
    if log_x:
        ax.set_xscale("log")
    ax.set_title(title, fontsize=10, wrap=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{ylabel} (%)" if percent else ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1 or next(iter(series), ""):
        ax.legend(fontsize=8, title=legend_title, title_fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def stack(paths: Sequence[Path], labels: Sequence[str], path: "str | Path") -> Path:
    """Several PNGs one above the other, each under its label (an overview of a sweep)."""
    images = [plt.imread(p) for p in paths]
    width = max(img.shape[1] for img in images)
    heights = [img.shape[0] for img in images]
    dpi = 100
    fig = plt.figure(figsize=(width / dpi, (sum(heights) + 22 * len(images)) / dpi), dpi=dpi)
    top = 1.0
    total = sum(heights) + 22 * len(images)
    for img, label in zip(images, labels):
        h = (img.shape[0] + 22) / total
        ax = fig.add_axes((0, top - h, img.shape[1] / width, h - 22 / total))
        ax.imshow(img)
        ax.axis("off")
        fig.text(0.01, top - 4 / total, label, va="top", fontsize=9)
        top -= h
    return _save(fig, path, tight=False)


def _save(fig: plt.Figure, path: "str | Path", tight: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        for target in [path, *(path.with_suffix(f".{extra}") for extra in _FORMATS.get())]:
            _save_atomically(fig, target, tight)
    finally:
        plt.close(fig)
    return path


def _save_atomically(fig: plt.Figure, path: Path, tight: bool) -> None:
    """savefig to a temporary name, then rename: a figure is whole, or the one there before is kept (a resumed run's)."""
    with replacing(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:], dpi=100, bbox_inches="tight" if tight else None)
