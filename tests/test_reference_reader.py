"""formats/sorted-manifest: golden files, the invalid table, the schema, and fuzzing of both readers."""

from __future__ import annotations

import copy
import json
import struct
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surgeon.manifest.check import parse_manifest_bytes
from surgeon.manifest.model import ManifestError
from surgeon.manifest.store import dumps
from surgeon.manifest.validate import validate_manifest
from surgeon.testing import reference_reader, run_cli

FORMAT_DIR = Path(__file__).resolve().parents[1] / "formats" / "sorted-manifest"
EXAMPLES = sorted((FORMAT_DIR / "examples").glob("*.json"))
CASES = json.loads((FORMAT_DIR / "invalid" / "cases.json").read_text())["cases"]


ref = reference_reader()


def _pointer(doc, pointer: str):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")]
    for p in parts[:-1]:
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    return doc, (int(parts[-1]) if isinstance(doc, list) else parts[-1])


def case_bytes(case: dict) -> bytes:
    """The bytes of one invalid case (see invalid/cases.json)."""
    if "raw" in case:
        return case["raw"].encode("utf-8")
    if "raw_hex" in case:
        return bytes.fromhex(case["raw_hex"])
    doc = json.loads((FORMAT_DIR / "examples" / case["base"]).read_text())
    for ptr, value in case.get("set", {}).items():
        parent, key = _pointer(doc, ptr)
        parent[key] = copy.deepcopy(value)
    for ptr in case.get("delete", []):
        parent, key = _pointer(doc, ptr)
        del parent[key]
    return dumps(doc).encode("utf-8")


def _ref_bytes(raw: bytes, header_copy: bool = False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ref.validate(ref._parse(raw, "manifest"), header_copy=header_copy)


# ------------------------------------------------------------------ golden files
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_golden_round_trip_byte_for_byte(path):
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    header = path.name.endswith(".header.json")
    assert validate_manifest(data, header_copy=header) == []
    again, _ = parse_manifest_bytes(text.encode(), path.name, header_copy=header)  # what the library reads
    assert dumps(again) == text
    assert _ref_bytes(text.encode(), header_copy=header) == data


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_golden_files_match_the_schema(path):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((FORMAT_DIR / "schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(json.loads(path.read_text()))


def test_header_example_is_the_sidecar_without_weights():
    side = json.loads((FORMAT_DIR / "examples" / "depth-exits.json").read_text())
    head = json.loads((FORMAT_DIR / "examples" / "depth-exits.header.json").read_text())
    assert head == {k: v for k, v in side.items() if k != "weights"}
    with pytest.raises(ManifestError, match="weights"):
        validate_manifest(head)  # a sidecar must carry weights


# ------------------------------------------------------------------ the invalid table
@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_invalid_case_rejected_by_both_readers(case, tmp_path):
    assert case["why"], "every invalid case says why it is invalid"
    raw = case_bytes(case)
    with pytest.raises(ManifestError, match=case["match"]):
        parse_manifest_bytes(raw)
    with pytest.raises(ref.ManifestError, match=case["match"]):
        _ref_bytes(raw)
    # and through the CLI: one line, non-zero exit
    (tmp_path / "sorted_manifest.json").write_bytes(raw)
    res = run_cli("manifest", "validate", tmp_path)
    assert res.exit_code != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert __import__("re").search(case["match"], lines[0]), lines[0]


def test_unknown_keys_warn_not_fail():
    data = json.loads((FORMAT_DIR / "examples" / "pruned-full-only.json").read_text())
    data["future_key"] = {"x": 1}
    data["exits"][0]["future_exit_key"] = 3
    warns = validate_manifest(data)
    assert any("future_key" in w for w in warns) and any("future_exit_key" in w for w in warns)
    with pytest.warns(UserWarning, match="future_key"):
        ref.validate(data)
    # kept through a round trip (read as the library reads it, written as it writes it)
    again, _ = parse_manifest_bytes(dumps(data).encode())
    assert again["future_key"] == {"x": 1} and dumps(again) == dumps(data)


# ------------------------------------------------------------------ fuzzing
def _readers_agree(raw: bytes) -> None:
    """The library reader and the reference reader make the same call on ``raw``: both reject it (with
    their own ManifestError, nothing else escapes), or both accept it and read the same exits."""
    outcomes = []
    for fn, err in ((lambda r: parse_manifest_bytes(r)[0], ManifestError), (_ref_bytes, ref.ManifestError)):
        try:
            m = fn(raw)
        except err:
            outcomes.append("rejected")
        else:
            outcomes.append([(e["name"], e["layers"], e.get("widths")) for e in m["exits"]])
    assert outcomes[0] == outcomes[1], f"library: {outcomes[0]!r}; reference: {outcomes[1]!r}"


GOLDEN = (FORMAT_DIR / "examples" / "depth-exits.json").read_bytes()
SIDECARS = [p.read_bytes() for p in EXAMPLES if not p.name.endswith(".header.json")]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(raw):
    _readers_agree(raw)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(GOLDEN) - 1), st.binary(max_size=4))
def test_fuzz_truncated_and_spliced_golden(cut, junk):
    _readers_agree(GOLDEN[:cut])
    _readers_agree(GOLDEN[:cut] + junk + GOLDEN[cut:])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_replace_a_subtree(data):
    """Any value anywhere in a valid manifest replaced by random JSON: both readers reject it, or both
    accept it and read the same exits."""
    doc = json.loads(data.draw(st.sampled_from(SIDECARS)))
    node, path = doc, []
    for _ in range(data.draw(st.integers(1, 6))):
        keys = list(range(len(node))) if isinstance(node, list) else list(node) if isinstance(node, dict) else []
        if not keys:
            break
        k = data.draw(st.sampled_from(keys))
        path.append(k)
        if not isinstance(node[k], (dict, list)):
            break
        node = node[k]
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = data.draw(json_values)
    _readers_agree(json.dumps(doc).encode())


@pytest.mark.parametrize("depth", [50, 5000, 200000])
def test_deep_json_is_a_clean_error(depth):
    raw = b"[" * depth + b"]" * depth
    _readers_agree(raw)
    nested = b'{"format":"sorted-manifest","format_version":1,"x":' + b"[" * depth + b"]" * depth + b"}"
    _readers_agree(nested)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64), st.integers(0, 2**64 - 1))
