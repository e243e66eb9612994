"""Dataset generators: ``arrows`` (the arrow-pointing extrapolation images) and ``molecules``
(molecular graphs like MUTAG's), deterministic for a seed on any number of threads."""

from . import arrows, molecules

__all__ = ["arrows", "molecules"]
