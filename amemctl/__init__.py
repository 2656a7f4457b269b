"""amemctl: associative memories as declared experiments.

The public API, for notebooks and plugins (a plugin needs nothing from elsewhere); docs/api.md
says what each name is for, and a test keeps it and `__all__` the same:

- retrieval math: `retrieve`, `recall`, `Recall`, `UniversalHopfield`, `Shard`, `sharded_recall`
  (a memory split across torch.distributed ranks); similarities and separations by name
  (`"manhattan"`, `{"function": "topk", "k": 5}`), a plugin's too
- writing stages: `Stage`, `Param`, `Input`, `Output`, `REQUIRED`, `Metric`, `Fusion`, `Context`,
  `hookimpl`, `FileUse` (a path a stage reads or writes, as `Stage.files()` lists them);
  stage inputs are tensors or `Rows` (stored rows read in chunks, e.g. a store opened by
  `open_store`): `materialize(x)` reads them whole, `take(x, index)` some of them,
  `row_shape(x)` the shape of one; or list the input in the stage's `materialize` and the
  engine hands the stage a tensor
- what stages dispatch to, each with its own `Param`s: `Similarity` (or a `SimilarityFunction`
  making one from parameters, written beside its name or inside it: `{name: kl, eps: 1e-4}`),
  `SeparationFunction`
  (making a `Separation`: an `Elementwise`, a `Softmax`, or a class of its own whose
  `Reducer` streams over chunks of memories, often by wrapping a `Softmax`'s), `Corruption`,
  `EncoderArchitecture`; and `Dataset` (reading a `Request` into `Loaded` images and labels)
- randomness: `random.rand/randn/randint/randperm(shape, generator, device=...)` draw with a
  generator of any device (`ctx.rng()` is a CPU one) onto any device
- errors: `AmemctlError` and its subclasses (`DamagedStore`, `RunFolderError`, `FileSystemError`
  among them), `ParamError` for parameters
- results: `run_file` (run a pipeline file; it returns a `RunResult`), `results` (a run's table:
  one row per point and repeat)
"""

from __future__ import annotations

from typing import Any

from amemctl.errors import (
    AmemctlError,
    DamagedStore,
    DataError,
    DeviceError,
    FileSystemError,
    PipelineError,
    PluginError,
    RunFolderError,
    StageCrash,
    StageError,
    StoreError,
)
from amemctl.functions import EncoderArchitecture, Function, SeparationFunction, SimilarityFunction
from amemctl.plugins import hookimpl
from amemctl.stage import REQUIRED, FileUse, Fusion, Input, Metric, Output, Param, ParamError, Stage

__version__ = "0.1.0"

_LAZY = {
    "retrieve": "amemctl.retrieval",
    "recall": "amemctl.retrieval",
    "sharded_recall": "amemctl.retrieval",
    "UniversalHopfield": "amemctl.retrieval",
    "Recall": "amemctl.core.retrieval",
    "Shard": "amemctl.core.retrieval",
    "Similarity": "amemctl.core.similarity",
    "Separation": "amemctl.core.separation",
    "Elementwise": "amemctl.core.separation",
    "Softmax": "amemctl.core.separation",
    "Reducer": "amemctl.core.separation",
    "Rows": "amemctl.core.rows",
    "TensorRows": "amemctl.core.rows",
    "materialize": "amemctl.core.rows",
    "take": "amemctl.core.rows",
    "row_shape": "amemctl.core.rows",
    "Corruption": "amemctl.corruptions",
    "corrupt": "amemctl.corruptions",
    "MemoryStore": "amemctl.store",
    "Dataset": "amemctl.data.datasets",
    "Loaded": "amemctl.data.datasets",
    "Request": "amemctl.data.datasets",
    "Context": "amemctl.context",
    "results": "amemctl.engine.results",
    "run_file": "amemctl.engine.results",
    "RunResult": "amemctl.engine.runner",
}


def __getattr__(name: str) -> Any:
    """Import torch-backed names on first use, so `amemctl --version` stays quick."""
    import importlib

    if name == "random":  # the module: amemctl.random.randn(shape, generator, device=...)
        return importlib.import_module("amemctl.core.random")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'amemctl' has no attribute {name!r}")


__all__ = [
    "REQUIRED",
    "AmemctlError",
    "Context",
    "Corruption",
    "DamagedStore",
    "DataError",
    "Dataset",
    "DeviceError",
    "Elementwise",
    "EncoderArchitecture",
    "FileSystemError",
    "FileUse",
    "Function",
    "Fusion",
    "Input",
    "Loaded",
    "MemoryStore",
    "Metric",
    "Output",
    "Param",
    "ParamError",
    "PipelineError",
    "PluginError",
    "Recall",
    "Reducer",
    "Request",
    "Rows",
    "RunFolderError",
    "RunResult",
    "Separation",
    "SeparationFunction",
    "Shard",
    "Similarity",
    "SimilarityFunction",
    "Softmax",
    "Stage",
    "StageCrash",
    "StageError",
    "StoreError",
    "TensorRows",
    "UniversalHopfield",
    "__version__",
    "random",
    "corrupt",
    "hookimpl",
    "materialize",
    "recall",
    "retrieve",
    "results",
    "row_shape",
    "run_file",
    "sharded_recall",
    "take",
]
