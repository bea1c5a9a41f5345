"""``surgeon generate``: text from one exit, self-speculative decoding or confidence early exit,
through the reference runtime (:class:`surgeon.runtime.SortedModel`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..options import ComputeOptions, DeviceMapOptions, opt, with_default
from ..runtime.result import GenerationResult


@dataclass(frozen=True, kw_only=True)
class GenerateOptions(ComputeOptions, DeviceMapOptions):
    model: Path = opt(help="Checkpoint folder.", cli=False)
    prompt: str | None = opt(None, "Prompt text.")
    exit: str | None = opt(None, "Generate with this sub-model: a layer count K (layers 0..K-1) or a manifest exit name.",
                           metavar="NAME|K")
    draft_exit: str | None = opt(None, "Self-speculative decoding: draft with the first K layers, verify with the full "
                                       "model (same output as full greedy).", metavar="K|NAME")
    early_exit: str | None = opt(None, "Confidence early exit: one threshold per manifest prefix exit (0.9,0.9,...) or "
                                       "K:THRESHOLD pairs (8:0.9,16:0.8).", metavar="THRESHOLDS")
    draft_vocab: int = opt(0, "With --draft-exit: draft over the N most frequent tokens only (a smaller LM head "
                              "per drafted token; the output is unchanged). 0: the full vocabulary.", metavar="N")
    draft_vocab_data: str | None = opt(None, "Rank the draft vocabulary by token frequency in this data (same forms as "
                                             "soft --data; e.g. the exits' training data). Default: id order.",
                                       metavar="DATA")
    draft_confidence: float = opt(0.0, "With --draft-exit: end a draft after a token whose draft probability is "
                                       "below this (0: always draft the adaptive length).", metavar="P")
    max_new_tokens: int = opt(64, "Most tokens to generate.")
    sample: bool = opt(False, "Sample instead of greedy decoding.")
    temperature: float = opt(1.0, "Sampling temperature (with --sample).")
    top_p: float = opt(1.0, "Nucleus sampling mass (with --sample).")
    seed: int = opt(0, "Sampling seed (with --sample).")
    chat: bool = opt(False, "Wrap the prompt in the tokenizer's chat template.")
    compute_dtype: str | None = with_default(ComputeOptions, "compute_dtype", None,
                                             "Load and run the model in this dtype (default: as stored).")
    kernels: str = opt("stock", "CPU kernels for the linear layers: stock (PyTorch's) or onednn (prepacked weights: "
                                "faster decoding and near-free verification of drafts; the linear layers' memory "
                                "doubles).", choices=("stock", "onednn"))
    backend: str = opt("surgeon", "surgeon (this runtime) or hf (transformers' generate; --draft-exit maps to "
                                  "assistant_early_exit).", choices=("surgeon", "hf"))
    compare: bool = opt(False, "Also run plain full-model decoding and report the speed-up and whether outputs match.")

    def __post_init__(self):
        if not self.prompt:
            raise UsageError("--prompt is required", "give the text to continue, e.g. --prompt 'Once upon a time'")
        if sum(x is not None for x in (self.exit, self.draft_exit, self.early_exit)) > 1:
            raise UsageError("--exit, --draft-exit and --early-exit are different decoding modes", "give at most one")
        if self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens {self.max_new_tokens} < 1", "ask for at least one token")
        if self.sample and (self.temperature <= 0 or not 0 < self.top_p <= 1):
            raise UsageError("--temperature must be > 0 and --top-p in (0, 1]", "fix the sampling options")
        if (self.draft_vocab or self.draft_vocab_data or self.draft_confidence) and self.draft_exit is None:
            raise UsageError("--draft-vocab, --draft-vocab-data and --draft-confidence shape speculative drafts",
                             "add --draft-exit K")
        if self.draft_vocab < 0:
            raise UsageError(f"--draft-vocab {self.draft_vocab} < 0", "give a token count, or 0 for the full vocabulary")
        if self.draft_vocab_data and not self.draft_vocab:
            raise UsageError("--draft-vocab-data ranks the tokens of --draft-vocab", "add --draft-vocab N")
        if not 0.0 <= self.draft_confidence < 1.0:
            raise UsageError(f"--draft-confidence {self.draft_confidence} is outside [0, 1)", "give e.g. 0.3")
        if self.backend == "hf" and (self.draft_vocab or self.draft_confidence):
            raise UsageError("--backend hf has no --draft-vocab / --draft-confidence", "use --backend surgeon")
        if self.backend == "hf" and (self.exit is not None or self.early_exit is not None):
            raise UsageError("--backend hf supports the full model and --draft-exit only", "use --backend surgeon")
        self.check_placement()


@dataclass
class GenerateReport:
    model: str
    prompt: str
    result: GenerationResult
    baseline: GenerationResult | None = None  # plain full-model decoding (--compare)

    @property
    def speedup(self) -> float | None:
        if self.baseline is None or not self.baseline.tokens_per_s:
            return None
        return self.result.tokens_per_s / self.baseline.tokens_per_s

    @property
    def matches_baseline(self) -> bool | None:
        return None if self.baseline is None else self.result.tokens == self.baseline.tokens

    def to_dict(self) -> dict:
        return {"model": self.model, "prompt": self.prompt, "result": self.result.to_dict(),
                "baseline": self.baseline.to_dict() if self.baseline else None, "speedup": self.speedup,
                "matches_baseline": self.matches_baseline}


def run(opts: GenerateOptions) -> GenerateReport:
    """Load ``opts.model`` once and generate as the options say (plus the full-model baseline with --compare)."""
    from ..runtime.sorted_model import SortedModel

    sm = SortedModel.from_pretrained(opts.model, dtype=opts.compute_dtype, kernels=opts.kernels, device=opts.device,
                                     device_map=opts.device_map, max_memory=opts.max_memory, require_tokenizer=True)
    ids = sm.encode(opts.prompt, chat=opts.chat)
    kw = dict(max_new_tokens=opts.max_new_tokens, do_sample=opts.sample, temperature=opts.temperature,
              top_p=opts.top_p, seed=opts.seed)
    mode = dict(exit=opts.exit, draft_exit=opts.draft_exit, early_exit=opts.early_exit, backend=opts.backend)
    if opts.draft_vocab:
        mode["draft_vocab"] = sm.draft_head(opts.draft_vocab, draft_texts(opts.draft_vocab_data))
    if opts.draft_confidence:
        mode["draft_confidence"] = opts.draft_confidence
    if opts.compare:  # warm both paths up so neither timing carries first-call costs
        sm.generate(ids, **dict(kw, max_new_tokens=2))
        sm.generate(ids, **mode, **dict(kw, max_new_tokens=2))
    r = sm.generate(ids, **mode, **kw)
    base = sm.generate(ids, **kw) if opts.compare else None
    return GenerateReport(str(opts.model), opts.prompt, r, base)


def draft_texts(spec: str | None, max_chars: int = 4_000_000) -> list[str] | None:
    """Texts of a data spec (its training role) for ranking the draft vocabulary; the first ``max_chars``."""
    if not spec:
        return None
    from ..data.records import iter_records
    from ..data.templates import record_text

    texts, total = [], 0
    for rec in iter_records(spec, "train"):
        t = record_text(rec)
        texts.append(t)
        total += len(t)
        if total >= max_chars:
            break
    return texts
