"""The ``surgeon`` command line: parse, call one library function, render.

Commands live in their own modules and are imported only when used, so ``surgeon --help`` stays
instant (no torch import). Every :class:`~surgeon.errors.SurgeonError` becomes one line on stderr
and a non-zero exit; unexpected exceptions too, unless ``SURGEON_DEBUG=1`` asks for the traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys

import click

from .. import __version__
from ..errors import SurgeonError

# name -> (module, attribute, one-line help shown by `surgeon --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "inspect": ("surgeon.cli.inspect", "inspect_cmd", "Describe a checkpoint: family, layers, parameters, shards, manifest."),
    "import-gguf": ("surgeon.cli.import_gguf", "import_gguf_cmd", "Convert a GGUF model into a float safetensors checkpoint."),
    "demo": ("surgeon.cli.demo", "demo_cmd", "Run the main job on the embedded SmolLM2-135M model."),
    "analyze": ("surgeon.cli.analyze", "analyze_cmd", "Angular distance between layers, best blocks l*(n), heatmap, Block Influence."),
    "prune": ("surgeon.cli.prune", "prune_cmd", "Drop a contiguous block of layers (explicit, similarity or deepest)."),
    "extract": ("surgeon.cli.extract", "extract_cmd", "Extract a depth and/or width sub-model (first K layers, first channels/heads)."),
    "heal": ("surgeon.cli.heal", "heal_cmd", "Heal a (pruned) model with QLoRA / LoRA / full fine-tuning; write a merged checkpoint."),
    "soft": ("surgeon.cli.soft", "soft_cmd", "Sorted Fine-Tuning: train every chosen prefix of layers to be a usable model."),
    "eval": ("surgeon.cli.eval", "eval_cmd", "Held-out loss, perplexity and KL to the full model of depth exits."),
    "sweep": ("surgeon.cli.sweep", "sweep_cmd", "The pruning curve: loss and task accuracy vs layers dropped; how many to drop."),
    "manifest": ("surgeon.cli.manifest", "manifest_cmd", "Write (measure exits) or validate the sorted manifest."),
    "sort-width": ("surgeon.cli.sort_width", "sort_width_cmd", "Sort FFN channels and attention heads by importance (same logits)."),
    "view": ("surgeon.cli.view", "view_cmd", "One exit of a sorted checkpoint as a plain HF folder of hard links (no disk cost)."),
    "fix-gguf": ("surgeon.cli.fix_gguf", "fix_gguf_cmd", "Add the per-layer metadata llama.cpp's converter drops (Gemma 3 after pruning)."),
    "generate": ("surgeon.cli.generate", "generate_cmd", "Generate with an exit, self-speculative decoding or confidence early exit."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SurgeonError as e:
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; no output was left behind", 130)
        except MemoryError:
            _fail("out of memory", 1, "lower --batch-size / --seq-len / --samples, or use --offload layer where offered")
        except click.UsageError as e:  # bad option value / unknown option: one line, like our own errors
            parts = e.ctx.command_path.split()[1:] if e.ctx is not None else []
            name = " ".join(["surgeon", *parts])
            _fail(e.format_message().rstrip("."), 2, f"see `{name} --help`")
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:  # noqa: BLE001 - last line of defence: one line, no traceback
            if os.environ.get("SURGEON_DEBUG"):
                raise
            if e.__class__.__name__ == "OutOfMemoryError":
                _fail("out of memory", 1, "lower --batch-size / --seq-len / --samples")
            _fail(f"unexpected {e.__class__.__name__}: {e}".splitlines()[0], 1,
                  "rerun with SURGEON_DEBUG=1 for the traceback and please report it")


def _fail(message: str, code: int, hint: str | None = None) -> None:
    click.echo(f"error: {message}" + (f": {hint}" if hint else ""), err=True)
    sys.exit(code)


def _sigterm(signum, frame):  # turn SIGTERM into a normal exit so temp outputs get cleaned up
    raise KeyboardInterrupt


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="surgeon")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Model surgery for decoder LLMs: analyze, prune, extract, heal, sort, serve.

    MODEL is a Hugging Face checkpoint folder (config.json + safetensors) or a hub
    model ID org/name[@REV]. Run `surgeon COMMAND --help` for each command's options.
    """
    from ..memory import large_blocks_from_mmap

    large_blocks_from_mmap()  # streamed tensors are freed back to the OS (see surgeon.memory)
    level = logging.WARNING - 10 * verbose
    if verbose < 2:  # surgeon draws its own progress bars; keep the libraries' per-load tqdm bars out
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # optional-kernel notices on CPU
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")  # API renames
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    if threading_main():
        signal.signal(signal.SIGTERM, _sigterm)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
