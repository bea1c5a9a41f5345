"""Confidence-based early exit (the thesis' "instance-aware dynamic inference", sec. 5.5.3, app. D.0.1).

Exits are prefix depths ``e1 < e2 < ... < L`` with thresholds ``t1..t(m-1)``. Each new token runs the
segments ``[0, e1)``, ``[e1, e2)``, ... in order; after segment ``j`` the shared norm + LM head give the
exit's distribution, and the token is emitted there when its max softmax probability is ``>= tj``
(the full model always emits). A threshold of 1.0 or more never exits, so thresholds of 1.0 reproduce
the full model exactly.

**Skipped layers' KV cache: lazy exact catch-up.** A token that exits at depth ``e`` has no K/V in
layers ``e..L-1``. Instead of approximating them (CALM copies the exit's hidden state upwards and
projects it through the skipped layers' K/V maps, which changes later tokens), we keep the token's
pre-norm residual stream at depth ``e`` and run the skipped layers *later*, only when some later token
needs those layers: when the current token enters segment ``[a, b)``, every earlier position that
stopped at depth ``a`` is run through that segment in the same forward pass as the current token
(resumed from its saved residual stream), which also fills its K/V. Because a token that goes deeper
catches up every earlier position on the way, cached positions per layer always form a prefix (depths
are non-increasing along the sequence), so the KV cache stays append-only, and every K/V entry is
exactly what the full model computes for the emitted tokens: the only approximation is the exited
tokens themselves. The catch-up rows ride along in a forward that runs anyway (a few extra rows in a
batched matmul), which is the cheap part on any hardware; positions that never get caught up (the
tail of a confident run) cost nothing.

The prompt is prefilled with the full model, and the first new token comes from the full model.
Sampling: confidence is measured on the raw softmax; the token is drawn from the sampler's warped
distribution at the exit that fired.
"""

from __future__ import annotations

import time

import torch

from ..errors import UsageError
from ..exits import prefix_depth, resolve_exit
from .result import GenerationResult
from .sampling import Sampler
from .stack import SharedCache, Stack


def early_exit_generate(stack: Stack, input_ids: torch.Tensor, max_new_tokens: int,
                        plan: list[tuple[int, float]], sampler: Sampler, eos: set[int]) -> GenerationResult:
    """Generate with confidence early exit. ``plan``: ``[(depth, threshold), ..., (L, 1.0)]`` sorted by depth."""
    L = stack.num_layers
    depths = [d for d, _ in plan]
    if depths[-1] != L or any(b <= a for a, b in zip(depths, depths[1:])) or depths[0] < 1:
        raise ValueError(f"early-exit depths must increase from >= 1 to {L}: {depths}")
    t0 = time.perf_counter()
    cache = SharedCache()
    n = input_ids.shape[1]
    seq = input_ids[0].tolist()
    logits = stack.forward(input_ids, torch.arange(n).unsqueeze(0), cache, tuple(range(L)), logits_to_keep=1).logits
    x = sampler.pick(logits[0, -1])
    res = GenerationResult([], n, "early-exit", L, 0.0, time.perf_counter() - t0)
    res.exit_counts = {d: 0 for d in depths}
    res.exit_counts[L] += 1
    res.exit_depths.append(L)
    out = [x]
    # positions (ascending, contiguous suffix) whose K/V stop below L: position -> (depth, residual [1, 1, d])
    pending: dict[int, tuple[int, torch.Tensor]] = {}
    while len(out) < max_new_tokens and x not in eos:
        seq.append(x)
        start, hidden_cur = 0, None
        for depth, threshold in plan:
            layers = tuple(range(start, depth))
            keep = depth < L
            if start == 0:
                o = stack.forward(torch.tensor([[x]]), torch.tensor([[n]]), cache, layers, keep_hidden=keep,
                                  logits_to_keep=1)
                rows = [n]
            else:
                rows = [p for p, (d, _) in pending.items() if d == start] + [n]
                if cache.length(start) != rows[0] or rows != list(range(rows[0], n + 1)):
                    raise RuntimeError(f"early-exit cache invariant broken at layer {start}: "
                                       f"{cache.length(start)} cached, catch-up rows {rows}")
                h = torch.cat([pending[p][1] for p in rows[:-1]] + [hidden_cur], dim=1)
                o = stack.forward(torch.tensor([[seq[p] for p in rows]]), torch.tensor([rows]), cache, layers,
                                  start=start, start_hidden=h, keep_hidden=keep, logits_to_keep=1)
                res.catchup_positions += len(rows) - 1
            for i, p in enumerate(rows[:-1]):  # caught-up positions move to this depth
                if keep:
                    pending[p] = (depth, o.hidden[:, i : i + 1])
                else:
                    del pending[p]
            hidden_cur = o.hidden[:, -1:] if keep else None
            row = o.logits[0, -1]
            if depth == L or (threshold < 1.0 and float(torch.softmax(row.float(), -1).max()) >= threshold):
                if keep:
                    pending[n] = (depth, hidden_cur)
                res.exit_counts[depth] += 1
                res.exit_depths.append(depth)
                x = sampler.pick(row)
                break
            start = depth
        out.append(x)
        n += 1
    res.tokens = out[:max_new_tokens]
    if any(t in eos for t in res.tokens):
        res.tokens = res.tokens[: next(i for i, t in enumerate(res.tokens) if t in eos) + 1]
    res.exit_depths = res.exit_depths[: len(res.tokens)]
    res.seconds = time.perf_counter() - t0
    return res


