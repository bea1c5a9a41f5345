"""Every script in examples/ runs as a user runs it (a subprocess), each given a tiny checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTED = {"inspect_model.py", "self_distill_data.py"}


def _run(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "examples" / script), *map(str, args)],
                          capture_output=True, text=True, check=True)


def test_every_example_has_a_test():
    assert {p.name for p in (ROOT / "examples").glob("*.py")} == TESTED


def test_inspect_model_example(tiny_models):
    out = _run("inspect_model.py", tiny_models["gemma3_text"])
    assert "Gemma3ForCausalLM: 6 layers" in out.stdout and "full_attention" in out.stdout


def test_self_distill_data_example_writes_the_models_own_greedy_answers(tiny_models, tmp_path):
    """examples/self_distill_data.py: each record is the chat prompt + exactly what greedy decoding of the
    full model answers (the data that teaches draft exits to agree with the verifier)."""
    from surgeon.runtime import SortedModel

    src = tmp_path / "instr.json"
    src.write_text(json.dumps([{"instruction": f"name the river {i}", "input": "" if i % 2 else "model layer"}
                               for i in range(5)]))
    out = tmp_path / "self.jsonl"
    res = _run("self_distill_data.py", tiny_models["llama"], src, "-o", out, "--start", 1, "--count", 3,
               "--max-new-tokens", 6, "--batch-size", 2)
    assert "wrote 3 records" in res.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["idx"] for r in rows] == [1, 2, 3] and not (tmp_path / "self.jsonl.partial").exists()
    sm = SortedModel.from_pretrained(tiny_models["llama"])
    for r in rows:
        i = r["idx"]
        user = f"name the river {i}" + ("" if i % 2 else "\n\nmodel layer")
        prompt = sm.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                  add_generation_prompt=True)
        assert r["text"].startswith(prompt) and r["text"].endswith(sm.tokenizer.eos_token)
        want = sm.generate(sm.encode(user, chat=True), 6, stop_at_eos=True)
        answer = r["text"][len(prompt): -len(sm.tokenizer.eos_token)]
        assert answer == sm.tokenizer.decode([t for t in want.tokens if t not in sm.eos_ids()])
