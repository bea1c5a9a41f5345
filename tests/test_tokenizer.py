"""One tokenizer loader (surgeon.tokenizer): every command that tokenizes text fails the same way, in one
line naming the folder and the fix, on a checkpoint folder without tokenizer files."""

from __future__ import annotations

from pathlib import Path

import pytest

from surgeon.errors import CheckpointError
from surgeon.testing import copy_checkpoint, run_cli, tree_digest
from surgeon.tokenizer import TOKENIZER_FILES, has_tokenizer, load_tokenizer

# every command that needs the checkpoint's tokenizer; {model} lacks one, {out} must not appear
COMMANDS = {
    "analyze": ["analyze", "{model}", "--data", "builtin:sotu", "--samples", "2", "--seq-len", "16", "--out", "{out}"],
    "prune-similarity": ["prune", "{model}", "--n", "2", "--data", "builtin:sotu", "--samples", "2",
                         "--seq-len", "16", "-o", "{out}"],
    "eval": ["eval", "{model}", "--exit", "3", "--data", "builtin:sotu", "--samples", "2", "--seq-len", "16"],
    "sort-width": ["sort-width", "{model}", "--data", "builtin:sotu", "--samples", "2", "--seq-len", "16", "-o", "{out}"],
    "manifest-eval-data": ["manifest", "{model}", "--exits", "3,6", "--eval-data", "builtin:sotu", "-o", "{out}"],
    "heal": ["heal", "{model}", "--data", "builtin:sotu", "--steps", "1", "--quant", "none", "-o", "{out}"],
    "soft": ["soft", "{model}", "--data", "builtin:sotu", "--exits", "3,6", "--steps", "1", "--quant", "none",
             "-o", "{out}"],
    "generate": ["generate", "{model}", "--prompt", "hi", "--max-new-tokens", "2"],
    "generate-draft": ["generate", "{model}", "--prompt", "hi", "--draft-exit", "2", "--max-new-tokens", "2"],
}


def _untokenized(tiny_models, tmp: Path) -> Path:
    model = copy_checkpoint(tiny_models["llama"], tmp / "no tokenizer")
    for p in model.iterdir():
        if p.name in TOKENIZER_FILES or p.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            p.unlink()
    assert not has_tokenizer(model) and (model / "config.json").is_file()
    return model


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_reports_a_missing_tokenizer_the_same_way(command, tiny_models, tmp_path):
    model = _untokenized(tiny_models, tmp_path)
    before = tree_digest(model)
    out = tmp_path / "out"
    args = [str(model) if a == "{model}" else str(out) if a == "{out}" else a for a in COMMANDS[command]]
    r = run_cli(*args)
    assert r.exit_code != 0, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert lines[-1] == (f"error: {model} has no tokenizer (no tokenizer.json, tokenizer.model or "
                         f"tokenizer_config.json): copy the tokenizer files of the model it came from into {model}")
    assert "Traceback" not in r.output
    assert "unexpected" not in r.output and "please report" not in r.output
    assert not out.exists()
    assert tree_digest(model) == before


def test_library_runtime_without_tokenizer(tiny_models, tmp_path):
    """The runtime still serves token ids; text fails with the same error; require_tokenizer fails at once."""
    from surgeon.runtime.sorted_model import SortedModel

    model = _untokenized(tiny_models, tmp_path)
    sm = SortedModel.from_pretrained(model)
    assert sm.tokenizer is None
    assert len(sm.generate([1, 2, 3], max_new_tokens=2).tokens) == 2
    with pytest.raises(CheckpointError, match="has no tokenizer") as e:
        sm.encode("hi")
    with pytest.raises(CheckpointError) as e2:
        SortedModel.from_pretrained(model, require_tokenizer=True)
    assert str(e.value) == str(e2.value)
    with pytest.raises(CheckpointError) as e3:
        load_tokenizer(model)
    assert str(e3.value) == str(e.value) and "\n" not in str(e.value)


def test_broken_tokenizer_files_and_non_checkpoints(tiny_models, tmp_path):
    model = copy_checkpoint(tiny_models["llama"], tmp_path / "m")
    assert load_tokenizer(model)("hello")["input_ids"]
    (model / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"cannot load the tokenizer in .*m: ") as e:
        load_tokenizer(model)
    assert "\n" not in str(e.value)
    # valid JSON the tokenizers library cannot parse: it raises a plain Exception, still one line
    (model / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"}}')
    with pytest.raises(CheckpointError, match=r"cannot load the tokenizer in .*m: "):
        load_tokenizer(model)
    r = run_cli("generate", model, "--prompt", "hi")
    assert r.exit_code != 0 and "cannot load the tokenizer" in r.output and "unexpected" not in r.output
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_tokenizer(tmp_path / "empty")
