"""Architecture knowledge, as data (``families.json``)."""

from .registry import Family, family_names, resolve_family

__all__ = ["Family", "family_names", "resolve_family"]
