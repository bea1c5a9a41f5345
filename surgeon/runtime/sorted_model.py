"""``SortedModel``: every exit of one checkpoint served from one stock transformers model.

An exit is a list of kept layers + the shared final norm and LM head (a prefix ``K`` = layers 0..K-1,
or a named exit from ``sorted_manifest.json``). Exits share the loaded weights (no copy) and, within
a generation, one KV cache (see :mod:`surgeon.runtime.stack`)::

    sm = SortedModel.from_pretrained("sorted/")
    r = sm.generate("The river", max_new_tokens=32, exit=12)          # budget generation
    r = sm.generate("The river", max_new_tokens=32, draft_exit=8)     # self-speculative, == full greedy
    r = sm.generate("The river", max_new_tokens=32, draft_exit=8, draft_vocab=16384, draft_confidence=0.3)
    r = sm.generate("The river", max_new_tokens=32, early_exit={8: 0.9, 16: 0.8})
    logits = sm.exit_logits(ids, exit=12)                              # [batch, seq, vocab]
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..exits import prefix_depth, resolve_exit
from .early_exit import early_exit_plan
from .result import GenerationResult

log = logging.getLogger(__name__)


class SortedModel:
    """One loaded causal LM plus its exits. Batch size 1 for generation."""

    def __init__(self, model: Any, tokenizer: Any = None, exits: dict[str, Any] | None = None,
                 path: Path | None = None):
        from .stack import Stack

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.path = path
        self.stack = Stack(model)
        self.num_layers = self.stack.num_layers
        self.exits = {k: tuple(v) for k, v in (exits or {}).items()}
        self._draft_heads: dict[int, Any] = {}  # id-order draft heads by size

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str | Any | None = None, device: Any = "cpu",
                        kernels: str = "stock", device_map: str | None = None,
                        max_memory: str | None = None, require_tokenizer: bool = False) -> SortedModel:
        """Load ``path`` (a Hugging Face checkpoint folder, or a hub model ID ``org/name[@REV]``) once; ``dtype``: bf16/fp16/fp32 or a torch dtype
        (default: as stored). ``device``: a device or ``--device`` spelling (``auto``, ``cuda:1``, ...);
        ``device_map="auto"`` (+ ``max_memory``) spreads the layers over several devices.

        ``kernels="onednn"`` runs the linear layers through oneDNN with prepacked weights on CPU
        (:mod:`surgeon.runtime.kernels`: faster decoding, near-free multi-token verification, twice the
        linear layers' memory).

        The tokenizer comes from :func:`surgeon.tokenizer.load_tokenizer`; a folder without one serves token
        ids only (:meth:`encode` then raises), unless ``require_tokenizer`` makes that an error at once.
        """
        from ..devices import load_causal_lm, resolve_device
        from .kernels import KERNELS

        if kernels not in KERNELS:
            raise UsageError(f"unknown kernels {kernels!r}", f"give one of {', '.join(KERNELS)}")
        cpu_only = kernels != "stock"
        if cpu_only and (device_map or str(device) not in ("cpu", "auto")):
            raise UsageError(f"kernels {kernels!r} are CPU kernels", "use --kernels stock on an accelerator")
        device = resolve_device("cpu" if cpu_only else device) if isinstance(device, str) else device
        from ..io.checkpoint import Checkpoint
        from ..manifest.resolve import full_width_exits
        from ..tokenizer import load_tokenizer

        path = Path(path)
        ckpt = Checkpoint.open(path)  # clear errors for a missing config / weights
        exits = full_width_exits(ckpt)  # before the weights: a manifest that fails validation is an error
        # before the weights, so a missing tokenizer fails fast; without one the model serves token ids
        tok = load_tokenizer(path, required=require_tokenizer)
        if tok is None:
            log.info("no tokenizer in %s; token ids only", path)
        model = load_causal_lm(path, device=device, dtype=dtype or "auto", device_map=device_map,
                               max_memory=max_memory)
        if kernels == "onednn":
            from .kernels import pack_linears

            pack_linears(model)
        return cls(model, tok, exits, path)

    # -- exits -------------------------------------------------------------------------------------
    def layers_of(self, exit: int | str | None) -> tuple[int, ...]:
        """Kept layers of ``exit``: None = full, K = layers 0..K-1, or a manifest exit name."""
        if exit is None:
            return tuple(range(self.num_layers))
        named = [{"name": k, "layers": list(v)} for k, v in self.exits.items()]
        narrowed = isinstance(exit, str) and ":" in exit
        config = self.model.config.get_text_config().to_dict() if narrowed else None
        choice = resolve_exit(exit, self.num_layers, named, config=config, where=str(self.path or "the model"))
        if choice.widths:
            raise UsageError(f"exit {exit!r} narrows widths, which the shared weights cannot serve",
                             f"extract it (surgeon extract MODEL --exit {exit} -o DIR) and run that")
        return tuple(choice.layers)

    def exit_logits(self, input_ids: Any, exit: int | str | None = None) -> Any:
        """Logits of the sub-model ``exit`` for every position of ``input_ids`` ([batch, seq], no padding)."""
        import torch

        from .stack import SharedCache

        ids = torch.as_tensor(input_ids, device=self.model.device)
        ids = ids.unsqueeze(0) if ids.dim() == 1 else ids
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0).expand(ids.shape[0], -1)
        return self.stack.forward(ids, pos, SharedCache(), self.layers_of(exit)).logits

    def as_exit(self, exit: int | str | None):
        """Context manager: inside it, ``self.model`` (forward, generate) is the sub-model ``exit``.

        Weights are shared; the swap is undone on exit. Not thread-safe (it edits the loaded model).
        """
        return self.stack.using(self.layers_of(exit))

    def draft_head(self, n: int, texts: Any = None) -> Any:
        """A draft head over the ``n`` most frequent tokens of ``texts`` (then id order) plus the special tokens.

        Ranked by id order alone (no ``texts``) it is built once per ``n``; ranked by ``texts`` it is built
        anew, so keep the returned head and pass it as ``draft_vocab``. See :mod:`surgeon.runtime.draft`.
        """
        from .draft import DraftHead

        if texts is None and int(n) in self._draft_heads:
            return self._draft_heads[int(n)]
        keep = set(self.eos_ids()) | set(getattr(self.tokenizer, "all_special_ids", None) or [])
        head = DraftHead.top(self.model, int(n), self.tokenizer, texts, keep)
        if texts is None:
            self._draft_heads[int(n)] = head
        return head

    # -- text --------------------------------------------------------------------------------------
    def encode(self, prompt: str, chat: bool = False) -> list[int]:
        """Token ids of ``prompt`` (through the chat template with ``chat=True``)."""
        if self.tokenizer is None:
            if self.path is not None:
                from ..tokenizer import missing_tokenizer

                raise missing_tokenizer(self.path)
            raise UsageError("this model has no tokenizer", "pass token ids instead of text")
        if chat:
            if not getattr(self.tokenizer, "chat_template", None):
                raise UsageError("the tokenizer has no chat template", "drop --chat")
            out = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                     add_generation_prompt=True, tokenize=True)
            ids = out["input_ids"] if hasattr(out, "keys") else out
            return list(ids)
        return list(self.tokenizer(prompt)["input_ids"])

    def eos_ids(self) -> set[int]:
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None and self.tokenizer is not None:
            eos = self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    # -- generation --------------------------------------------------------------------------------
    def generate(self, input_ids: Any, max_new_tokens: int = 64, exit: int | str | None = None,
                 draft_exit: int | str | None = None, early_exit: list[float] | dict | str | None = None,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                 backend: str = "surgeon", stop_at_eos: bool = True, draft_vocab: int | Any = None,
                 draft_confidence: float = 0.0) -> GenerationResult:
        """Generate up to ``max_new_tokens`` after ``input_ids`` (ids, a [1, n] tensor, or text).

        One of: ``exit`` (a sub-model), ``draft_exit`` (self-speculative decoding, the full model's
        output), ``early_exit`` (thresholds: a list for the manifest's prefix exits, or
        ``{exit: threshold}``), or none (the full model). ``backend="hf"`` runs transformers'
        ``generate`` instead (``assistant_early_exit=draft_exit`` for speculative), for comparison.
        With ``draft_exit``: ``draft_vocab`` (a size, or a :meth:`draft_head`) drafts over the most frequent
        tokens only, ``draft_confidence`` ends a draft after a token the draft is less sure of; neither
        changes the output.
        """
        import torch

        from .early_exit import early_exit_generate
        from .sampling import Sampler
        from .speculative import speculative_generate

        if sum(x is not None for x in (exit, draft_exit, early_exit)) > 1:
            raise UsageError("exit, draft_exit and early_exit are different decoding modes", "give at most one")
        if (draft_vocab or draft_confidence) and draft_exit is None:
            raise UsageError("draft_vocab and draft_confidence shape self-speculative drafts", "give draft_exit too")
        if not 0.0 <= draft_confidence < 1.0:
            raise UsageError(f"draft confidence {draft_confidence} is outside [0, 1)", "give e.g. 0.3, or 0 to draft fully")
        if max_new_tokens < 1:
            raise UsageError(f"max_new_tokens {max_new_tokens} < 1", "ask for at least one token")
        if do_sample and (temperature <= 0 or not 0 < top_p <= 1):
            raise UsageError("sampling needs temperature > 0 and top_p in (0, 1]", "fix --temperature / --top-p")
        text = None
        if isinstance(input_ids, str):
            text, input_ids = input_ids, self.encode(input_ids)
        ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.model.device).reshape(1, -1)
        if ids.shape[1] == 0:
            raise UsageError("empty prompt", "give at least one token")
        sampler = Sampler.make(do_sample, temperature, top_p, seed)
        eos = self.eos_ids() if stop_at_eos else set()
        if backend == "hf":
            if exit is not None or early_exit is not None:
                raise UsageError("backend hf runs the full model or --draft-exit only", "use the surgeon backend")
            res = self._generate_hf(ids, max_new_tokens, draft_exit, do_sample, temperature, top_p, seed)
        elif backend != "surgeon":
            raise UsageError(f"unknown backend {backend!r}", "give surgeon or hf")
        elif draft_exit is not None:
            k = prefix_depth(self.layers_of(draft_exit))
            if k is None:
                raise UsageError(f"draft exit {draft_exit!r} is not a prefix of layers",
                                 "self-speculative decoding reuses the draft's KV cache, so it needs layers 0..K-1")
            if k >= self.num_layers:
                raise UsageError(f"draft exit {draft_exit!r} is the full model", f"give K < {self.num_layers}")
            head = (self.draft_head(draft_vocab) if draft_vocab else None) if isinstance(draft_vocab, int) else draft_vocab
            res = speculative_generate(self.stack, ids, max_new_tokens, k, sampler, eos, draft_head=head,
                                       confidence=draft_confidence)
        elif early_exit is not None:
            plan = early_exit_plan(early_exit, self.num_layers, self.exits)
            res = early_exit_generate(self.stack, ids, max_new_tokens, plan, sampler, eos)
        else:
            res = decode(self.stack, ids, self.layers_of(exit), max_new_tokens, sampler, eos)
        if self.tokenizer is not None:
            res.text = self.tokenizer.decode(res.tokens, skip_special_tokens=True)
        log.debug("generated %d tokens (%s) from %s", len(res.tokens), res.mode, text[:40] if text else "ids")
        return res

    def _generate_hf(self, ids, max_new_tokens, draft_exit, do_sample, temperature, top_p, seed) -> GenerationResult:
        import torch

        kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                                  attention_mask=torch.ones_like(ids))
        if do_sample:
            kw.update(temperature=temperature, top_p=top_p)
            torch.manual_seed(0 if seed is None else seed)
        k = None
        if draft_exit is not None:
            k = prefix_depth(self.layers_of(draft_exit))
            if k is None or k >= self.num_layers:
                raise UsageError(f"draft exit {draft_exit!r} must be a prefix K < {self.num_layers}", "give a layer count")
            kw["assistant_early_exit"] = k
        if self.model.generation_config.pad_token_id is None:
            kw["pad_token_id"] = next(iter(self.eos_ids()), 0)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(ids, **kw)
        sec = time.perf_counter() - t0
        return GenerationResult(out[0, ids.shape[1]:].tolist(), ids.shape[1], "hf-assisted" if k else "hf",
                                self.num_layers, sec, draft_exit=k)


def decode(stack, ids, layers: tuple[int, ...], max_new_tokens: int, sampler, eos: set[int]) -> GenerationResult:
    """Plain incremental decoding with one exit (all layers = the stock model's forward), KV cache on."""
    import torch

    from .stack import SharedCache

    t0 = time.perf_counter()
    cache = SharedCache()
    n = ids.shape[1]
    logits = stack.forward(ids, torch.arange(n).unsqueeze(0), cache, layers, logits_to_keep=1).logits
    prefill = time.perf_counter() - t0
    out: list[int] = []
    while True:
        x = sampler.pick(logits[0, -1])
        out.append(x)
        if x in eos or len(out) >= max_new_tokens:
            break
        logits = stack.forward(torch.tensor([[x]]), torch.tensor([[n]]), cache, layers, logits_to_keep=1).logits
        n += 1
    mode = "full" if len(layers) == stack.num_layers else "exit"
    return GenerationResult(out, ids.shape[1], mode, len(layers), time.perf_counter() - t0, prefill)
