"""surgeon: model surgery for decoder LLMs (analyze, prune, extract, heal, sort, serve)."""

__version__ = "0.1.0"
