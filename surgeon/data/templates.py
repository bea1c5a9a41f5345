"""The Alpaca prompt template (Stanford Alpaca), used for instruction records everywhere."""

from __future__ import annotations

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(record: dict) -> str:
    """The prompt part (everything before the response) of an instruction record."""
    template = PROMPT_WITH_INPUT if (record.get("input") or "").strip() else PROMPT_NO_INPUT
    return template.format(instruction=record["instruction"], input=record.get("input") or "")


def record_text(record: dict) -> str:
    """Plain text of a record: its ``text``, or the Alpaca prompt followed by the response."""
    if "text" in record:
        return record["text"]
    return alpaca_prompt(record) + (record.get("output") or "")
