"""surgeon manifest MODEL [--exits ...] [--eval-data SPEC] (--in-place | -o OUT)
surgeon manifest validate PATH [--verify]"""

from __future__ import annotations

from pathlib import Path

import click

from ..commands.manifest import ManifestOptions, ShowOptions, ValidateOptions
from ..options import build, click_options
from ._model import model_argument
from ._render import console, human_bytes, human_count, print_json, progress_bar, ranges


class _DefaultToWrite(click.Group):
    """`surgeon manifest MODEL ...` means `surgeon manifest write MODEL ...`."""

    def parse_args(self, ctx, args):
        if not args:
            click.echo(ctx.get_help())
            ctx.exit(0)
        if args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["write", *args]
        return super().parse_args(ctx, args)


@click.group("manifest", cls=_DefaultToWrite)
def manifest_cmd() -> None:
    """Write or validate the sorted manifest of a checkpoint.

    \b
    surgeon manifest MODEL --exits 2,4 --eval-data builtin:sotu --in-place
    surgeon manifest MODEL -o OUT            (a copy of MODEL with the manifest)
    surgeon manifest validate MODEL --verify
    surgeon manifest show MODEL --exit depth-12 --overrides
    """


@manifest_cmd.command("write")
@model_argument
@click_options(ManifestOptions)
@click.option("--json", "as_json", is_flag=True, help="Print the written manifest as JSON.")
def write_cmd(model: Path, as_json: bool, **kwargs) -> None:
    """Measure the exits of MODEL (costs from shapes, quality from --eval-data) and write the manifest."""
    from ..commands import manifest

    opts = build(ManifestOptions, model=model, **kwargs)
    with progress_bar("measuring exits") as progress:
        r = manifest.run(opts, progress=progress)
    if as_json:
        print_json(r.manifest)
        return
    c = console()
    render_exits(r.manifest, c)
    c.print(f"[green]wrote[/] {Path(r.output) / 'sorted_manifest.json'}")


def render_exits(manifest: dict, c) -> None:
    from rich.table import Table

    widths = any(e.get("widths") for e in manifest["exits"])
    quality = any(e.get("quality") for e in manifest["exits"])
    t = Table(title="exits (cheapest first)", title_justify="left")
    cols = ["exit", "layers"] + (["widths"] if widths else []) + ["params", "FLOPs/tok", "KV/tok"]
    cols += (["loss", "KL", "top-1"] if quality else []) + ["check"]
    for col in cols:
        t.add_column(col, justify="left" if col in ("exit", "layers", "widths") else "right")
    for e in manifest["exits"]:
        q = {x["metric"]: x["value"] for x in e.get("quality") or []}
        cost = e["cost"]
        row = [e["name"], ranges(e["layers"])]
        if widths:
            row.append(" ".join(f"{k}={v}" for k, v in (e.get("widths") or {}).items()))
        row += [human_count(cost["parameters"]["total"]), human_count(cost["flops_per_token"]),
                human_bytes(cost["kv_cache_bytes_per_token"])]
        if quality:
            row += [f"{q['loss']:.3f}" if "loss" in q else "", f"{q['kl_full_exit']:.3f}" if "kl_full_exit" in q else "",
                    f"{q['top1_agreement']:.0%}" if "top1_agreement" in q else ""]
        row.append("hash" if e.get("verification") else "")
        t.add_row(*row)
    c.print(t)


@manifest_cmd.command("show")
@click.argument("path", type=click.Path(path_type=Path))
@click_options(ShowOptions)
def show_cmd(path: Path, **kwargs) -> None:
    """Print PATH's exits as JSON; with --overrides, each prefix exit's config overrides for stock loaders."""
    from ..commands import manifest

    print_json(manifest.show(build(ShowOptions, path=path, **kwargs)))


@manifest_cmd.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
@click_options(ValidateOptions)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def validate_cmd(path: Path, as_json: bool, **kwargs) -> None:
    """Check PATH's manifest: schema, every named tensor's shape, header copy (and hashes with --verify)."""
    from ..commands import manifest

    r = manifest.validate(build(ValidateOptions, path=path, **kwargs))
    if as_json:
        print_json(r.to_dict())
        return
    c = console()
    for w in r.warnings:
        c.print(f"[yellow]warning:[/] {w}")
    exits = ", ".join(f"{e.name} ({e.num_layers} layers{', ' + e.verified if e.verified else ''})" for e in r.exits)
    what = "files, hashes and logits" if r.hashes_verified else "schema, tensors and header copy"
    c.print(f"[green]valid[/] {r.path}: format v{r.format_version}, {len(r.exits)} exits: {exits} ({what} checked)")
