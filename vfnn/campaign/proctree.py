"""Process trees: kept for existing imports; the code lives in the one isolation module,
:mod:`vfnn.verifiers.process`."""

from vfnn.verifiers.process import children, descendants, kill_tree

__all__ = ["children", "descendants", "kill_tree"]
