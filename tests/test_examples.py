"""Every script in examples/ runs (each is given a tiny checkpoint)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_inspect_model_example(tiny_models):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "inspect_model.py"), str(tiny_models["gemma3_text"])],
                         capture_output=True, text=True, check=True)
    assert "Gemma3ForCausalLM: 6 layers" in out.stdout and "full_attention" in out.stdout
