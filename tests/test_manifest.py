"""The sorted manifest on real (tiny) checkpoints: written by every surgery output, validated, loaded."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import surgeon
from surgeon.commands.output import write_output
from surgeon.errors import UsageError
from surgeon.io.checkpoint import Checkpoint
from surgeon.manifest.check import check_checkpoint
from surgeon.manifest.model import ManifestError
from surgeon.manifest.store import read_header_copy, read_manifest
from surgeon.surgery import plan_extract_depth, plan_layers, plan_prune
from surgeon.testing import load_model, logits, reference_reader, run_cli

IDS = torch.tensor([[1, 17, 42, 99, 7, 250, 3, 64, 12, 5, 301, 77, 8, 19, 200, 33]])

ref = reference_reader()


def _logits(model):
    return logits(model, IDS)


@pytest.fixture(scope="module")
def sorted_llama(tiny_models, tmp_path_factory):
    """A copy of the tiny Llama with prefix exits 2 and 4 and a half-width exit, in one file (the
    header-copy tests below edit it; exit-aligned shards are tests/test_view.py's)."""
    out = tmp_path_factory.mktemp("sorted") / "llama"
    exits = [{"name": "depth-2", "layers": [0, 1]}, {"name": "depth-4", "layers": [0, 1, 2, 3]},
             {"name": "narrow", "layers": [0, 1, 2, 3, 4, 5], "widths": {"ffn": 64, "heads": 2, "kv_heads": 1}}]
    write_output(plan_layers(Checkpoint.open(tiny_models["llama"]), range(6), "manifest"), out, exits=exits,
                 align=False)
    return out


# ------------------------------------------------------------------ every output carries a valid manifest
def test_prune_and_extract_outputs_validate(family_model, tmp_path):
    family, path = family_model
    write_output(plan_prune(Checkpoint.open(path), 1, 2), tmp_path / "pruned")
    write_output(plan_extract_depth(Checkpoint.open(path), 3), tmp_path / "extracted")
    for out, n in ((tmp_path / "pruned", 4), (tmp_path / "extracted", 3)):
        report = check_checkpoint(out, verify=True, loader=surgeon.load)
        assert [e.num_layers for e in report.exits] == [n]
        assert report.exits[0].verified == "exact" and report.header_copy == "copy"
        m, warnings = read_manifest(out)
        assert warnings == []
        assert m["provenance"]["operations"][-1]["operation"] in ("prune", "extract")
        assert ref.read_manifest(str(out / "model.safetensors"))["exits"] == m["exits"]


def test_cli_prune_output_validates(tiny_models, tmp_path):
    res = run_cli("prune", tiny_models["qwen2"], "--start", "1", "--n", "2", "-o", tmp_path / "p")
    assert res.exit_code == 0, res.stderr
    res = run_cli("manifest", "validate", tmp_path / "p", "--verify")
    assert res.exit_code == 0, res.stderr
    assert "valid" in res.stdout


def test_sharded_output_carries_the_copy_in_the_index(tiny_sharded, tmp_path):
    out = tmp_path / "sharded"
    write_output(plan_layers(Checkpoint.open(tiny_sharded), range(6), "manifest"), out, max_shard_bytes=100_000,
            exits=[{"layers": [0, 1, 2]}])
    assert (out / "model.safetensors.index.json").is_file()
    value, where = read_header_copy(out)
    assert where == "model.safetensors.index.json" and [e["name"] for e in value["exits"]] == ["depth-3", "full"]
    report = check_checkpoint(out, verify=True, loader=surgeon.load)
    assert report.header_copy == "copy" and [e.verified for e in report.exits] == ["exact", "exact"]
    m = ref.read_manifest(str(out / "model.safetensors.index.json"))
    assert "weights" not in m and m["exits"] == value["exits"]  # the header copy carries no file hashes
    assert len(ref.read_manifest(str(out))["weights"]["files"]) == len(Checkpoint.open(out).files)


def test_execute_degrades_gracefully(tiny_models, tmp_path, monkeypatch, caplog):
    """A checkpoint v1 cannot describe still gets written (warning, no manifest); a model that cannot
    run still gets a manifest, without verification records."""
    import surgeon.manifest.build as build
    import surgeon.manifest.verify as measure

    def no_run(*a, **k):
        raise RuntimeError("cannot run this model")

    monkeypatch.setattr(measure, "verification_record", no_run)
    write_output(plan_extract_depth(Checkpoint.open(tiny_models["llama"]), 3), tmp_path / "a")
    m, _ = read_manifest(tmp_path / "a")
    assert "verification" not in m["exits"][0] and check_checkpoint(tmp_path / "a").exits[0].num_layers == 3

    def non_uniform(*a, **k):
        raise ManifestError("layer 2 does not hold the same tensors as layer 0")

    monkeypatch.setattr(build, "tensor_inventory", non_uniform)
    write_output(plan_extract_depth(Checkpoint.open(tiny_models["llama"]), 3), tmp_path / "b")
    assert (tmp_path / "b" / "model.safetensors").is_file() and read_manifest(tmp_path / "b") is None
    assert "no sorted manifest written" in caplog.text
    from surgeon.manifest.stamp import stamp

    with pytest.raises(ManifestError):  # `surgeon manifest` itself is strict
        stamp(tmp_path / "b")


# ------------------------------------------------------------------ costs
def test_costs_match_the_loaded_model(sorted_llama):
    m, _ = read_manifest(sorted_llama)
    for e in m["exits"]:
        model = surgeon.load(sorted_llama, e["name"])
        params = {id(p): p.numel() for p in model.parameters()}
        cost = e["cost"]
        assert cost["parameters"]["total"] == sum(params.values())
        layer_params = sum(p.numel() for p in model.model.layers.parameters())
        assert cost["parameters"]["layers"] == layer_params
        cfg = model.config
        assert cost["flops_per_token"] == 2 * (layer_params + cfg.hidden_size * cfg.vocab_size)
        kv = 2 * cfg.num_key_value_heads * cfg.head_dim * 4 * cfg.num_hidden_layers
        assert cost["kv_cache_bytes_per_token"] == kv
    flops = [e["cost"]["flops_per_token"] for e in m["exits"]]
    assert flops == sorted(flops) and m["exits"][-1]["name"] == "full"
    assert m["required_features"] == ["width-prefix"]
    # only the narrowed exit cannot share the full model's KV cache prefix
    assert {e["name"]: e["kv_prefix_compatible"] for e in m["exits"]} == \
        {"depth-2": True, "depth-4": True, "narrow": False, "full": True}


# ------------------------------------------------------------------ loading
def test_load_exit_k_equals_extract_depth_k(family_model, tmp_path):
    family, path = family_model
    for k in (2, 5):
        write_output(plan_extract_depth(Checkpoint.open(path), k), tmp_path / f"d{k}")
        want = _logits(load_model(tmp_path / f"d{k}"))
        got = _logits(surgeon.load(path, exit=k))
        assert torch.equal(got, want), f"{family} depth {k}: max diff {(got - want).abs().max()}"


def test_load_width_exit_equals_extract_width(sorted_llama, tmp_path):
    res = run_cli("extract", sorted_llama, "--ffn", "64", "--heads", "2", "-o", tmp_path / "w")
    assert res.exit_code == 0, res.stderr
    got = _logits(surgeon.load(sorted_llama, exit="narrow"))
    assert torch.equal(got, _logits(load_model(tmp_path / "w")))


def test_load_reads_only_the_exit_tensors(sorted_llama, monkeypatch):
    import importlib

    ex = importlib.import_module("surgeon.surgery.execute")  # the package re-exports a function of that name

    read: list[str] = []
    real = ex.materialize

    def spy(ckpt, op, transform=None):
        read.append(op.src)
        return real(ckpt, op, transform)

    monkeypatch.setattr(ex, "materialize", spy)
    monkeypatch.setattr(Checkpoint, "read_bytes", lambda *a: pytest.fail("load must not read through read_bytes"))
    m = ref.read_manifest(str(sorted_llama))
    surgeon.load(sorted_llama, exit="depth-2")
    assert sorted(read) == sorted(ref.exit_tensors(m, "depth-2"))
    assert not any(".layers.2." in n for n in read)


def test_budget_picks_the_largest_exit_that_fits(sorted_llama):
    m, _ = read_manifest(sorted_llama)
    by = {e["name"]: e["cost"] for e in m["exits"]}
    model = surgeon.load(sorted_llama, max_params=by["depth-4"]["parameters"]["total"])
    assert model.surgeon_exit.name == "depth-4"
    model = surgeon.load(sorted_llama, max_flops=by["depth-2"]["flops_per_token"] + 1)
    assert model.surgeon_exit.name == "depth-2" and model.config.num_hidden_layers == 2
    with pytest.raises(UsageError, match="no exit fits"):
        surgeon.load(sorted_llama, max_params=10)
    with pytest.raises(UsageError, match="no exit named"):
        surgeon.load(sorted_llama, exit="nope")


def test_extract_by_exit_name_and_budget(sorted_llama, tmp_path):
    res = run_cli("extract", sorted_llama, "--exit", "depth-4", "-o", tmp_path / "e4")
    assert res.exit_code == 0, res.stderr
    m, _ = read_manifest(tmp_path / "e4")
    assert [e["name"] for e in m["exits"]] == ["depth-2", "depth-4"]  # the nested prefix exit is kept
    assert torch.equal(_logits(load_model(tmp_path / "e4")), _logits(surgeon.load(sorted_llama, "depth-4")))
    res = run_cli("extract", sorted_llama, "--max-params", "1", "-o", tmp_path / "none")
    assert res.exit_code != 0 and "no exit fits the budget" in res.stderr
    res = run_cli("extract", sorted_llama, "--exit", "depth-2", "--depth", "3", "-o", tmp_path / "x")
    assert res.exit_code == 2


# ------------------------------------------------------------------ the manifest command
def test_manifest_command_measures_quality_against_heldout_loss(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    from surgeon.data import calibration_samples
    from surgeon.eval import heldout_loss

    src = tiny_models["qwen3"]
    res = run_cli("manifest", src, "--exits", "2,4", "--eval-data", "builtin:sotu", "--samples", "4",
                  "--seq-len", "32", "-o", tmp_path / "m")
    assert res.exit_code == 0, res.stderr
    m, _ = read_manifest(tmp_path / "m")
    q = {e["name"]: {x["metric"]: x for x in e["quality"]} for e in m["exits"]}
    data = calibration_samples("builtin:sotu", AutoTokenizer.from_pretrained(src), samples=4, seq_len=32,
                               role="eval", pack=True)
    truth = heldout_loss(load_model(src), data)
    assert q["full"]["loss"]["value"] == pytest.approx(truth.loss, abs=1e-5)
    assert q["full"]["loss"]["tokens"] == truth.tokens and q["full"]["loss"]["split"] == "eval"
    assert q["full"]["kl_full_exit"]["value"] == pytest.approx(0, abs=1e-6)
    assert q["full"]["top1_agreement"]["value"] == 1.0
    assert q["depth-2"]["kl_full_exit"]["value"] > 0
    assert 0 <= q["depth-2"]["top1_agreement"]["value"] < 1
    shallow = heldout_loss(surgeon.load(src, exit=2), data)
    assert q["depth-2"]["loss"]["value"] == pytest.approx(shallow.loss, abs=1e-5)
    assert check_checkpoint(tmp_path / "m", verify=True, loader=surgeon.load).hashes_verified


def test_manifest_in_place_and_stale_detection(tiny_models, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_models["llama"], model)
    res = run_cli("manifest", model, "--in-place", "--exits", "3", "--eval-data", "builtin:sotu", "--samples", "2",
                  "--seq-len", "16")
    assert res.exit_code == 0, res.stderr
    before, _ = read_manifest(model)
    assert run_cli("manifest", model, "--in-place").exit_code == 0  # rewrite: exits and quality kept
    after, _ = read_manifest(model)
    assert [e["quality"] for e in after["exits"]] == [e["quality"] for e in before["exits"]]
    assert len(after["exits"][0]["quality"]) == 4
    report = check_checkpoint(model, verify=True, loader=surgeon.load)  # save_pretrained left no header room: sidecar only
    assert report.header_copy == "absent" and any("no header copy" in w for w in report.warnings)
    assert [e.name for e in report.exits] == ["depth-3", "full"]
    # config.json edited after the manifest -> stale
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(dict(cfg, rms_norm_eps=1e-3)))
    res = run_cli("manifest", "validate", model)
    assert res.exit_code != 0 and "config.json changed" in res.stderr
    (model / "config.json").write_text(json.dumps(cfg))
    assert run_cli("manifest", "validate", model).exit_code == 0


def test_validate_catches_tampering(sorted_llama, tmp_path):
    out = tmp_path / "t"
    shutil.copytree(sorted_llama, out)
    side = out / "sorted_manifest.json"
    good = side.read_text()
    m = json.loads(good)
    m["exits"][0]["quality"] = [{"metric": "loss", "value": 1.0, "data": "x", "split": "eval", "tokens": 1,
                                 "seq_len": 1, "dtype": "float32"}]
    side.write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="header copy .* differs"):
        check_checkpoint(out)
    # a tensor whose shape the manifest misstates
    m = json.loads(good)
    m["base"]["tensors"]["shared"]["model.norm.weight"]["shape"] = [65]
    side.write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="model.norm.weight"):
        check_checkpoint(out)
    # a width exit this checkpoint cannot provide (3 query heads split a KV group of 2)
    m = json.loads(good)
    m["exits"][2 if m["exits"][2].get("widths") else 1]["widths"] = {"ffn": 64, "heads": 3}
    side.write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="cannot provide"):
        check_checkpoint(out)
    # a verification record that the weights do not reproduce
    m = json.loads(good)
    rec = m["exits"][0]["verification"]
    rec["logits_sha256"] = "0" * 64
    rec["argmax"] = [(t + 1) % 512 for t in rec["argmax"]]
    side.write_text(json.dumps(m))
    from surgeon.io.writer import update_header_metadata
    from surgeon.manifest.store import header_value

    update_header_metadata(out / "model.safetensors", {"format": "pt", "sorted_manifest": header_value(m)})
    m["weights"]["files"][0]["sha256"] = __import__("surgeon.provenance", fromlist=["x"]).sha256_file(
        out / "model.safetensors")
    side.write_text(json.dumps(m))
    check_checkpoint(out)  # structure is fine...
    with pytest.raises(ManifestError, match="does not reproduce its verification record"):
        check_checkpoint(out, verify=True, loader=surgeon.load)  # ...the logits are not
    # corrupt weights: size unchanged, hash differs
    side.write_text(good)
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ManifestError):
        check_checkpoint(out, verify=True, loader=surgeon.load)


