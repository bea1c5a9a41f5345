"""Crash consistency, fuzzed parsers, disk-full / permission errors on outputs."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surgeon.errors import CheckpointError, SurgeonError
from surgeon.io.checkpoint import Checkpoint
from surgeon.io.safetensors_header import read_header
from surgeon.testing import run_cli

# Runs the CLI in a child process that SIGKILLs itself at a chosen point of the write.
KILLER = r"""
import os, signal, sys
mode, n = sys.argv[1], int(sys.argv[2])
import importlib
import surgeon.io.atomic as a
ex = importlib.import_module("surgeon.surgery.execute")  # the package re-exports a function of the same name
count = 0
def hit():
    global count
    count += 1
    if count == n:
        os.kill(os.getpid(), signal.SIGKILL)
def arm(owner, name):  # owner.name counts its calls and kills the process at the n-th
    real = getattr(owner, name)
    def wrapped(*args, **kw):
        hit(); return real(*args, **kw)
    setattr(owner, name, wrapped)
if mode == "tensor":
    arm(ex, "copy_range")
elif mode == "rename":
    arm(a.os, "rename")
elif mode == "replace":
    arm(os, "replace")
elif mode == "header":
    import surgeon.manifest.store as store
    arm(store, "update_header_metadata")
from surgeon.cli import main
main(sys.argv[3:], prog_name="surgeon")
"""


def _run_killed(mode: str, n: int, args: list) -> int:
    p = subprocess.run([sys.executable, "-c", KILLER, mode, str(n), *map(str, args)], capture_output=True, text=True)
    return p.returncode


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.surgeon-")]


@pytest.mark.parametrize("mode,n", [("tensor", 1), ("tensor", 20), ("tensor", 38), ("rename", 1)])
def test_kill9_during_new_output_leaves_no_target(tiny_sharded, tmp_path, mode, n):
    out = tmp_path / "out"
    rc = _run_killed(mode, n, ["prune", tiny_sharded, "--start", 1, "--n", 2, "-o", out, "--max-shard-size", "100KB"])
    assert rc == -9
    assert not out.exists()
    # the next run cleans the stale temp folder (with a message) and succeeds
    res = subprocess.run([sys.executable, "-m", "surgeon", "prune", str(tiny_sharded), "--start", "1", "--n", "2",
                          "-o", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "interrupted run" in res.stderr
    assert _leftovers(tmp_path, "out") == []
    assert Checkpoint.open(out).num_layers == 4


@pytest.mark.parametrize("mode,n", [("tensor", 10), ("rename", 1), ("rename", 2)])
def test_kill9_while_replacing_keeps_previous_version(tiny_models, tmp_path, mode, n):
    src = tiny_models["llama"]
    out = tmp_path / "out"
    assert run_cli("extract", src, "--depth", 3, "-o", out).exit_code == 0
    previous = {p.name: p.read_bytes() for p in out.iterdir()}
    rc = _run_killed(mode, n, ["extract", src, "--depth", 5, "-o", out, "--force"])
    assert rc == -9
    # Either the target is the complete previous version, or (killed between the two renames) it is
    # missing and the next run restores the previous version before doing anything else.
    if not out.exists():
        assert mode == "rename" and n == 2
        from surgeon.io.atomic import clean_stale

        clean_stale(out)  # what the next run does first
    assert {p.name: p.read_bytes() for p in out.iterdir()} == previous
    assert Checkpoint.open(out).num_layers == 3
    res = subprocess.run([sys.executable, "-m", "surgeon", "extract", str(src), "--depth", "5", "-o", str(out),
                          "--force"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert Checkpoint.open(out).num_layers == 5 and _leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES])
def test_disk_full_or_permission_denied(tiny_models, tmp_path, monkeypatch, err):
    import importlib

    ex = importlib.import_module("surgeon.surgery.execute")

    def fail(*a, **k):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(ex, "copy_range", fail)
    res = run_cli("prune", tiny_models["llama"], "--start", 1, "--n", 2, "-o", tmp_path / "out")
    assert res.exit_code != 0
    line = res.stderr.strip()
    assert line.startswith("error: cannot write") and os.strerror(err) in line and "\n" not in line
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_parent(tiny_models, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = run_cli("prune", tiny_models["llama"], "--start", 1, "--n", 2, "-o", blocker / "out")
    assert res.exit_code != 0 and res.stderr.startswith("error: cannot create")


# ---- fuzzing ------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_header_random_bytes(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("fz") / "x.safetensors"
    p.write_bytes(data)
    try:
        read_header(p)
    except CheckpointError:
        pass


def _valid_file_bytes() -> bytes:
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                         "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}}).encode()
    header += b" " * ((-len(header)) % 8)
    return struct.pack("<Q", len(header)) + header + bytes(range(22))


@FUZZ
@given(st.data())
def test_fuzz_header_mutations(tmp_path_factory, data):
    raw = bytearray(_valid_file_bytes())
    op = data.draw(st.sampled_from(["truncate", "flip", "length"]))
    if op == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif op == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    else:
        raw[:8] = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1)))
    p = tmp_path_factory.mktemp("fz") / "x.safetensors"
    p.write_bytes(bytes(raw))
    try:
        h = read_header(p)
    except CheckpointError:
        return
    # whatever parses must be self-consistent
    assert all(t.end <= h.file_size for t in h.tensors.values())


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(index=st.one_of(JSON_VALUES, st.fixed_dictionaries({"weight_map": st.dictionaries(
    st.text(max_size=12), st.text(max_size=30) | st.sampled_from(["model.safetensors", "../x", "/etc/passwd"]),
    max_size=4)})))
def test_fuzz_index(tmp_path_factory, index):
    d = tmp_path_factory.mktemp("fz")
    (d / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 1}')
    (d / "model.safetensors").write_bytes(_valid_file_bytes())
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    try:
        Checkpoint.open(d)
    except SurgeonError:
        pass


def test_deeply_nested_index_json(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 1}')
    (tmp_path / "model.safetensors.index.json").write_text("[" * 200000 + "]" * 200000)
    with pytest.raises(CheckpointError, match="not valid JSON|not a JSON object"):
        Checkpoint.open(tmp_path)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("mode,n", [("header", 1), ("replace", 1)])
@pytest.mark.parametrize("sharded", [False, True])
def test_kill9_during_manifest_in_place(tiny_models, tiny_sharded, tmp_path, mode, n, sharded):
    """Killed while rewriting the manifest in place: the next run restores the complete previous
    version (sidecar and header copy, byte for byte) with a message, then writes the new one."""
    out = tmp_path / "m"
    src = tiny_sharded if sharded else tiny_models["qwen3"]
    assert run_cli("extract", src, "--depth", 6, "-o", out).exit_code == 0
    previous = _snapshot(out)
    if sharded and mode == "header":
        mode = "replace"  # a sharded checkpoint keeps its copy in the index, written with os.replace
    rc = _run_killed(mode, n, ["manifest", out, "--exits", "2,4", "--in-place", "--no-verify"])
    assert rc == -9
    from surgeon.manifest.stamp import recover_in_place

    assert recover_in_place(out)  # what the next in-place run does first
    assert _snapshot(out) == previous
    res = subprocess.run([sys.executable, "-m", "surgeon", "manifest", str(out), "--exits", "2,4", "--in-place"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    names = [e["name"] for e in json.loads((out / "sorted_manifest.json").read_text())["exits"]]
    assert len(names) == 3
    assert run_cli("manifest", "validate", out).exit_code == 0


def test_kill9_during_heal_write_leaves_no_target(tiny_models, tmp_path):
    """heal streams its merged output through the same atomic executor: killed mid-write, no target."""
    out = tmp_path / "healed"
    data = tmp_path / "t.txt"
    from surgeon.testing import corpus

    data.write_text("\n\n".join(corpus(300, seed=4)))
    args = ["heal", tiny_models["llama"], "--data", data, "--quant", "none", "--steps", 2, "--seq-len", 32,
            "--eval-samples", 2, "--save-every", 0, "-o", out]
    assert _run_killed("tensor", 5, args) == -9
    assert not out.exists()
    res = subprocess.run([sys.executable, "-m", "surgeon", *map(str, args)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert _leftovers(tmp_path, "healed") == [] and Checkpoint.open(out).num_layers == 6
