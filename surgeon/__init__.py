"""surgeon: model surgery for decoder LLMs (analyze, prune, extract, heal, sort, serve)."""

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def __getattr__(name: str):
    # Lazy: `import surgeon` (and `surgeon --help`) must not import torch.
    if name == "load":
        from .loading import load

        return load
    raise AttributeError(f"module 'surgeon' has no attribute {name!r}")