def test_large_manifest_rides_as_a_pointer(tiny_models, tmp_path):
    import itertools

    subsets = [list(c) for c in itertools.permutations(range(6), 3)][:100]  # any order is a valid exit
    exits = [{"name": f"s{'_'.join(map(str, c))}", "layers": c} for c in subsets]
    out = tmp_path / "big"
    write_output(plan_layers(Checkpoint.open(tiny_models["llama"]), range(6), "manifest"), out, exits=exits,
                 verify=False, align=False)
    value, _ = read_header_copy(out)
    assert "pointer" in value and len((out / "sorted_manifest.json").read_bytes()) > 64 * 1024
    assert check_checkpoint(out).header_copy == "pointer"
    assert len(ref.read_manifest(str(out / "model.safetensors"))["exits"]) == 101


def test_copy_that_does_not_fit_the_header_becomes_a_pointer(tiny_models, tmp_path, monkeypatch):
    import surgeon.manifest.store as store
    from surgeon.manifest.stamp import write_in_place

    monkeypatch.setattr(store, "HEADER_LIMIT", 10**7)  # the copy is "allowed" but cannot fit 66 KiB of room
    exits = [{"name": f"e{i}", "layers": [i % 6, (i + 1) % 6, (i + 2) % 6]} for i in range(90)]
    out = tmp_path / "big"
    # a new output's header is written with the copy in it, whatever its size
    write_output(plan_layers(Checkpoint.open(tiny_models["llama"]), range(6), "manifest"), out, exits=exits,
                 verify=False)
    value, _ = read_header_copy(out)
    assert "pointer" not in value and check_checkpoint(out).header_copy == "copy"
    # re-stamping in place must fit the room the header has: a bigger copy becomes a pointer
    small = tmp_path / "small"
    write_output(plan_layers(Checkpoint.open(tiny_models["llama"]), range(6), "manifest"), small, verify=False)
    write_in_place(small, exits, verify=False)
    value, _ = read_header_copy(small)
    assert "pointer" in value and check_checkpoint(small).header_copy == "pointer"


