"""Error types the command line maps to exit codes: bad input is 2, a failed run is 1."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input or usage: the run refuses to start and writes nothing (exit code 2)."""


class RunError(RuntimeError):
    """A run started and failed; the previous outputs stay in place (exit code 1)."""
