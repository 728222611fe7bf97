"""Building nested config dataclasses from plain dicts (YAML files, checkpoints), with clear errors."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["from_dict"]

T = TypeVar("T", bound="DataclassInstance")


def from_dict(kind: type[T], values: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``kind`` from ``values``; nested dataclass fields recurse, lists become tuples.

    A nested dataclass that defines its own ``from_dict(values, where)`` classmethod builds itself (e.g.
    :class:`rlreg.sac.AgentConfig`, whose task config class depends on its task's name).

    Raises:
        ValueError: a key that ``kind`` does not have, named with its dotted path and the valid keys.
    """
    known = {f.name for f in fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown config keys {sorted(f'{where}{k}' for k in unknown)}; "
                         f"valid at {where or 'top level'}: {sorted(known)}")
    defaults = kind()
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        current = getattr(defaults, name)
        if is_dataclass(current) and isinstance(value, dict):
            if isinstance(current, type):
                raise TypeError(f"{where}{name}: the default is the dataclass {current.__name__}, not an instance")
            build = getattr(type(current), "from_dict", None)
            if build is not None:
                kwargs[name] = build(value, f"{where}{name}.")
            else:
                kwargs[name] = from_dict(type(current), value, f"{where}{name}.")
        else:
            kwargs[name] = tuple(value) if isinstance(value, list) else value
    return kind(**kwargs)
