"""An options object written back as the ``surgeon ...`` command line that builds it.

The inverse of :func:`surgeon.options.click_options` + :func:`surgeon.options.build`, from the same
field metadata: :func:`command_line` writes the command, its positionals and the flags of the fields
that differ from their defaults, so what the demo prints is what it runs, and pasting the line builds
the same options back (tests parse every printed line through the real click commands).
"""

from __future__ import annotations

import dataclasses
import shlex
import typing
from typing import Any

from .options import base_type, click_flags, field_default


def command_name(cls: type) -> str:
    """The ``surgeon`` command (and subcommand) that runs options of class ``cls``: the ``cli_command``
    class attribute (``"manifest validate"``), else its module's name, since ``surgeon X`` is
    ``commands/X.py`` (``sort_width`` -> ``sort-width``)."""
    name = getattr(cls, "cli_command", None)
    if name:
        return name
    package, _, module = cls.__module__.rpartition(".")
    if package != "surgeon.commands":
        raise ValueError(f"{cls.__name__} is not the options of a surgeon command")
    return module.replace("_", "-")


def _word(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)  # repr: the float reads back exactly


def _is_default(obj: Any, name: str, value: Any, default: Any) -> bool:
    if value == default:
        return True
    if default is None:  # None = "decided in __post_init__" (RecipeOptions.quant): is the value that decision?
        try:
            return dataclasses.replace(obj, **{name: None}) == obj
        except Exception:  # noqa: BLE001 - None is not valid here: the value must be written
            return False
    return False


def command_args(obj: Any, prefix: str | None = None) -> list[str]:
    """The flags (with values) that set ``obj``'s ``cli=True`` fields, for the fields whose value is not
    the default: the first long flag of each (``--PREFIX-NAME`` with ``prefix``), ``--x``/``--no-x``
    for bools, paths as strings. Raises ValueError for a value the command line cannot express."""
    hints = typing.get_type_hints(type(obj))
    words: list[str] = []
    for fld in dataclasses.fields(obj):
        value, default = getattr(obj, fld.name), field_default(fld)
        if fld.metadata.get("cli") is False or _is_default(obj, fld.name, value, default):
            continue  # positionals are written by command_line
        if not fld.metadata.get("cli"):
            raise ValueError(f"{type(obj).__name__}.{fld.name} has no command-line flag (value {value!r})")
        tp, _ = base_type(hints[fld.name])
        flags = click_flags(fld, tp, prefix)
        flag = next((f for f in flags if f.startswith("--")), flags[0])
        if tp is bool:
            on, _, off = flag.partition("/")
            if value is None or (not value and not off):
                raise ValueError(f"{type(obj).__name__}.{fld.name} = {value!r} has no command-line form")
            words.append(on.strip() if value else off.strip())
            continue
        if value is None:
            raise ValueError(f"{type(obj).__name__}.{fld.name} = None has no command-line form "
                             f"(its default is {default!r})")
        text = _word(value)
        words += [f"{flag}={text}"] if text.startswith("-") else [flag, text]  # a value like "-x" is no flag
    return words


def command_line(obj: Any, *groups: tuple[Any, str]) -> str:
    """``obj`` as the shell command that runs it: ``surgeon COMMAND POSITIONAL... --flag value ...``.

    The command comes from :func:`command_name`, the positionals are the ``cli=False`` fields (the
    command's click arguments, e.g. MODEL), the flags from :func:`command_args`; ``groups`` adds
    prefixed option groups as ``(options, prefix)`` (``prune ... --heal-steps 50``). Every word is
    shell-quoted, so the line can be pasted, and parsing it builds ``obj`` back.
    """
    words = ["surgeon", *command_name(type(obj)).split()]
    for fld in dataclasses.fields(obj):
        if fld.metadata.get("cli") is False:
            text = _word(getattr(obj, fld.name))
            words.append(f"./{text}" if text.startswith("-") else text)  # a path like "-x" is no flag
    words += command_args(obj)
    for group, prefix in groups:
        words += command_args(group, prefix)
    return " ".join(shlex.quote(w) for w in words)
