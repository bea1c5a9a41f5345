"""Shared rendering for CLI commands: JSON output, rich consoles, byte/count formatting."""

from __future__ import annotations

import json
import sys
from typing import Any


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def print_json(data: Any) -> None:
    """Deterministic JSON on stdout (sorted keys, 2-space indent)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_count(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def ranges(indices: list[int]) -> str:
    """[0,1,2,5,6] -> '0-2, 5-6'."""
    out, start, prev = [], None, None
    for i in indices:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = i
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else str(start))
    return ", ".join(out) if out else "(none)"


def render_plan(plan, c=None) -> None:
    """Print a plan: kept / dropped ranges, tensors, bytes, config diff."""
    from rich.table import Table

    c = c or console()
    d = plan.to_dict()
    c.print(f"[bold]{plan.operation}[/] {plan.source} ({plan.family}, {plan.num_source_layers} layers)")
    c.print(f"  keep layers  {ranges(list(plan.kept_layers))}  ({len(plan.kept_layers)} layers)")
    c.print(f"  drop layers  {ranges(plan.dropped_layers)}")
    c.print(f"  tensors      {d['num_tensors']} written, {d['dropped_tensors']} dropped; "
            f"{human_count(d['num_parameters'])} parameters, {human_bytes(d['out_bytes'])}")
    diff = plan.config_diff()
    if diff:
        t = Table("config key", "old", "new", title="config changes", title_justify="left")
        for k, (old, new) in diff.items():
            t.add_row(k, _short(old), _short(new))
        c.print(t)


def _short(v) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 60 else s[:57] + "..."


class progress_bar:
    """Context manager yielding a ``progress(done, total, label)`` callback drawn with rich."""

    def __init__(self, description: str, unit: str = "bytes"):
        self.description = description
        self.unit = unit

    def __enter__(self):
        self._p = None
        return self.update

    def _start(self):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        c = console(stderr=True)
        size_col = DownloadColumn() if self.unit == "bytes" else MofNCompleteColumn()
        self._p = Progress(TextColumn("{task.description}"), BarColumn(), size_col, TimeRemainingColumn(),
                           console=c, transient=True, disable=not c.is_terminal)
        self._p.__enter__()
        self._task = self._p.add_task(self.description, total=None)

    def update(self, done: int, total: int, label: str = "") -> None:
        if self._p is None:
            self._start()
        self._p.update(self._task, completed=done, total=total)

    def __exit__(self, *exc):
        if self._p is not None:
            return self._p.__exit__(*exc)
        return False


class phase_bar:
    """A rich progress bar whose description follows the label (phase, loss, tokens/s) with an ETA."""

    def __enter__(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        c = console(stderr=True)
        self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           TextColumn("ETA"), TimeRemainingColumn(), console=c, transient=True, disable=not c.is_terminal)
        self._p.__enter__()
        self._phase = None
        self._task = None
        return self.update

    def update(self, done: int, total: int, label: str) -> None:
        phase = label.split()[0] if label else ""
        if phase != self._phase:
            if self._task is not None:
                self._p.remove_task(self._task)
            self._task = self._p.add_task(label, total=total)
            self._phase = phase
        self._p.update(self._task, completed=done, total=total, description=label)

    def __exit__(self, *exc):
        return self._p.__exit__(*exc)
