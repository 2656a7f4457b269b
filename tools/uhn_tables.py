"""The UHN figure runs as markdown tables of the fraction retrieved, as docs/experiments.md shows them.

    python tools/uhn_tables.py runs/uhn_capacity_similarity/STAMP runs/uhn_noise/STAMP ...

Each run folder's metrics (`amemctl.results`) become one table per figure panel: the mean over
the run's repeats of the fraction of stored images retrieved (1 - `error_pixels`, the paper's
"fraction correctly retrieved": summed squared pixel error within the threshold), rows and
columns as the paper's figure plots them. `--std` adds the spread over repeats.
"""

from __future__ import annotations

import argparse
import statistics
from collections import OrderedDict
from pathlib import Path
from typing import Any

from amemctl import results
from amemctl.engine.runs import summarise

#: pipeline -> panels: (title, rows, columns, (column, prefix) the rows kept or None, the columns' label)
PANELS: dict[str, list[tuple[str, str, str, tuple[str, str] | None, str]]] = {
    "uhn_capacity_similarity": [
        ("Fig. 2, bottom half masked", "similarity", "n", ("corruption", "bottom half masked"), "n stored"),
        ("Fig. 2, Gaussian noise std 0.5", "similarity", "n", ("corruption", "gaussian noise std 0.5"), "n stored"),
    ],
    "uhn_capacity_separation": [("Fig. 3, manhattan similarity, bottom half masked", "separation", "n", None, "n stored")],
    "uhn_noise": [
        ("Fig. 4a, Gaussian noise (N = 100), by its std", "similarity", "setting", ("setting", "noise"), "noise std"),
        ("Fig. 4b, bottom rows zeroed (N = 50), by the fraction", "similarity", "setting", ("setting", "mask"), "fraction of rows zeroed"),
    ],
    "uhn_masking": [
        ("Fig. 14a, random pixel masks (N = 300), by p", "similarity", "corruption", ("corruption", "random"), "p"),
        ("Fig. 14b, inpainting: a border zeroed (N = 300), by its fraction", "similarity", "corruption", ("corruption", "inpaint"), "border fraction"),
    ],
    "uhn_hetero": [("Fig. 6, noise std 0.3, normalised dot", "association", "n", None, "n stored")],
}


def table(rows: list[dict[str, Any]], title: str, row_key: str, column_key: str, keep: tuple[str, str] | None, label: str, std: bool) -> str:
    """One panel: mean fraction retrieved per (row, column) over the repeats, as markdown."""
    cells: "OrderedDict[str, OrderedDict[Any, list[float]]]" = OrderedDict()
    columns: list[Any] = []
    for r in rows:
        if keep and not str(r[keep[0]]).startswith(keep[1]):
            continue
        column = r[column_key]
        if keep and isinstance(column, str) and column.startswith(keep[1]):
            column = column[len(keep[1]) :].strip()
        if column not in columns:
            columns.append(column)
        cells.setdefault(str(r[row_key]), OrderedDict()).setdefault(column, []).append(1.0 - float(r["error_pixels"]))
    lines = [f"**{title}** (fraction retrieved, mean over {_repeats(cells)} runs)", ""]
    lines.append(f"| {row_key} \\ {label} | " + " | ".join(str(c) for c in columns) + " |")
    lines.append("|---|" + "---:|" * len(columns))
    for name, by_column in cells.items():
        values = []
        for c in columns:
            got = by_column.get(c, [])
            mean = f"{statistics.fmean(got):.3f}" if got else "-"
            values.append(f"{mean} ± {statistics.pstdev(got):.3f}" if std and len(got) > 1 else mean)
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def _repeats(cells: "OrderedDict[str, OrderedDict[Any, list[float]]]") -> int:
    return max((len(v) for by_column in cells.values() for v in by_column.values()), default=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of the uhn_* pipelines")
    parser.add_argument("--std", action="store_true", help="add the spread (population std) over the repeats")
    args = parser.parse_args(argv)
    for run in args.runs:
        name = summarise(run).pipeline
        if name not in PANELS:
            raise SystemExit(f"{run}: pipeline {name!r} is not a UHN figure ({', '.join(PANELS)})")
        rows = results(run)
        for title, row_key, column_key, keep, label in PANELS[name]:
            print(table(rows, title, row_key, column_key, keep, label, args.std))
            print()


if __name__ == "__main__":
    main()
