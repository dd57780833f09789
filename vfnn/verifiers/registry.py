"""Finding verifiers: the ``vfnn.verifiers`` entry-point group.

A third-party package adds a verifier by declaring, in its own ``pyproject.toml``::

    [project.entry-points."vfnn.verifiers"]
    mytool = "mypackage.adapter:MyToolVerifier"

vfnn's own adapters are declared the same way in vfnn's ``pyproject.toml``; :data:`BUILTIN`
repeats them only so that a source checkout that was never ``pip install``-ed still finds them.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from vfnn.errors import VerifierUnavailable
from vfnn.verifiers.base import Availability, Verifier

GROUP = "vfnn.verifiers"
BUILTIN: dict[str, str] = {
    "milp": "vfnn.verifiers.milp:MilpVerifier",
    "marabou": "vfnn.verifiers.marabou:MarabouVerifier",
    "abcrown": "vfnn.verifiers.abcrown:AbcrownVerifier",
}


def verifier_targets() -> dict[str, str]:
    """Every known verifier name mapped to its ``module:Class`` target, sorted by name."""
    found = dict(BUILTIN)
    for ep in entry_points(group=GROUP):
        found[ep.name] = ep.value
    return dict(sorted(found.items()))


def verifier_names() -> list[str]:
    return list(verifier_targets())


def load_verifier_class(name: str) -> type[Verifier]:
    """The adapter class registered as ``name`` (VerifierUnavailable if unknown or unloadable)."""
    targets = verifier_targets()
    if name not in targets:
        raise VerifierUnavailable(f"unknown verifier {name!r} (known: {', '.join(targets)})")
    module_name, _, attr = targets[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise VerifierUnavailable(f"verifier {name}: cannot load {targets[name]} ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, Verifier)):
        raise VerifierUnavailable(f"verifier {name}: {targets[name]} is not a vfnn Verifier subclass")
    return cls


def get_verifier(name: str) -> Verifier:
    """An instance of the verifier registered as ``name``."""
    return load_verifier_class(name)()


def verifier_status() -> list[tuple[str, str, Availability]]:
    """``(name, target, availability)`` for every registered verifier; never raises."""
    rows = []
    for name, target in verifier_targets().items():
        try:
            avail = get_verifier(name).availability()
        except VerifierUnavailable as exc:
            avail = Availability(False, reason=str(exc))
        except Exception as exc:  # a broken third-party adapter must not break the listing
            avail = Availability(False, reason=f"availability check failed: {type(exc).__name__}: {exc}")
        rows.append((name, target, avail))
    return rows
