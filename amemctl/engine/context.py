"""Moved to `amemctl.context` (stages import it without depending on the engine); kept here
so older imports still work."""

from amemctl.context import Context

__all__ = ["Context"]
