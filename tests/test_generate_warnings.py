"""The generation path of `surgeon demo` (load a budget, extract it, generate; self-speculative decoding
with --compare; confidence early exit) leaks no library warning: neither a Python warning (e.g.
transformers' FutureWarning for a deprecated keyword) nor a transformers logger warning."""

from __future__ import annotations

import logging

import pytest

import surgeon
from surgeon.commands import extract, generate
from surgeon.testing import copy_checkpoint


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def transformers_warnings():
    """Records transformers' logger warnings (its default verbosity here is error; warning_once is reset)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    logging.Logger.warning_once.cache_clear()  # a warning already given once in this process counts again
    handler = _Records()
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)
        hf_logging.set_verbosity(level)


# pyproject's pytest config ignores FutureWarning / DeprecationWarning; this marker overrides it
@pytest.mark.filterwarnings("error")
def test_demo_generation_path_is_warning_free(tiny_models, tmp_path, transformers_warnings):
    import torch

    torch.manual_seed(0)
    model = copy_checkpoint(tiny_models["llama"], tmp_path / "model")
    m = surgeon.load(model, 4)  # the demo's budget step: load one exit, extract it, generate from it
    assert m.config.num_hidden_layers == 4
    del m
    small = tmp_path / "exit-4"
    extract.run(extract.ExtractOptions(model=model, depth=4, output=small))
    runs = {
        "budget-extracted": generate.GenerateOptions(model=small, prompt="the river", chat=True, max_new_tokens=6),
        "budget-exit": generate.GenerateOptions(model=model, prompt="the river", exit="3", max_new_tokens=6),
        "speculative": generate.GenerateOptions(model=model, prompt="the river", chat=True, max_new_tokens=8,
                                                draft_exit="2", compare=True),
        "speculative-vocab": generate.GenerateOptions(model=model, prompt="the river", max_new_tokens=6,
                                                      draft_exit="2", draft_vocab=64, draft_confidence=0.2),
        "early-exit": generate.GenerateOptions(model=model, prompt="the river", max_new_tokens=6,
                                               early_exit="2:0.5,4:0.5"),
        "sampled": generate.GenerateOptions(model=model, prompt="the river", max_new_tokens=6, sample=True,
                                            temperature=0.8, top_p=0.9, seed=1),
    }
    for name, opts in runs.items():
        r = generate.run(opts)
        assert len(r.result.tokens) >= 1, name
        if name == "speculative":
            assert r.matches_baseline, "self-speculative decoding must equal full greedy"
    assert not transformers_warnings, [f"{r.name}: {r.getMessage()}" for r in transformers_warnings]
