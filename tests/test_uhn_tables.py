"""tools/uhn_tables.py: the docs' UHN tables are the fraction retrieved, averaged over repeats, per panel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("uhn_tables", Path(__file__).parents[1] / "tools" / "uhn_tables.py")
uhn_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(uhn_tables)


def test_a_panel_keeps_its_rows_and_averages_one_minus_the_error_over_repeats():
    rows = [
        {"setting": "noise 0.5", "similarity": "manhattan", "error_pixels": 0.25},
        {"setting": "noise 0.5", "similarity": "manhattan", "error_pixels": 0.75},
        {"setting": "noise 1", "similarity": "manhattan", "error_pixels": 1.0},
        {"setting": "mask 0.5", "similarity": "manhattan", "error_pixels": 0.0},  # another panel's
    ]
    text = uhn_tables.table(rows, "Fig. 4a", "similarity", "setting", ("setting", "noise"), "noise std", std=True)
    lines = text.splitlines()
    assert "| similarity \\ noise std | 0.5 | 1 |" in lines
    assert "| manhattan | 0.500 ± 0.250 | 0.000 |" in lines  # mean of 0.75 and 0.25; one repeat has no spread
    assert "mask" not in text and "mean over 2 runs" in lines[0]


def test_every_uhn_pipeline_has_panels_naming_its_sweep_variables():
    import yaml

    for name, panels in uhn_tables.PANELS.items():
        sweep = yaml.safe_load((Path(__file__).parents[1] / "pipelines" / f"{name}.yaml").read_text())["sweep"]
        for _title, rows, columns, keep, _label in panels:
            assert rows in sweep and columns in sweep and (keep is None or keep[0] in sweep), (name, rows, columns)
