"""Tables printed at the end of a run stay readable in a narrow console or a log file."""

from __future__ import annotations

import io

from rich.console import Console

from amemctl.engine.results import Grid, markdown_table, print_table


def _grid(columns: int) -> Grid:
    names = [f"noise {i / 10:g}" for i in range(columns)]
    rows = [((sim,), [0.01 * i for i in range(columns)]) for sim in ("euclidean", "normalized_dot")]
    return Grid("not retrieved", ["similarity"], names, rows, "percent", column_name="setting")


def _printed(grid: Grid, width: int) -> str:
    out = io.StringIO()
    print_table(Console(file=out, width=width, color_system=None), grid)
    return out.getvalue()


def test_a_table_wider_than_the_console_prints_whole_markdown_lines():
    text = _printed(_grid(17), width=80)
    assert markdown_table(_grid(17)) in text  # every header and cell whole, as in report.md
    assert "similarity \\ setting" in text and "noise 1.6" in text and "normalized_dot" in text


def test_a_table_that_fits_is_a_box_table_with_whole_headers():
    text = _printed(_grid(3), width=120)
    assert "┃" in text and "|---" not in text  # the rich box, not markdown
    assert "noise 0.2" in text and "normalized_dot" in text
