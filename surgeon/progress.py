"""The one progress-callback type every long-running library function takes.

``progress(done, total, label)`` is called as work advances: ``done`` and ``total`` count the
function's own unit (bytes written, sequences, layers, optimizer steps) and ``label`` names the
phase or the item (``"evaluating"``, ``"training  loss 2.31"``, a tensor name). Library code never
prints; the CLI turns the calls into rich progress bars.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int, str], None]


def no_progress(done: int, total: int, label: str = "") -> None:
    """The default callback: ignore the report."""
