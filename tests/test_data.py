"""surgeon.data: specs, records and roles, calibration samples, training examples; held-out loss (surgeon.eval)."""

from __future__ import annotations

import json
import time

import pytest

from surgeon.data import (
    HELDOUT_EVERY,
    IGNORE_INDEX,
    alpaca_prompt,
    calibration_samples,
    iter_records,
    parse_data_spec,
    training_examples,
)
from surgeon.errors import DataError, UsageError


@pytest.fixture(scope="module")
def tok(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models["llama"])


def write_txt(path, docs):
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def docs_of_lengths(lengths):
    """Documents of roughly the given word counts, each distinct."""
    return [" ".join(f"word{i} the model" for _ in range(n)) for i, n in enumerate(lengths)]


# ---------------------------------------------------------------- specs
def test_parse_hub_specs():
    c4 = parse_data_spec("c4")
    assert (c4.kind, c4.name, c4.config) == ("hub", "allenai/c4", "en")
    assert c4.split_for("train") == "train" and c4.split_for("eval") == "validation" and c4.split_for("all") == "validation"
    assert not c4.heldout_by_slice("eval")
    al = parse_data_spec("alpaca")
    assert al.name == "tatsu-lab/alpaca" and al.split_for("eval") == "train" and al.heldout_by_slice("eval")
    hf = parse_data_spec("hf:org/set:cfg@test")
    assert (hf.name, hf.config, hf.split) == ("org/set", "cfg", "test")
    assert hf.split_for("train") == "test"
    plain = parse_data_spec("hf:org/set")
    assert plain.config is None and plain.split_for("train") == "train" and plain.split_for("eval") == "validation"
    assert "allenai/c4" in c4.describe()


@pytest.mark.parametrize("spec, fragment", [
    ("", "empty"), ("nonsense", "unknown data spec"), ("missing/file.txt", "does not exist"),
    ("hf:", "names no dataset"), ("hf:x@", "empty @SPLIT"), ("builtin:nope", "unknown builtin"),
])
def test_parse_bad_specs(spec, fragment):
    with pytest.raises(DataError, match=fragment):
        parse_data_spec(spec)


def test_parse_local_files(tmp_path):
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(DataError, match="format"):
        parse_data_spec(str(tmp_path / "a.csv"))
    with pytest.raises(DataError, match="folder"):
        parse_data_spec(str(tmp_path))
    p = write_txt(tmp_path / "a.txt", ["one"])
    s = parse_data_spec(str(p))
    assert s.format == "txt" and s.sha256 in s.describe()


def test_builtin_sotu_is_real_text():
    s = parse_data_spec("builtin:sotu")
    assert s.path.is_file() and 200_000 < s.path.stat().st_size < 1_000_000
    recs = list(iter_records(s))
    assert len(recs) > 200 and all(len(r["text"]) > 30 for r in recs)
    assert "Congress" in recs[0]["text"]


# ---------------------------------------------------------------- records and roles
def test_txt_documents_and_roles(tmp_path):
    docs = [f"document {i}\nsecond line {i}" for i in range(45)]
    p = tmp_path / "d.txt"
    p.write_text("\n\n \n".join(docs) + "\n\n\n", encoding="utf-8")
    all_ = [r["text"] for r in iter_records(str(p), "all")]
    assert all_ == docs
    ev = [r["text"] for r in iter_records(str(p), "eval")]
    tr = [r["text"] for r in iter_records(str(p), "train")]
    assert ev == [docs[i] for i in range(0, 45, HELDOUT_EVERY)] == [docs[0], docs[20], docs[40]]
    assert set(ev).isdisjoint(tr) and len(ev) + len(tr) == 45
    shuffled = [r["text"] for r in iter_records(str(p), "train", shuffle=True, seed=3)]
    assert sorted(shuffled) == sorted(tr) and shuffled != tr
    assert shuffled == [r["text"] for r in iter_records(str(p), "train", shuffle=True, seed=3)]


def test_single_record_still_has_a_heldout_slice(tmp_path):
    p = write_txt(tmp_path / "one.txt", ["only doc"])
    assert [r["text"] for r in iter_records(str(p), "eval")] == ["only doc"]
    assert list(iter_records(str(p), "train")) == []


