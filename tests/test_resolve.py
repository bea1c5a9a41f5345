"""Checkpoint -> manifest -> exit (surgeon.manifest.resolve): one resolver, one strict reader policy,
shared by surgeon.load, extract --exit, view --exit, generate --exit and eval --exit."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

import surgeon
from surgeon.exits import ExitSpec
from surgeon.manifest.model import ManifestError
from surgeon.manifest.resolve import full_width_exits, recorded_exits, resolve_checkpoint_exit
from surgeon.manifest.stamp import stamp
from surgeon.testing import run_cli


@pytest.fixture(scope="module")
def stamped(tmp_path_factory, tiny_models):
    """A tiny Llama with a valid manifest: depth-2, depth-4, a narrowed depth-4 and the full model."""
    path = tmp_path_factory.mktemp("resolve") / "m"
    shutil.copytree(tiny_models["llama"], path)
    stamp(path, exits=[{"name": "depth-2", "layers": [0, 1]}, {"name": "depth-4", "layers": [0, 1, 2, 3]},
                       {"name": "narrow", "layers": [0, 1, 2, 3], "widths": {"ffn": 64}}], verify=False)
    return path


def _broken(src, dst, change):
    shutil.copytree(src, dst)
    side = dst / "sorted_manifest.json"
    m = json.loads(side.read_text())
    change(m)
    side.write_text(json.dumps(m))
    return dst


BROKEN = {  # each fails validation; a tolerant reader would still find exit names and layers in them
    "newer-format-version": lambda m: m.update(format_version=2),
    "layer-past-the-end": lambda m: m["exits"][0].update(layers=[0, 9]),
    "num-layers-of-another-checkpoint": lambda m: m["base"].update(num_layers=8),
}


@pytest.mark.parametrize("how", BROKEN)
def test_a_manifest_that_fails_validation_gets_one_error_everywhere(stamped, tmp_path, how):
    path = _broken(stamped, tmp_path / "broken", BROKEN[how])
    with pytest.raises(ManifestError) as err:
        surgeon.load(path, "depth-2")
    line = f"error: {err.value}"
    assert "\n" not in line and line.startswith("error: sorted manifest: ")
    runs = {
        "extract": ["extract", path, "--exit", "depth-2", "-o", tmp_path / "x"],
        "view": ["view", path, "--exit", "depth-2", "-o", tmp_path / "v"],
        "generate": ["generate", path, "--prompt", "the river", "--exit", "depth-2", "--max-new-tokens", "2"],
        "eval": ["eval", path, "--exit", "depth-2"],
    }
    for command, args in runs.items():
        res = run_cli(*args)
        assert res.exit_code == ManifestError.exit_code, (command, res.stdout, res.stderr)
        assert res.stderr.strip() == line, (command, res.stderr)
    assert not (tmp_path / "x").exists() and not (tmp_path / "v").exists()
    # the same for a layer count and for the full model: the manifest is read, and refused
    for request in (2, None):
        with pytest.raises(ManifestError, match=re.escape(err.value.problem)):
            resolve_checkpoint_exit(path, request)


def test_explicit_exits_do_not_read_the_manifest(stamped, tmp_path):
    path = _broken(stamped, tmp_path / "broken", BROKEN["newer-format-version"])
    r = resolve_checkpoint_exit(path, ExitSpec(None, [0, 1]))
    assert r.exit.layers == [0, 1] and r.manifest is None and r.entry is None


def test_requests_resolve_against_the_manifest(stamped):
    r = resolve_checkpoint_exit(stamped, 2)
    assert r.exit.name == "depth-2" and r.entry["cost"]["parameters"]["total"] > 0
    assert resolve_checkpoint_exit(stamped, None).exit.name == "full"
    narrow = resolve_checkpoint_exit(stamped, "4:ffn=0.5")  # a narrowed prefix that is a manifest exit: its name
    assert (narrow.exit.name, narrow.exit.layers, narrow.exit.widths) == ("narrow", [0, 1, 2, 3], {"ffn": 64})
    other = resolve_checkpoint_exit(stamped, "3:ffn=32").exit
    assert (other.name, other.layers, other.widths) == (None, [0, 1, 2], {"ffn": 32})
    small = resolve_checkpoint_exit(stamped, max_params=r.entry["cost"]["parameters"]["total"]).exit
    assert small.name == "depth-2"
    assert full_width_exits(stamped) == {"depth-2": [0, 1], "depth-4": [0, 1, 2, 3], "full": list(range(6))}
    assert recorded_exits(stamped, 6) == (2, 4, 6)


def test_load_takes_a_narrowed_prefix(stamped):
    ids = torch.tensor([[1, 5, 9, 14]])
    a = surgeon.load(stamped, "4:ffn=0.5")
    b = surgeon.load(stamped, {"layers": [0, 1, 2, 3], "widths": {"ffn": 64}})
    assert a.surgeon_exit.name == "narrow" and a.config.intermediate_size == 64
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
