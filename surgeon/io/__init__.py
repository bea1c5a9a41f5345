"""Lazy checkpoint reading and atomic, streaming checkpoint writing."""
