"""Training examples for healing and sorted fine-tuning.

Plain-text records are packed: documents are tokenized with the tokenizer's defaults, joined
with EOS, and cut into ``seq_len`` blocks (``labels`` = ``input_ids``; the tail shorter than a
block is dropped). Instruction records become one example each in the Alpaca template, with
``labels`` = -100 on the prompt tokens (loss on the response only) and EOS after the response
(the Stanford Alpaca recipe: tokenize prompt and prompt+response, mask the prompt's length).
Examples longer than ``seq_len`` are truncated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from ..errors import DataError
from .records import iter_records
from .spec import DataSpec, parse_data_spec
from .templates import alpaca_prompt

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def training_examples(
    spec: str | DataSpec,
    tokenizer,
    *,
    seq_len: int,
    role: str = "train",
    seed: int = 0,
    shuffle: bool = False,
    max_examples: int | None = None,
) -> Iterator[dict]:
    """Yield ``{"input_ids": [...], "labels": [...]}`` examples (see module doc), lazily.

    ``role="train"`` never yields the held-out slice (local files / alpaca) or the validation
    split (c4). ``shuffle`` permutes the records with ``seed`` first. Stops after
    ``max_examples`` when given (hub train splits are otherwise endless for practical purposes).
    Raises :class:`DataError` when the data gives no example at all.
    """
    if seq_len < 2:
        raise DataError(f"seq_len {seq_len} is below 2", "give a sequence length such as 1024")
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError("the tokenizer has no EOS token, which training examples end with",
                        "add eos_token to the tokenizer config")
    ds = parse_data_spec(spec)
    count = 0
    buf: list[int] = []
    for rec in iter_records(ds, role, shuffle=shuffle, seed=seed):
        if "text" in rec:
            buf.extend(tokenizer(rec["text"])["input_ids"])
            buf.append(eos)
            while len(buf) >= seq_len:
                block, buf = buf[:seq_len], buf[seq_len:]
                yield {"input_ids": block, "labels": list(block)}
                count += 1
                if max_examples is not None and count >= max_examples:
                    return
        else:
            ex = instruction_example(rec, tokenizer, seq_len, eos)
            if ex is None:
                continue
            yield ex
            count += 1
        if max_examples is not None and count >= max_examples:
            return
    if count == 0:
        if buf:
            raise DataError(f"{ds.spec} ({role}) holds fewer than seq_len {seq_len} tokens of text",
                            "give more text or a smaller --seq-len")
        raise DataError(f"{ds.spec} gave no {role} examples", "give a file with more records")


def instruction_example(record: dict, tokenizer, seq_len: int, eos: int) -> dict | None:
    """One Alpaca example: prompt tokens masked with -100, response + EOS supervised.

    Returns None when truncation to ``seq_len`` leaves no response token to learn from."""
    prompt = alpaca_prompt(record)
    prompt_len = len(tokenizer(prompt)["input_ids"])
    ids = list(tokenizer(prompt + (record.get("output") or ""))["input_ids"]) + [eos]
    labels = [IGNORE_INDEX] * min(prompt_len, len(ids)) + ids[prompt_len:]
    ids, labels = ids[:seq_len], labels[:seq_len]
    if all(x == IGNORE_INDEX for x in labels):
        log.debug("skipping an instruction whose prompt fills seq_len %d", seq_len)
        return None
    return {"input_ids": ids, "labels": labels}


def collate(examples: Sequence[dict], pad_id: int = 0) -> dict:
    """Right-pad ``{"input_ids", "labels"}`` examples into ``input_ids``/``attention_mask``/``labels``
    tensors (``labels`` default to ``input_ids``; padding is labelled -100)."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.as_tensor(list(e["input_ids"]), dtype=torch.long)
        labels[i, :n] = torch.as_tensor(list(e.get("labels", e["input_ids"])), dtype=torch.long)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
