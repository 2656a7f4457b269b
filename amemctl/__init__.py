"""amemctl: associative memories as declared experiments.

The public API for notebooks and plugins:

- retrieval math: `retrieve`, `recall`, `UniversalHopfield`, `Similarity`
- writing stages: `Stage`, `Param`, `Input`, `Output`, `REQUIRED`, `Context`, `hookimpl`
- errors: `AmemctlError` and its subclasses
- results: `run_file` (run a pipeline file), `results` (a run's table: one row per point and repeat)
"""

from __future__ import annotations

from typing import Any

from amemctl.errors import (
    AmemctlError,
    DataError,
    DeviceError,
    PipelineError,
    PluginError,
    StageError,
    StoreError,
)
from amemctl.plugins import hookimpl
from amemctl.stage import REQUIRED, Input, Output, Param, Stage

__version__ = "0.1.0"

_LAZY = {
    "retrieve": "amemctl.core.retrieval",
    "recall": "amemctl.core.retrieval",
    "Recall": "amemctl.core.retrieval",
    "UniversalHopfield": "amemctl.core.modules",
    "Similarity": "amemctl.core.similarity",
    "Context": "amemctl.engine.context",
    "results": "amemctl.engine.results",
    "run_file": "amemctl.engine.results",
}


def __getattr__(name: str) -> Any:
    """Import torch-backed names on first use, so `amemctl --version` stays quick."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'amemctl' has no attribute {name!r}")


__all__ = [
    "REQUIRED",
    "AmemctlError",
    "Context",
    "DataError",
    "DeviceError",
    "Input",
    "Output",
    "Param",
    "PipelineError",
    "PluginError",
    "Recall",
    "Similarity",
    "Stage",
    "StageError",
    "StoreError",
    "UniversalHopfield",
    "__version__",
    "hookimpl",
    "recall",
    "results",
    "retrieve",
    "run_file",
]
