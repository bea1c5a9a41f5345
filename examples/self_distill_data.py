"""Self-distillation data for SoFT: a model's own greedy answers to instructions, as chat-formatted text.

Self-speculative decoding accepts a drafted token when the draft exit predicts what the *full model*
would say. Training the exits on the full model's own greedy outputs (sequence-level distillation,
Kim & Rush 2016) teaches them exactly that, on the kind of text the model will be asked to write::

    python examples/self_distill_data.py MODEL alpaca_en_demo.json --count 896 -o selfgen.jsonl
    surgeon soft MODEL --data selfgen.jsonl --exits 10,15,20,30 --method full --quant none \\
        --seq-len 256 --steps 300 --lr 2e-4 -o sorted/
    python benchmarks/spec_decode.py --model sorted/ --prompt-data alpaca_en_demo.json --prompt-start 900

Records ``start .. start+count-1`` of an Alpaca-style file (``instruction``, optional ``input``) go
through the tokenizer's chat template; each output line is ``{"text": prompt + answer + EOS, "idx": i}``
(``surgeon soft`` packs ``text`` records). Keep the records you benchmark on out of this range.
Greedy, batched with left padding; the file is written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("instructions", type=Path, help="Alpaca-style .json/.jsonl")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, default=512)
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)

    import torch
    from rich.progress import Progress
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from surgeon.data.records import iter_records

    tok = AutoTokenizer.from_pretrained(args.model)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        sys.exit(f"error: {args.model} has no chat template; this recipe writes chat-formatted text")
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    records = [r for i, r in enumerate(iter_records(str(args.instructions))) if args.start <= i < args.start + args.count]

    def prompt(r: dict) -> str:
        user = r.get("instruction", "") + (("\n\n" + r["input"]) if (r.get("input") or "").strip() else "")
        return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)

    tmp = args.output.with_name(args.output.name + ".partial")
    with open(tmp, "w") as out, Progress() as bar:
        task = bar.add_task("generating", total=len(records))
        for b in range(0, len(records), args.batch_size):
            batch = [prompt(r) for r in records[b: b + args.batch_size]]
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
            for j, p in enumerate(batch):
                answer = tok.decode(gen[j, enc.input_ids.shape[1]:], skip_special_tokens=False)
                answer = answer.split(tok.eos_token)[0].replace(tok.pad_token, "")
                out.write(json.dumps({"text": p + answer + tok.eos_token, "idx": args.start + b + j}) + "\n")
            bar.advance(task, len(batch))
    os.replace(tmp, args.output)
    print(f"wrote {len(records)} records to {args.output}")


if __name__ == "__main__":
    main()