def test_jsonl_json_parquet_records(tmp_path):
    rows = [{"text": "plain one"}, {"instruction": "Add", "input": "1 2", "output": "3"}, {"instruction": "Hi", "output": "Hello"}]
    want = [{"text": "plain one"}, {"instruction": "Add", "input": "1 2", "output": "3"},
            {"instruction": "Hi", "input": "", "output": "Hello"}]
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert list(iter_records(str(jl))) == want
    js = tmp_path / "d.json"
    js.write_text(json.dumps(rows[1:]), encoding="utf-8")
    assert list(iter_records(str(js))) == want[1:]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b", "c"]}), tmp_path / "t.parquet")
    assert [r["text"] for r in iter_records(str(tmp_path / "t.parquet"))] == ["a", "b", "c"]
    pq.write_table(pa.table({"instruction": ["i"], "input": [""], "output": ["o"]}), tmp_path / "i.parquet")
    assert list(iter_records(str(tmp_path / "i.parquet"))) == [{"instruction": "i", "input": "", "output": "o"}]


@pytest.mark.parametrize("name, content", [
    ("e.txt", "\n  \n"), ("e.jsonl", ""), ("e.json", "[]"),
])
def test_empty_files(tmp_path, name, content):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(DataError, match="empty"):
        list(iter_records(str(p)))


