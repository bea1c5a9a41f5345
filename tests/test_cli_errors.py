"""Bad input: one line naming the problem and the fix, non-zero exit, no traceback."""

import json
import shutil
import struct

import pytest

from surgeon.testing import run_cli


def _case_missing(tmp, models):
    return tmp / "does-not-exist"


def _case_no_config(tmp, models):
    (tmp / "m").mkdir()
    return tmp / "m"


def _case_truncated_header(tmp, models):
    d = shutil.copytree(models["llama"], tmp / "m")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:100])
    return d


def _case_corrupt_header(tmp, models):
    d = shutil.copytree(models["llama"], tmp / "m")
    data = (d / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    (d / "model.safetensors").write_bytes(data[:8] + b"#" * n + data[8 + n:])
    return d


def _case_missing_shard(tmp, models):
    d = shutil.copytree(models["_sharded"], tmp / "m")
    next(d.glob("model-00002-*.safetensors")).unlink()
    return d


def _case_pickle_only(tmp, models):
    d = tmp / "m"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 2}')
    (d / "pytorch_model.bin").write_bytes(b"not really a pickle")
    return d


def _case_bad_config_json(tmp, models):
    d = shutil.copytree(models["llama"], tmp / "m")
    (d / "config.json").write_text("{not json")
    return d


def _case_gguf_file(tmp, models):
    p = tmp / "x.gguf"
    p.write_bytes(b"GGUF")
    return p


CASES = {
    "missing folder": (_case_missing, "does not exist"),
    "no config.json": (_case_no_config, "no config.json"),
    "truncated safetensors": (_case_truncated_header, "truncated"),
    "corrupt safetensors header": (_case_corrupt_header, "not JSON"),
    "index names a missing shard": (_case_missing_shard, "missing"),
    "pickle-only folder": (_case_pickle_only, "never unpickles"),
    "config.json not JSON": (_case_bad_config_json, "not valid JSON"),
    "gguf given to inspect": (_case_gguf_file, "import-gguf"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_inspect_bad_input(case, tmp_path, tiny_models, tiny_sharded):
    make, expected = CASES[case]
    models = dict(tiny_models, _sharded=tiny_sharded)
    path = make(tmp_path, models)
    res = run_cli("inspect", path)
    assert res.exit_code != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in res.output


def test_import_gguf_bad_input(tmp_path):
    bad = tmp_path / "fake.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 10)
    res = run_cli("import-gguf", bad, "-o", tmp_path / "out")
    assert res.exit_code != 0 and "not a GGUF file" in res.stderr
    assert not (tmp_path / "out").exists()
    res = run_cli("import-gguf", tmp_path / "missing.gguf", "-o", tmp_path / "out")
    assert res.exit_code != 0 and "does not exist" in res.stderr


def test_json_flag_output_is_parseable(tiny_models):
    res = run_cli("inspect", tiny_models["phi3"], "--json")
    assert json.loads(res.stdout)["family"] == "phi3"
