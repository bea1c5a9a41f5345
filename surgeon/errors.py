"""Errors that the CLI turns into one line: what went wrong, and what to do next."""

from __future__ import annotations


class SurgeonError(Exception):
    """A problem the user can fix. ``str()`` is one line: the problem, then the fix.

    The CLI prints it as ``error: <problem>: <hint>`` with a non-zero exit and no traceback.
    """

    exit_code = 1

    def __init__(self, problem: str, hint: str | None = None):
        self.problem = problem
        self.hint = hint
        super().__init__(f"{problem}: {hint}" if hint else problem)


class UsageError(SurgeonError):
    """Bad options or arguments (exit code 2, like click)."""

    exit_code = 2


class CheckpointError(SurgeonError):
    """A checkpoint folder or file that cannot be read as a Hugging Face safetensors checkpoint."""


class ArchitectureError(SurgeonError):
    """A model family surgeon does not know how to operate on."""


class DataError(SurgeonError):
    """Calibration / training data that cannot be read or is unusable."""


class OutputError(SurgeonError):
    """An output location that cannot be written safely."""
