"""Frozen dataclasses to and from parsed JSON, every field checked for presence and type once.

Files the pack reads back (an index's manifest, pointer and markers) may come from anyone, so a
value of the wrong type must be a sentence in a list of problems, never an AttributeError deep in
the code that uses it. Supported field types: str, int, float, bool, X | None, list[X],
dict[str, X] and dataclasses of these.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

R = TypeVar("R")


class Mistyped(ValueError):
    """A JSON value not of its field's type (its problem is already in the caller's list)."""


def to_json(value: Any) -> Any:
    """A record as JSON: fields left at a None default are left out (older records lack them)."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)
                if getattr(value, f.name) is not None or f.default is dataclasses.MISSING}
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        return [to_json(v) for v in value]
    return value


def typed(tp: Any, value: Any, where: str, problems: list[str]) -> Any:
    """`value` (parsed JSON) as type `tp`; Mistyped, its first problem added to `problems`, if not."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is types.UnionType:  # X | None
        return None if value is None else typed(args[0], value, where, problems)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_json(tp, value, where, problems)
    if origin is list and isinstance(value, list):
        if args[0] in (str, int) and all(type(v) is args[0] for v in value):  # 10M ids: no call each
            return value
        return [typed(args[0], v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        return {k: typed(args[1], v, f"{where}[{k[:80]!r}]", problems) for k, v in value.items()}
    if type(value) not in ((int, float) if tp is float else (tp,)):  # (a bool is no int here)
        expected = "dict" if dataclasses.is_dataclass(tp) else (origin or tp).__name__
        problems.append(f"{where} is {type(value).__name__}, not {expected}")
        raise Mistyped
    return value


def from_json(cls: type[R], obj: dict[str, Any], where: str, problems: list[str]) -> R:
    """The dataclass `cls` from a JSON object, each field present (or defaulted) and of its type;
    Mistyped once each field's problem is in `problems` (`where`: the object's place, for them)."""
    hints, values, known = typing.get_type_hints(cls), {}, len(problems)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = f"{where}.{f.name}" if where else f.name
        if f.name in obj:
            with contextlib.suppress(Mistyped):
                values[f.name] = typed(hints[f.name], obj[f.name], key, problems)
        elif f.default is dataclasses.MISSING:
            problems.append(f"{key} is missing")
    if len(problems) > known:
        raise Mistyped
    return cls(**values)


def parse(cls: type[R], raw: bytes) -> R | None:
    """The record `cls` in UTF-8 JSON `raw`, or None when it is not a well-formed one."""
    try:
        data = json.loads(raw.decode("utf-8"))
        return from_json(cls, data, "", []) if isinstance(data, dict) else None
    except (ValueError, RecursionError):  # (UTF-8, JSON, Mistyped)
        return None
