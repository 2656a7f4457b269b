"""Shared helpers: pipelines from text, run into a temporary folder, on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

# MKL may use fewer threads than asked when the machine is busy (MKL_DYNAMIC), and a matrix
# product summed by fewer threads rounds differently: a point computed in a child process and
# again here then differed in the 6th digit of its mse (test_a_killed_run_..., 1 run in 6 on
# 2 busy cores). Set before torch's first product, and inherited by the children tests start.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

import pytest

from amemctl.dsl.pipeline import parse_text
from amemctl.engine.runner import RunResult, run_pipeline

ROOT = Path(__file__).resolve().parent.parent


def child_env(*paths: str | Path, **extra: str) -> dict[str, str]:
    """This process's environment for a child Python, with the checkout (and `paths`) first on its PYTHONPATH.

    The inherited PYTHONPATH stays after them: it may be where packages live (the GPU machine's
    setup puts zarr on it), so a child given PYTHONPATH=ROOT alone could not import them.
    """
    inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *map(str, paths), *inherited]), **extra}


@pytest.fixture(autouse=True)
def _training_checkpoints(tmp_path, monkeypatch):
    """Training checkpoints of each test in its own folder: no test resumes another's training."""
    monkeypatch.setenv("AMEMCTL_CHECKPOINTS", str(tmp_path / "checkpoints"))


@pytest.fixture
def run_text(tmp_path):
    """Check and run a pipeline given as YAML text; returns the RunResult."""

    def run(text: str, registry=None, **options) -> RunResult:
        pipeline = parse_text(text, "test.yaml", registry=registry)
        options.setdefault("device", "cpu")
        return run_pipeline(pipeline, out_root=tmp_path / "runs", progress=False, **options)

    return run


def error_of(text: str, registry=None) -> str:
    """The rendered error a pipeline text raises (fails the test when it is accepted)."""
    from amemctl.errors import AmemctlError

    try:
        parse_text(text, "bad.yaml", registry=registry)
    except AmemctlError as exc:
        return exc.render()
    raise AssertionError("the pipeline was accepted")