def test_fuzz_safetensors_header_with_manifest(tmp_path, body, declared):
    """Reading the header copy from a broken weight file: ManifestError / CheckpointError, no crash."""
    from surgeon.errors import SurgeonError
    from surgeon.manifest.check import check_checkpoint

    p = tmp_path / "model.safetensors"
    p.write_bytes(struct.pack("<Q", declared) + body)
    outcomes = []
    for fn, err in ((lambda: ref.read_manifest(str(p)), ref.ManifestError), (lambda: check_checkpoint(p), SurgeonError)):
        try:
            fn()
            outcomes.append("accepted")
        except err:
            outcomes.append("rejected")
    assert outcomes[0] == outcomes[1], outcomes


def test_reader_finds_header_copy_and_pointer(tmp_path):
    """A weight file whose header carries the copy; a pointer is followed and checked against the sidecar."""
    from surgeon.io.writer import OutTensor, encode_header

    m = json.loads((FORMAT_DIR / "examples" / "depth-exits.header.json").read_text())
    compact = ref.header_text(m)
    t = [OutTensor("x", "F32", (1,), 4)]
    p = tmp_path / "model.safetensors"
    p.write_bytes(encode_header(t, {"format": "pt", "sorted_manifest": compact}) + b"\0" * 4)
    assert ref.read_manifest(str(p))["exits"][0]["name"] == "depth-1"
    assert [e.name for e in __import__("surgeon.manifest.check", fromlist=["x"]).check_checkpoint(p).exits][-1] == "full"
    # pointer form: the sidecar must hash to the pointer's sha256
    import hashlib

    side = json.loads((FORMAT_DIR / "examples" / "depth-exits.json").read_text())
    ptr = {"format": "sorted-manifest", "format_version": 1, "pointer": "sorted_manifest.json",
           "sha256": hashlib.sha256(ref.header_text(side).encode()).hexdigest()}
    p.write_bytes(encode_header(t, {"format": "pt", "sorted_manifest": json.dumps(ptr)}) + b"\0" * 4)
    with pytest.raises(ref.ManifestError, match="missing"):
        ref.read_manifest(str(p))
    (tmp_path / "sorted_manifest.json").write_text(dumps(side))
    assert ref.read_manifest(str(p))["weights"] == side["weights"]
    side["exits"][0]["quality"] = []
    (tmp_path / "sorted_manifest.json").write_text(dumps(side))
    with pytest.raises(ref.ManifestError, match="stale"):
        ref.read_manifest(str(p))
