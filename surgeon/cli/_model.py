"""The MODEL argument of every command that reads a checkpoint: a folder or a hub ID, with ``--revision``."""

from __future__ import annotations

import functools
from pathlib import Path

import click


def model_argument(f):
    """``MODEL`` (a checkpoint folder, or a hub model ID ``org/name[@REV]``; a local folder of that name wins)
    and ``--revision REV``, folded into MODEL as ``org/name@REV`` before the command runs."""

    @functools.wraps(f)
    def wrapper(*args, model, revision=None, **kwargs):
        from ..hub import with_revision

        return f(*args, model=with_revision(model, revision), **kwargs)

    wrapper = click.option("--revision", metavar="REV", default=None,
                           help="Branch, tag or commit of a hub MODEL (org/name); same as org/name@REV.")(wrapper)
    return click.argument("model", type=click.Path(path_type=Path))(wrapper)
