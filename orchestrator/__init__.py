"""Converge: a local-first, self-refining code workspace."""

__version__ = "0.1.0"
