import json
import subprocess
import sys
import time

import pytest
import torch

from surgeon.commands.inspect import inspect_checkpoint
from surgeon.testing import run_cli


def _loaded_param_count(path):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return sum(p.numel() for p in m.parameters()), m.config.num_hidden_layers


def test_exact_parameter_count(family_model):
    family, path = family_model
    r = inspect_checkpoint(path)
    n, layers = _loaded_param_count(path)
    assert r.num_parameters == n
    assert r.num_layers == layers == 6
    assert sum(r.parameters.values()) == n
    assert r.family == family


def test_inspect_json_keys(tiny_models):
    res = run_cli("inspect", tiny_models["gemma3_text"], "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    for k in ("architecture", "num_layers", "num_parameters", "hidden_size", "layer_types"):
        assert k in d
    assert d["architecture"] == "Gemma3ForCausalLM"
    assert d["layer_types"][2] == "full_attention" and len(d["layer_types"]) == 6
    assert d["tie_word_embeddings"] is True


def test_inspect_sharded(tiny_sharded):
    r = inspect_checkpoint(tiny_sharded)
    assert len(r.shards) > 1 and sum(s.tensors for s in r.shards) == len(json.loads(
        (tiny_sharded / "model.safetensors.index.json").read_text())["weight_map"])


def test_inspect_table_renders(tiny_models):
    res = run_cli("inspect", tiny_models["qwen2"])
    assert res.exit_code == 0
    assert "max_window_layers" in res.stdout and "qwen2" in res.stdout


# Walks the click group (commands and sub-groups such as `manifest show`), runs `--help` of each, and
# names the first command whose help pulled in a heavy module. Run in a fresh interpreter.
_HELP_WALK = """
import json, sys
import click
from click.testing import CliRunner
from surgeon.cli import main

HEAVY = ("torch", "transformers")
seen, culprit = [], None

def walk(cmd, ctx, path):
    global culprit
    r = CliRunner().invoke(main, [*path, "--help"])
    assert r.exit_code == 0 and "Usage:" in r.output, (path, r.output)
    seen.append(" ".join(path))
    heavy = [m for m in HEAVY if m in sys.modules]
    if heavy and culprit is None:
        culprit = [" ".join(path), heavy]
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            walk(sub, click.Context(sub, info_name=name, parent=ctx), [*path, name])

walk(main, click.Context(main, info_name="surgeon"), [])
print(json.dumps({"seen": seen, "culprit": culprit}))
"""


def test_help_is_fast_and_imports_no_torch():
    """`surgeon X --help` for every command and sub-command imports neither torch nor transformers."""
    from surgeon.cli import COMMANDS

    out = subprocess.run([sys.executable, "-c", _HELP_WALK], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["culprit"] is None, f"`surgeon {res['culprit'][0]} --help` imports {res['culprit'][1]}"
    assert set(COMMANDS) <= set(res["seen"]) and "manifest show" in res["seen"], res["seen"]
    t = time.time()
    subprocess.run([sys.executable, "-m", "surgeon", "--help"], capture_output=True, check=True)
    assert time.time() - t < 2.0


@pytest.mark.slow
def test_smollm2_import_and_inspect(smollm2):
    r = inspect_checkpoint(smollm2)
    n, layers = _loaded_param_count(smollm2)
    assert r.num_parameters == n == 134515008
    assert r.num_layers == layers == 30
    assert r.tie_word_embeddings and r.family == "llama"


@pytest.mark.slow
def test_imported_config_carries_the_legacy_keys(tmp_path):
    """import-gguf writes rope_theta / torch_dtype beside rope_parameters / dtype (runtimes reading v4
    keys, e.g. MLX-LM, get SmolLM2's theta of 100000, not their default), and transformers loads it quietly."""
    import json
    import warnings

    from surgeon.commands.demo import ensure_demo_gguf
    from surgeon.commands.import_gguf import import_gguf

    out = tmp_path / "m"
    import_gguf(ensure_demo_gguf(), out, dtype="bf16")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"] == 100000.0
    assert cfg["torch_dtype"] == cfg["dtype"] == "bfloat16"
    from transformers import AutoConfig

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert AutoConfig.from_pretrained(out).rope_parameters["rope_theta"] == 100000.0


def test_legacy_keys_for_every_rope_layout():
    from surgeon.arch.legacy import with_legacy_keys

    plain = with_legacy_keys({"rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}, "dtype": "float32"})
    assert plain["rope_theta"] == 5e5 and "rope_scaling" not in plain and plain["torch_dtype"] == "float32"
    llama3 = with_legacy_keys({"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}})
    assert llama3["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0}
    gemma = with_legacy_keys({"text_config": {"rope_parameters": {
        "full_attention": {"rope_theta": 1e6, "rope_type": "default"},
        "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}}}})
    assert gemma["text_config"]["rope_theta"] == 1e6 and gemma["text_config"]["rope_local_base_freq"] == 1e4
    kept = with_legacy_keys({"rope_theta": 1.0, "rope_parameters": {"rope_theta": 2.0}, "dtype": "x", "torch_dtype": "y"})
    assert kept["rope_theta"] == 1.0 and kept["torch_dtype"] == "y"  # never overrides what is there
