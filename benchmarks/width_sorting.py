"""Does sort-width help? Held-out loss of SmolLM2 at reduced FFN width, sorted vs unsorted.

Runs ``sort-width`` on the training passages of ``builtin:sotu``, then extracts ``--ffn F`` (and
optionally ``--heads``) from the sorted and from the original model, and evaluates every variant
on the held-out passages (never seen by the calibration). The full model is the baseline.

    .venv/bin/python benchmarks/width_sorting.py [--model DIR] [--ffn 0.5 0.75] [--samples 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import write_result  # noqa: E402


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from surgeon.commands.demo import ensure_demo_model
    from surgeon.commands.extract import ExtractOptions
    from surgeon.commands.extract import run as extract
    from surgeon.commands.sort_width import SortWidthOptions
    from surgeon.commands.sort_width import run as sort_width
    from surgeon.data import calibration_samples
    from surgeon.eval import heldout_loss

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--data", default="builtin:sotu")
    ap.add_argument("--ffn", nargs="+", default=["0.5", "0.75"])
    ap.add_argument("--heads", default=None, help="also cut heads (fraction/count), e.g. 0.667")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-samples", type=int, default=24)
    a = ap.parse_args()
    model = a.model or ensure_demo_model()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    tok = AutoTokenizer.from_pretrained(str(model))
    heldout = calibration_samples(a.data, tok, samples=a.eval_samples, seq_len=a.seq_len, role="eval")

    def loss(path: Path) -> float:
        m = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        return heldout_loss(m, heldout, batch_size=4).loss

    results: dict = {"model": str(model), "data": a.data, "calibration": {"samples": a.samples, "seq_len": a.seq_len},
                     "heldout": heldout.describe(), "variants": []}
    with tempfile.TemporaryDirectory(dir=Path(model).parent) as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        sort_width(SortWidthOptions(model=Path(model), output=tmp / "sorted", data=a.data, samples=a.samples,
                                    seq_len=a.seq_len))
        results["sort_seconds"] = time.perf_counter() - t
        full = loss(Path(model))
        sorted_full = loss(tmp / "sorted")
        results["full_loss"] = full
        results["sorted_full_loss"] = sorted_full
        for f in a.ffn:
            row = {"ffn": f, "heads": a.heads}
            for name, src in (("unsorted", Path(model)), ("sorted", tmp / "sorted")):
                out = tmp / f"{name}-{f}"
                extract(ExtractOptions(model=src, output=out, ffn=f, heads=a.heads))
                row[f"{name}_loss"] = loss(out)
            row["sorted_minus_unsorted"] = row["sorted_loss"] - row["unsorted_loss"]
            results["variants"].append(row)
            print(row, flush=True)
    path = write_result("width_sorting", results)
    print(f"full {full:.4f} (sorted {sorted_full:.4f}); wrote {path}")


if __name__ == "__main__":
    main()