def test_inspect_shows_the_manifest(sorted_llama):
    res = run_cli("inspect", sorted_llama)
    assert res.exit_code == 0 and "narrow" in res.stdout and "depth-2" in res.stdout


@pytest.mark.slow
def test_smollm2_sharded_exits_load_and_verify(smollm2, tmp_path):
    out = tmp_path / "smol"
    write_output(plan_layers(Checkpoint.open(smollm2), range(30), "manifest"), out, max_shard_bytes=100_000_000,
            exits=[{"layers": list(range(8))}, {"layers": list(range(16))}])
    report = check_checkpoint(out, verify=True, loader=surgeon.load)
    assert [e.name for e in report.exits] == ["depth-8", "depth-16", "full"]
    assert all(e.verified == "exact" for e in report.exits)
    write_output(plan_extract_depth(Checkpoint.open(out), 8), tmp_path / "d8")
    assert torch.equal(_logits(surgeon.load(out, exit="depth-8")), _logits(load_model(tmp_path / "d8")))


def test_cli_declares_width_exits(tiny_models, tmp_path):
    """`--exits 6:ffn=0.5,4:ffn=32:heads=2`: narrowed exits validate (with --verify) and load like extract."""
    import torch

    import surgeon
    from surgeon.exits import parse_exits
    from surgeon.testing import run_cli

    cfg = json.loads((tiny_models["llama"] / "config.json").read_text())
    got = parse_exits("3,6:ffn=0.5,4:ffn=32:heads=2", 6, cfg)
    assert (got[1].layers, got[1].widths) == (list(range(6)), {"ffn": 64})
    assert got[1].to_dict()["name"] == "depth-6-ffn64"
    assert got[2].widths == {"ffn": 32, "heads": 2, "kv_heads": 1}
    with pytest.raises(UsageError, match="KV group"):
        parse_exits("6:heads=3", 6, cfg)
    out = tmp_path / "m"
    r = run_cli("manifest", tiny_models["llama"], "--exits", "3,4:ffn=32:heads=2", "-o", out)
    assert r.exit_code == 0, r.output
    assert run_cli("manifest", "validate", out, "--verify").exit_code == 0
    name = [e["name"] for e in json.loads((out / "sorted_manifest.json").read_text())["exits"] if e.get("widths")][0]
    assert run_cli("extract", out, "--depth", 4, "--ffn", 32, "--heads", 2, "-o", tmp_path / "x").exit_code == 0
    ids = torch.tensor([[1, 5, 9, 22, 7]])
    with torch.no_grad():
        a = surgeon.load(out, exit=name)(ids).logits
        b = surgeon.load(tmp_path / "x")(ids).logits
    assert torch.equal(a, b)