def parse_thresholds(text: str) -> list[float] | dict[str, float]:
    """``'0.9,0.8'`` -> [0.9, 0.8] (one per manifest exit); ``'10:0.9,20:0.8'`` -> {'10': 0.9, '20': 0.8}."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if parts and all(":" in p for p in parts):
            return {k.strip(): float(v) for k, v in (p.split(":", 1) for p in parts)}
        return [float(p) for p in parts]
    except ValueError:
        raise UsageError(f"cannot read early-exit thresholds {text!r}",
                         "give one probability per exit (0.9,0.9) or EXIT:THRESHOLD pairs (10:0.9,20:0.8)") from None


def early_exit_plan(spec: list[float] | dict, num_layers: int, named: dict[str, list[int]]
                    ) -> list[tuple[int, float]]:
    """``[(depth, threshold), ...]`` sorted by depth, ending with ``(num_layers, 1.0)`` (the full model).

    ``spec`` is a list of thresholds for the manifest's prefix exits (shallowest first, the full model
    excluded) or a mapping ``exit -> threshold`` (layer counts or manifest names). Early exit needs
    prefix exits: every exit's layers must be the first layers of the next one.
    """
    if isinstance(spec, str):
        spec = parse_thresholds(spec)
    manifest = [{"name": k, "layers": list(v)} for k, v in named.items()]
    if isinstance(spec, dict):
        pairs = [(tuple(resolve_exit(k, num_layers, manifest).layers), float(v)) for k, v in spec.items()]
    else:
        prefixes = sorted({d for d in (prefix_depth(v) for v in named.values()) if d and d < num_layers})
        if len(spec) != len(prefixes):
            raise UsageError(f"{len(spec)} thresholds for {len(prefixes)} intermediate prefix exits in the manifest",
                             "give one threshold per exit, or EXIT:THRESHOLD pairs such as 10:0.9,20:0.8")
        pairs = [(tuple(range(d)), t) for d, t in zip(prefixes, spec)]
    out: dict[int, float] = {}
    for layers, t in pairs:
        d = prefix_depth(layers)
        if d is None:
            raise UsageError(f"early exit needs prefix exits, but one keeps layers {list(layers)}",
                             "use exits made of the first K layers")
        if not 0.0 <= t <= 1.0:
            raise UsageError(f"threshold {t} is not a probability", "give thresholds in [0, 1]")
        if d < num_layers:
            out[d] = t
    return sorted(out.items()) + [(num_layers, 1.0)]
