"""Policy documents: YAML or JSON text that a user writes and a command carries (the
arbitration and retention policies). A document is checked whole: every reader below
appends what is wrong to `problems` and returns a usable stand-in, so one pass lists every
problem instead of stopping at the first."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any


def load_document(text: str, problems: list[str]) -> Any:
    """Plain data from YAML or JSON text (JSON is YAML); {} for blank text."""
    import yaml  # here: the readers below are imported by every `pit` command, parsing is rare

    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        problems.append(f"not YAML or JSON: {str(exc).splitlines()[0]}")
        return {}
    return data if data is not None else {}


def number(problems: list[str], where: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        problems.append(f"{where}: {value!r} is not a finite number")
        return low
    if not low <= value <= high:
        problems.append(f"{where}: {value} is not within [{low:g}, {high:g}]")
    return float(value)


def choice(problems: list[str], where: str, kind: type[enum.Enum], value: Any) -> Any:
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(str(m.value) for m in kind)
        problems.append(f"{where}: {value!r} is not one of {known}")
        return next(iter(kind))


def mapping(problems: list[str], where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        problems.append(f"{where}: expected a mapping, got {type(value).__name__}")
        return {}
    return value


def flag(problems: list[str], where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        problems.append(f"{where}: {value!r} is not true or false")
    return bool(value)


def unknown_keys(problems: list[str], where: str, data: Mapping[str, Any],
                 known: set[str] | frozenset[str]) -> None:
    for key in sorted(set(map(str, data)) - set(known)):
        problems.append(f"{where}{key}: unknown setting (known: {', '.join(sorted(known))})")
