"""What a generation returns (the CLI renders it; benchmarks serialize it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class GenerationResult:
    """New tokens and the measurements of one generation.

    ``seconds`` is the wall time of the whole call (prefill included), ``tokens_per_s`` is
    ``len(tokens) / seconds``. Speculative decoding fills ``drafted``/``accepted`` (draft tokens proposed
    by the draft exit / kept by the verifier) and ``verify_steps``; early exit fills ``exit_counts``
    (exit depth -> tokens emitted there), ``exit_depths`` (per token) and ``catchup_positions`` (positions whose skipped layers were
    run later, batched with a deeper token).
    """

    tokens: list[int]
    prompt_tokens: int
    mode: str  # "full", "exit", "speculative", "early-exit", "hf-assisted"
    exit_layers: int  # layers of the model that produced the tokens (the verifier's, for speculative)
    seconds: float
    prefill_seconds: float = 0.0
    text: str | None = None
    draft_exit: int | None = None
    drafted: int = 0
    accepted: int = 0
    verify_steps: int = 0
    exit_counts: dict[int, int] = field(default_factory=dict)
    exit_depths: list[int] = field(default_factory=list)  # early exit: the depth each token left at
    catchup_positions: int = 0

    @property
    def new_tokens(self) -> int:
        return len(self.tokens)

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @property
    def mean_exit_depth(self) -> float | None:
        n = sum(self.exit_counts.values())
        return sum(d * c for d, c in self.exit_counts.items()) / n if n else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["exit_counts"] = {str(k): v for k, v in self.exit_counts.items()}
        d.update(new_tokens=self.new_tokens, tokens_per_s=self.tokens_per_s, acceptance_rate=self.acceptance_rate,
                 mean_exit_depth=self.mean_exit_depth)
        return d