def test_overrides_load_each_prefix_exit_in_stock_transformers(sorted_llama):
    """`manifest show --overrides`: from_pretrained(full checkpoint, **overrides) is that exit, for any runtime."""
    from transformers import AutoModelForCausalLM

    import surgeon
    from surgeon.testing import logits

    r = run_cli("manifest", "show", sorted_llama, "--overrides")
    assert r.exit_code == 0, r.output
    overrides = json.loads(r.stdout)
    assert set(overrides) == {"depth-2", "depth-4", "full"}  # the narrow exit needs sliced tensors: extract it
    assert overrides.pop("full") == {}
    ids = [[5, 9, 2, 44, 17, 3, 80]]
    for name, ov in overrides.items():
        assert ov["num_hidden_layers"] == int(name.split("-")[1])
        stock = AutoModelForCausalLM.from_pretrained(sorted_llama, **ov).eval()
        assert torch.equal(logits(stock, ids), logits(surgeon.load(sorted_llama, name), ids))
    r = run_cli("manifest", "show", sorted_llama, "--exit", "narrow", "--overrides")
    assert r.exit_code == 2 and "surgeon extract" in r.output and "Traceback" not in r.output
    r = run_cli("manifest", "show", sorted_llama, "--exit", "nope")
    assert r.exit_code == 2 and "no exit named 'nope'" in r.output
    shown = json.loads(run_cli("manifest", "show", sorted_llama).stdout)
    assert set(shown["exits"]) == {"depth-2", "depth-4", "narrow", "full"}
