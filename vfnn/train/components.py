"""What objectives (``--method``) and regularisers (``--reg``) share: options declared as data.

A component class lists the options it adds in its own ``options`` attribute; a subclass takes its
parents' options too (``trades`` attacks with ``pgd``'s ``--pgd-steps``).  The CLI flags and their
``--help`` lines (vfnn.train.cli), the validation and the ``options`` table of config.json
(vfnn.train.config) are generated from these declarations, so a new component is one class and
one registry entry.  The table is keyed by the class that declares the option:
``{"pgd": {"steps": 10, "step_size": None}, "nbc": {"every": 4, ...}}``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from vfnn.errors import VfnnError
from vfnn.verifiers.base import Option


class TrainConfigError(VfnnError):
    """A training option is malformed or inconsistent."""


@dataclass(frozen=True)
class TrainOption(Option):
    """A verifier :class:`Option` with a lower bound; ``type`` may be ``tuple`` (comma-separated floats)."""

    minimum: float | None = None
    strict: bool = False  # the bound itself is excluded: > rather than >=

    def check(self, value: Any, flag: str) -> Any:
        """``value`` (a CLI string or a Python value) parsed and range-checked; TrainConfigError names ``flag``."""
        if self.type is tuple:
            out = parse_floats(value, flag)
            values = out or ()
        else:
            out = self.parse(value, flag)
            values = () if out is None else (out,)
        if self.minimum is not None:
            op = ">" if self.strict else ">="
            if any(v <= self.minimum if self.strict else v < self.minimum for v in values):
                what = "values" if self.type is tuple else ""
                raise TrainConfigError(" ".join(filter(None, (flag, what, "must be", op, f"{self.minimum:g}"))))
        return out


def parse_floats(value: Any, what: str) -> tuple[float, ...] | None:
    """``"1,0.5"`` (or a list of numbers) -> (1.0, 0.5); None or "" -> None; TrainConfigError names ``what``."""
    if value is None or value == "":
        return None
    try:
        return tuple(float(v) for v in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        raise TrainConfigError(f"{what}: expected comma-separated numbers, got {value!r}") from None


def option_flag(owner: str, option: Option) -> str:
    """``--nbc-every`` for option ``every`` of ``nbc``: the CLI flag, also the name in error messages."""
    return f"--{owner}-{option.name}".replace("_", "-")


C = TypeVar("C", bound="Component")


class Component:
    """Base of objectives and regularisers: a ``name`` and the ``options`` this class adds."""

    name: ClassVar[str] = ""
    options: ClassVar[tuple[TrainOption, ...]] = ()

    def __init__(self, settings: Mapping[str, Any] | None = None):
        self.settings = self.complete(settings or {})

    @classmethod
    def owners(cls) -> list[type[Component]]:
        """The classes of the MRO that declare options, base first (each is a key of the options table)."""
        return [k for k in reversed(cls.__mro__) if issubclass(k, Component) and vars(k).get("options")]

    @classmethod
    def check_options(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """The options that ``cls`` itself declares: ``values`` completed with defaults, parsed and checked."""
        own = vars(cls).get("options", ())
        unknown = sorted(set(values) - {o.name for o in own})
        if unknown:
            known = ", ".join(o.name for o in own) or "none"
            raise TrainConfigError(f"{cls.name}: unknown option {unknown[0]!r} (known: {known})")
        return {o.name: o.check(values.get(o.name, o.default), option_flag(cls.name, o)) for o in own}

    @classmethod
    def complete(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Flat settings of this component (its own and inherited options), completed and checked."""
        out: dict[str, Any] = {}
        for owner in cls.owners():
            names = {o.name for o in vars(owner)["options"]}
            out.update(owner.check_options({k: v for k, v in settings.items() if k in names}))
        unknown = sorted(set(settings) - set(out))
        if unknown:
            raise TrainConfigError(f"{cls.name}: unknown option {unknown[0]!r} (known: {', '.join(out) or 'none'})")
        return out

    @classmethod
    def from_table(cls: type[C], table: Mapping[str, Mapping[str, Any]], **kw: Any) -> C:
        """An instance whose settings come from a config's options table (``kw``: other constructor arguments)."""
        return cls({k: v for owner in cls.owners() for k, v in table.get(owner.name, {}).items()}, **kw)

    @classmethod
    def check_model(cls, settings: Mapping[str, Any], relu_layers: int) -> None:
        """Options that depend on the model (raise TrainConfigError); ``settings`` are this owner's."""

    @classmethod
    def describe(cls) -> str:
        """The class's docstring: the component's paragraph of ``vfnn train --help``."""
        return inspect.cleandoc(cls.__doc__ or "")


def declaring_classes(registries: Iterable[Mapping[str, type[Component]]]) -> dict[str, type[Component]]:
    """Every class that declares options, by name, in registry order (each once)."""
    out: dict[str, type[Component]] = {}
    for registry in registries:
        for cls in registry.values():
            for owner in cls.owners():
                out.setdefault(owner.name, owner)
    return out
