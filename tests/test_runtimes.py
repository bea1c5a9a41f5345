"""The downstream runtimes (vLLM CPU, MLX-LM CPU, llama.cpp, stock transformers), each in its own
virtual environment built by benchmarks/runtimes/setup.sh: `make test-runtimes` (CI runs it).
The comparisons themselves are benchmarks/runtimes.py (module doc); this checks its results."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.runtimes
def test_every_runtime_loads_views_extracts_and_pruned_models_like_transformers():
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "runtimes.py")], capture_output=True, text=True,
                       timeout=3600)
    assert p.returncode == 0, p.stderr[-4000:]
    print(p.stdout)
    d = json.loads((ROOT / "benchmarks" / "results" / "runtimes.json").read_text())
    rows = {(r["model"], r["runtime"]): r for r in d["rows"]}
    # SmolLM2: every model in every runtime gives transformers' greedy tokens
    smol = [r for (m, _), r in rows.items() if m.startswith("smollm2")]
    assert len(smol) == 17 and all(r["equal"] for r in smol), [k for k, r in rows.items() if not r["equal"]]
    for view in ("depth-10", "depth-20"):  # hard links: a view costs well under 1 MB
        v = d["smollm2"]["views"][view]
        assert v["mode"] == "link" and v["bytes_added"] < 1_000_000
    # MLX-LM on the import: top-1 equal everywhere (it reads the v4 rope_theta import-gguf writes)
    mlx = d["smollm2"]["mlx_logits"]["import-gguf config"]
    done, total = map(int, mlx["top1_equal_positions"].split("/"))
    assert done == total and mlx["max_abs_logit_diff"] < 1e-2
    # Gemma 3: llama.cpp runs a pruned model (and a depth extract of it) right only with fix-gguf
    for m in ("gemma3-pruned", "gemma3-pruned-depth8"):
        assert rows[(m, "llamacpp + surgeon fix-gguf")]["equal"]
        assert not rows[(m, "llamacpp (converter only)")]["equal"]  # the converter's periodic guess
        assert rows[(m, "hf")]["equal"] and rows[(m, "vllm")]["equal"]
    assert rows[("gemma3", "llamacpp (converter only)")]["equal"]
