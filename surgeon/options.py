"""Typed command options declared once: a frozen dataclass per command, click flags generated from it.

Each field carries its help text (``opt(default, "help")``); :func:`click_options` turns the
fields into click options, and the command builds the dataclass from what click parsed, so the
dataclass's ``__post_init__`` is the one place for cross-field checks. Library callers build the
same dataclass directly.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import click

_MISSING = dataclasses.MISSING


def opt(default: Any = _MISSING, help: str = "", *, flags: tuple[str, ...] | None = None,
        choices: tuple[str, ...] | None = None, metavar: str | None = None, cli: bool = True):
    """A dataclass field with its CLI help. ``cli=False`` keeps it out of the generated flags."""
    md = {"help": help, "flags": flags, "choices": choices, "metavar": metavar, "cli": cli}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=md)
    return dataclasses.field(default=default, metadata=md)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Strip Optional[...]; return (type, optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def click_options(cls: type) -> Any:
    """Decorator: add one click option per field of the dataclass ``cls`` (``cli=True`` fields)."""
    hints = typing.get_type_hints(cls)

    def deco(f):
        for fld in reversed(dataclasses.fields(cls)):
            md = fld.metadata
            if not md.get("cli", False):
                continue
            tp, _ = _base_type(hints[fld.name])
            name = fld.name.replace("_", "-")
            flags = list(md.get("flags") or [f"--{name}"])
            default = fld.default if fld.default is not _MISSING else (
                fld.default_factory() if fld.default_factory is not _MISSING else None)
            kw: dict[str, Any] = {"help": md["help"], "show_default": default not in (None, False, "")}
            if tp is bool:
                if not any("/" in x for x in flags):
                    flags = [f"--{name}/--no-{name}"] if default else flags
                kw.update(is_flag=True, default=bool(default))
            else:
                if md.get("choices"):
                    kw["type"] = click.Choice(md["choices"], case_sensitive=False)
                elif tp in (int, float):
                    kw["type"] = tp
                elif tp is Path:
                    kw["type"] = click.Path(path_type=Path)
                else:
                    kw["type"] = str
                kw["default"] = default
                if md.get("metavar"):
                    kw["metavar"] = md["metavar"]
            f = click.option(*flags, fld.name, **kw)(f)
        return f

    return deco


def build(cls: type, **kwargs: Any) -> Any:
    """Build ``cls`` from click's parsed values (ignores keys the dataclass does not declare)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in kwargs.items() if k in names})
