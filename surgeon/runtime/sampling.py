"""Token choice: greedy, or temperature + top-p sampling with a seeded generator."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampler:
    """Turns one row of logits into a token; ``probs`` gives the distribution it samples from."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    generator: torch.Generator | None = None

    @classmethod
    def make(cls, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None):
        g = None
        if do_sample:
            g = torch.Generator()
            g.manual_seed(0 if seed is None else int(seed))
        return cls(do_sample, float(temperature), float(top_p), g)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The (warped) next-token distribution for a [vocab] or [n, vocab] row of logits, in float32."""
        logits = logits.float()
        if not self.do_sample:
            return torch.softmax(logits, dim=-1)
        logits = logits / max(self.temperature, 1e-5)
        if self.top_p < 1.0:
            sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
            cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
            drop = cum - torch.softmax(sorted_logits, dim=-1) >= self.top_p  # keep the smallest set reaching top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
        return torch.softmax(logits, dim=-1)

    def pick(self, logits: torch.Tensor) -> int:
        """Greedy argmax, or one sample from :meth:`probs`, for a [vocab] row."""
        if not self.do_sample:
            return int(torch.argmax(logits, dim=-1))
        return self.sample(self.probs(logits))

    def sample(self, probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=self.generator))
