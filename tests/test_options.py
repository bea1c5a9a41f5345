"""command_line.command_line: any options object written as the `surgeon ...` line that builds it back.

Each line is parsed by the real click commands (surgeon.cli.main) with the library call the command
makes patched to capture its arguments, so what comes back is what that command line would run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from surgeon.command_line import command_args, command_line, command_name
from surgeon.testing import options_from_command_line


def round_trip(monkeypatch, opts, *groups) -> str:
    line = command_line(opts, *groups)
    assert options_from_command_line(line, monkeypatch) == (opts, *(g for g, _ in groups)), line
    return line


def cli_commands() -> set[str]:
    """Every `surgeon` command path the CLI has (subcommands of groups included)."""
    import click

    from surgeon.cli import COMMANDS, main

    names = set()
    for name in COMMANDS:
        cmd = main.get_command(None, name)
        if isinstance(cmd, click.Group):
            names |= {f"{name} {sub}" for sub in cmd.commands}
        else:
            names.add(name)
    return names


def examples(tmp_path: Path) -> list[tuple]:
    """(options, *prefixed groups) with non-default values for every command, bools on and off."""
    from surgeon.commands import (
        analyze,
        demo,
        eval,
        extract,
        fix_gguf,
        generate,
        heal,
        import_gguf,
        inspect,
        manifest,
        prune,
        soft,
        sort_width,
        sweep,
        view,
    )

    m, out = tmp_path / "my model", tmp_path / "out"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    return [
        (inspect.InspectOptions(model=m),),
        (analyze.AnalyzeOptions(model=m, data="x.jsonl", samples=3, seq_len=16, pack=True, batch_size=2, shuffle=True,
                                seed=7, role="train", compute_dtype="bf16", output=out, force=True, device="cpu", offload="layer"),),
        (analyze.AnalyzeOptions(model=Path("-dash"), device_map="auto", max_memory="cpu=1GiB"),),
        (prune.PruneOptions(model=m, n=2, start=1, allow_last=True, dry_run=True, strategy="deepest"),),
        (prune.PruneOptions(model=m, n=2, analysis=tmp_path / "a.json", output=out, dtype="fp16",
                            max_shard_size="1GB", force=True),),
        (prune.PruneOptions(model=m, n=2, heal="builtin:sotu", output=out),
         (heal.HealSettings(steps=5, lr=1e-3, warmup=1, rank=4, alpha=8.0, save_adapter=True, eval_samples=0,
                            distill="logits", distill_weight=0.5, seq_len=64, batch_size=1, resume=True), "heal")),
        (prune.PruneOptions(model=m, n=2, heal="builtin:sotu", output=out),
         (heal.HealSettings(method="full", quant="none", gradient_checkpointing=True, target_modules="up_proj"), "heal")),
        (extract.ExtractOptions(model=m, depth=4, ffn="0.5", heads="2", output=out, dry_run=True),),
        (extract.ExtractOptions(model=m, exit="depth-2", output=out),),
        (extract.ExtractOptions(model=m, max_params="100M", output=out),),
        (heal.HealOptions(model=m, data="c4", output=out, method="full", checkpoint_dir=tmp_path / "ck",
                          teacher=tmp_path / "t", distill="residual", save_every=0, eval_data="x.txt",
                          eval_batch_size=2, grad_accum=3, dropout=0.1, seed=3, lr=2e-5, device="cpu"),),
        (heal.HealOptions(model=m, data="c4", output=out, quant="none"),),
        (soft.SoftOptions(model=m, data="alpaca", output=out, exits="1,2", loss="stochastic", ffn_exits="0.5,1.0",
                          exit_weights="1,2", chunk_tokens=128, method="lora", quant="none"),),
        (eval.EvalOptions(model=m, exit="10,20", kl=False, seq_len=8, eval_samples=2, eval_batch_size=1,
                          compute_dtype="fp32"),),
        (eval.EvalOptions(model=m, all_exits=True, tasks="hellaswag,mmlu", limit=5, num_fewshot=1, eval_data="c4"),),
        (manifest.ManifestOptions(model=m, in_place=True, exits="2,4", eval_data="builtin:sotu", verify=False,
                                  align_shards=True),),
        (manifest.ManifestOptions(model=m, output=out, verify=True, align_shards=False, eval_samples=2, force=True),),
        (manifest.ValidateOptions(path=m, verify=True),),
        (manifest.ShowOptions(path=m, exit="depth-2", overrides=True),),
        (sort_width.SortWidthOptions(model=m, output=out, data="x.txt", samples=2, pack=True),),
        (view.ViewOptions(model=m, exit="depth-2", output=out, force=True),),
        (generate.GenerateOptions(model=m, prompt="-x 'quoted' \"and\" $HOME", draft_exit="2", draft_vocab=100,
                                  draft_confidence=0.5, chat=True, compare=True, kernels="onednn", compute_dtype="bf16"),),
        (generate.GenerateOptions(model=m, prompt="hi", exit="3", sample=True, temperature=0.7, top_p=0.9, seed=1,
                                  max_new_tokens=3),),
        (generate.GenerateOptions(model=m, prompt="hi", draft_exit="2", backend="hf"),),
        (generate.GenerateOptions(model=m, prompt="hi", early_exit="0.9,0.9"),),
        (import_gguf.ImportOptions(gguf_file=gguf, output=out, dtype="bf16", force=True),),
        (fix_gguf.FixGgufOptions(gguf=gguf, model=m, output=tmp_path / "fixed.gguf"),),
        (demo.DemoOptions(output=out, quick=True, device="cpu"),),
        (sweep.SweepOptions(model=m, output=out, data="builtin:sotu", samples=8, seq_len=64, eval_data="x.txt",
                            eval_samples=4, n="0,2,4", strategy="deepest", tolerance=0.1, resume=True,
                            task_batch_size=2, offload="layer"),),
        (sweep.SweepOptions(model=m, output=out, max_fraction=0.25, step=3, tasks="arc_easy,piqa", limit=5,
                            num_fewshot=0, force=True, compute_dtype="bf16", device_map="auto"),),
    ]


def test_every_command_round_trips(tmp_path, monkeypatch):
    covered = set()
    for opts, *groups in examples(tmp_path):
        round_trip(monkeypatch, opts, *groups)
        covered.add(command_name(type(opts)))
    covered |= {"manifest write"} if "manifest" in covered else set()  # `surgeon manifest MODEL` is `write`
    assert cli_commands() <= covered, cli_commands() - covered  # a new command needs an example here


def test_only_non_defaults_are_written():
    from surgeon.commands.eval import EvalOptions
    from surgeon.commands.heal import HealOptions, HealSettings
    from surgeon.commands.manifest import ManifestOptions, ValidateOptions

    assert command_line(EvalOptions(model=Path("m"), exit="4")) == "surgeon eval m --exit 4"
    assert command_line(EvalOptions(model=Path("m"), exit="4", kl=False)) == "surgeon eval m --exit 4 --no-kl"
    assert command_line(ValidateOptions(path=Path("a b"), verify=True)) == "surgeon manifest validate 'a b' --verify"
    line = command_line(ManifestOptions(model=Path("m"), in_place=True, verify=False))
    assert line == "surgeon manifest m --in-place --no-verify"
    # quant=None resolves to nf4 under LoRA in __post_init__: the default, so not written
    heal = HealOptions(model=Path("p"), data="builtin:sotu", output=Path("o"), lr=1e-3)
    assert heal.quant == "nf4" and command_line(heal) == "surgeon heal p --output o --lr 0.001 --data builtin:sotu"
    assert "--quant none" in command_line(dataclasses.replace(heal, quant="none"))
    assert command_args(HealSettings(lr=1e-3, resume=True), "heal") == ["--heal-lr", "0.001", "--heal-resume"]


def test_a_value_the_command_line_cannot_express_is_refused():
    from surgeon.commands.eval import EvalOptions

    opts = EvalOptions(model=Path("m"), exit="4")
    object.__setattr__(opts, "eval_data", None)  # default builtin:sotu; no flag sets None
    with pytest.raises(ValueError, match="eval_data = None"):
        command_line(opts)


def test_an_alias_is_told_apart_from_the_flag_given_with_its_default():
    """A hidden older spelling of a field whose default is not None: the flag given with its default value
    plus a different alias value is an error, not a silent win of the alias; either alone sets the field."""
    import click
    from click.testing import CliRunner

    from surgeon.errors import UsageError
    from surgeon.options import build, click_options, opt

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Opts:
        mode: str = opt("fast", "A mode.", flags=("--mode",), aliases=("--old-mode",))

    seen = []

    @click.command()
    @click_options(Opts)
    def cmd(**kw):
        seen.append(build(Opts, **kw))

    def run(*args):
        seen.clear()
        r = CliRunner().invoke(cmd, list(args))
        return seen[0] if seen else r.exception

    assert run() == Opts()
    assert run("--mode", "slow") == Opts(mode="slow")
    assert run("--old-mode", "slow") == Opts(mode="slow")
    assert run("--mode", "slow", "--old-mode", "slow") == Opts(mode="slow")
    assert isinstance(run("--mode", "fast", "--old-mode", "slow"), UsageError)
    assert isinstance(run("--mode", "slow", "--old-mode", "fast"), UsageError)
