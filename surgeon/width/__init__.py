"""Width surgery: keep the first k FFN channels and the first h attention heads (whole KV groups),
and sort channels/heads by importance (scored by :mod:`surgeon.analyze.importance`) so that "first k"
keeps the most important ones."""

from .plan import WidthSpec, plan_width, resolve_width

__all__ = ["WidthSpec", "plan_width", "resolve_width"]