def test_bad_jsonl_line_is_named(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n\n{"text": broken\n')
    with pytest.raises(DataError, match="line 3 is not valid JSON"):
        list(iter_records(str(p)))
    p.write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(DataError, match="line 2 has neither a text field"):
        list(iter_records(str(p)))


def test_hub_spec_offline_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(DataError, match="builtin:sotu"):
        list(iter_records("c4", "eval"))
    assert time.time() - t0 < 2


def test_hub_probe_fails_fast_when_unreachable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv("SURGEON_HUB_PROBE_TIMEOUT", "2")
    t0 = time.time()
    with pytest.raises(DataError, match="unreachable.*local file"):
        list(iter_records("hf:org/set", "train"))
    assert time.time() - t0 < 5


# ---------------------------------------------------------------- calibration
def test_calibration_truncates_skips_and_keeps_file_order(tmp_path, tok):
    docs = docs_of_lengths([30, 2, 25, 3, 40, 50])
    p = write_txt(tmp_path / "c.txt", docs)
    cs = calibration_samples(str(p), tok, samples=3, seq_len=32)
    lens = [len(tok(d)["input_ids"]) for d in docs]
    usable = [d for d, n in zip(docs, lens) if n >= 32]
    assert len(usable) >= 3
    assert cs.input_ids == [tok(d)["input_ids"][:32] for d in usable[:3]]
    assert cs.num_tokens == 96 and cs.seq_len == 32 and cs.role == "all"
    assert cs.documents_skipped == sum(1 for d, n in zip(docs, lens) if n < 32 and docs.index(d) <= docs.index(usable[2]))
    d = cs.describe()
    assert d["samples"] == 3 and d["num_tokens"] == 96 and "sha256" in d["source"]


def test_calibration_pack_joins_with_eos(tmp_path, tok):
    docs = docs_of_lengths([3, 4, 5, 6, 7, 8])
    p = write_txt(tmp_path / "p.txt", docs)
    stream = []
    for d in docs:
        stream += tok(d)["input_ids"] + [tok.eos_token_id]
    cs = calibration_samples(str(p), tok, samples=100, seq_len=16, pack=True)
    assert cs.input_ids == [stream[i:i + 16] for i in range(0, len(stream) - 15, 16)]
    assert tok.eos_token_id in sum(cs.input_ids, [])


def test_calibration_shuffle_is_seeded(tmp_path, tok):
    docs = docs_of_lengths([10] * 30)
    p = write_txt(tmp_path / "s.txt", docs)
    a = calibration_samples(str(p), tok, samples=10, seq_len=8, shuffle=True, seed=1)
    b = calibration_samples(str(p), tok, samples=10, seq_len=8, shuffle=True, seed=1)
    c = calibration_samples(str(p), tok, samples=10, seq_len=8)
    assert a.input_ids == b.input_ids and a.input_ids != c.input_ids


def test_calibration_errors(tmp_path, tok):
    p = write_txt(tmp_path / "short.txt", ["tiny doc", "another tiny"])
    with pytest.raises(UsageError, match="--samples 0"):
        calibration_samples(str(p), tok, samples=0)
    with pytest.raises(DataError, match="all 2 are shorter than --seq-len 1024.*--pack"):
        calibration_samples(str(p), tok, samples=4)
    with pytest.raises(DataError, match="fewer than --seq-len"):
        calibration_samples(str(p), tok, samples=4, pack=True)


def test_calibration_instruction_records_use_template(tmp_path, tok):
    p = tmp_path / "a.json"
    rec = {"instruction": "Name the river", "input": "", "output": "The river is long " * 20}
    p.write_text(json.dumps([rec]))
    cs = calibration_samples(str(p), tok, samples=1, seq_len=20)
    assert cs.input_ids[0] == tok(alpaca_prompt(rec) + rec["output"])["input_ids"][:20]


# ---------------------------------------------------------------- training examples
def test_training_examples_pack_plain_text_without_heldout(tmp_path, tok):
    docs = docs_of_lengths([5 + i % 7 for i in range(41)])
    p = write_txt(tmp_path / "t.txt", docs)
    exs = list(training_examples(str(p), tok, seq_len=16))
    stream = []
    for i, d in enumerate(docs):
        if i % HELDOUT_EVERY:
            stream += tok(d)["input_ids"] + [tok.eos_token_id]
    assert [e["input_ids"] for e in exs] == [stream[i:i + 16] for i in range(0, len(stream) - 15, 16)]
    assert all(e["labels"] == e["input_ids"] for e in exs)
    assert len(list(training_examples(str(p), tok, seq_len=16, max_examples=2))) == 2


def test_training_examples_instruction_masks_prompt(tmp_path, tok):
    rows = [{"instruction": f"Task {i}", "input": "the input" if i % 2 else "", "output": f"answer {i}"} for i in range(25)]
    p = tmp_path / "a.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    exs = list(training_examples(str(p), tok, seq_len=512))
    assert len(exs) == 25 - 2  # records 0 and 20 are held out
    r = rows[1]
    prompt = alpaca_prompt(r)
    assert prompt.startswith("Below is an instruction that describes a task, paired with an input")
    assert "### Input:\nthe input" in prompt and alpaca_prompt(rows[2]).count("### Input") == 0
    e = exs[0]
    n_prompt = len(tok(prompt)["input_ids"])
    assert e["input_ids"] == tok(prompt + r["output"])["input_ids"] + [tok.eos_token_id]
    assert e["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert e["labels"][n_prompt:] == e["input_ids"][n_prompt:] and e["labels"][-1] == tok.eos_token_id


# ---------------------------------------------------------------- held-out loss
def test_heldout_loss_matches_per_sequence_reference(tiny_models):
    import torch
    from transformers import AutoModelForCausalLM

    from surgeon.eval import heldout_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (9, 17, 4, 12, 17)]
    examples = [{"input_ids": s, "labels": [IGNORE_INDEX] * 2 + s[2:]} for s in seqs]
    nll, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            logits = model(torch.tensor([e["input_ids"]])).logits[0, :-1]
            tg = torch.tensor(e["labels"][1:])
            keep = tg != IGNORE_INDEX
            nll += float(torch.nn.functional.cross_entropy(logits[keep], tg[keep], reduction="sum"))
            count += int(keep.sum())
    r = heldout_loss(model, examples, batch_size=2, chunk_tokens=5)
    assert r.tokens == count and r.sequences == 5
    assert r.loss == pytest.approx(nll / count, rel=1e-5)
    assert r.perplexity == pytest.approx(torch.exp(torch.tensor(nll / count)).item(), rel=1e-5)
    plain = heldout_loss(model, seqs, batch_size=3)
    assert plain.tokens == sum(len(s) - 1 for s in seqs)
