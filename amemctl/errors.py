"""The errors a user can cause, and how they are told.

Every mistake a user can make (a bad pipeline, an unknown stage, a tensor of the wrong
shape, a missing dataset, a damaged store) raises one of these. Each carries the place it
was found (a file, line and column when there is one) and a hint saying what to do
instead. The CLI prints them as one message and exits with code 2; anything else that
escapes is a bug in amemctl or a plugin and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """A place in a source file, 1-based as editors show it."""

    file: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        parts = [self.file]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)


class AmemctlError(Exception):
    """Root of every error caused by input rather than by a bug."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, location: Location | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.location = location

    def at(self, location: Location | None) -> "AmemctlError":
        """Attach a location unless one is already known; returns self for `raise e.at(...)`."""
        if self.location is None and location is not None:
            self.location = location
        return self

    def render(self) -> str:
        """The message as the CLI prints it: `where: message` and an indented hint."""
        head = f"{self.location}: {self.message}" if self.location else self.message
        return f"{head}\n  hint: {self.hint}" if self.hint else head

    def __str__(self) -> str:
        return self.render()


class PipelineError(AmemctlError):
    """A pipeline file is malformed, refers to unknown things, or is wired wrongly."""


class StageError(AmemctlError):
    """A stage was given data it cannot work with (shapes, dtypes, NaN, ranges)."""


class DataError(AmemctlError):
    """A dataset or checkpoint is missing or unreadable."""


class StoreError(AmemctlError):
    """A memory store is missing, locked, damaged or of an incompatible kind."""


class DamagedStore(StoreError):
    """A store whose metadata and chunk files disagree (missing, truncated or of another dtype)."""


class RunFolderError(AmemctlError):
    """A folder named as a run is not one amemctl made, or its run.json is damaged."""


class PluginError(AmemctlError):
    """A plugin failed to load or declares something that clashes with another."""


class DeviceError(AmemctlError):
    """The requested device does not exist on this machine."""


class StageCrash(AmemctlError):
    """A stage raised something other than an AmemctlError: a bug in it, not in the pipeline.

    The message names the stage, its package and the pipeline line; the traceback is saved
    in the run folder rather than printed. Exit code 1, as for any bug.
    """

    exit_code = 1
