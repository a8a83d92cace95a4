"""Times for people, in one place: what the CLI prints and parses, and what the read API adds
beside every epoch-milliseconds timestamp. The log and the views keep epoch milliseconds
(exact, sortable, what Kafka stamps); people read ISO 8601 in UTC."""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from streams.errors import PitError

# Keys holding an epoch-ms moment (not a duration like `elapsed_ms`): `*_at_ms` and these.
MOMENT_KEYS = frozenset({"timestamp_ms", "last_used_ms", "interval_start_ms",
                         "interval_end_ms", "until_ms", "since_ms", "as_of_ms"})


def iso(ms: int) -> str:
    """2026-12-04T07:28:13.123Z (gmtime: twice as fast as datetime, and every API answer
    formats each of its moments)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def when(ms: int | None, never: str = "-") -> str:
    """2026-12-04 07:28:13 UTC, for a line of CLI output; `never` for no time."""
    if not ms:
        return never
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time_ms(text: str, option: str) -> int:
    """Epoch milliseconds, or an ISO 8601 time (UTC unless it says otherwise); a PitError
    naming `option` otherwise."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise PitError(f"{option}: {text!r} is neither epoch milliseconds nor an ISO time"
                       ) from None
    # whole milliseconds by integer division: timestamp() * 1000 read ...01.001Z as 1000
    since_epoch = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)) - _EPOCH
    return since_epoch // timedelta(milliseconds=1)


_PLAIN = frozenset({str, int, float, bool, type(None)})  # exact types: enums are not plain


def readable(value: Any) -> Any:
    """Plain JSON data for people: dataclasses, mappings (a PMap too) and sequences as JSON
    objects and arrays, enums by value, and beside each epoch-ms moment (`started_at_ms`)
    its ISO time without the suffix (`started_at`; null for 0 or none); a moment kept under
    a plain `*_at` name (a plan's `expires_at`) is shown in ISO with `*_at_ms` beside it.
    Every API answer comes through here, so the common types are tried first, by exact
    type."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is dict:
        return _object(value)
    if kind is list or kind is tuple:
        return [readable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _object({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, Mapping) or callable(getattr(value, "items", None)):
        return _object(dict(sorted(value.items(), key=lambda kv: str(kv[0]))))  # a PMap
    if isinstance(value, list | tuple | set | frozenset):
        return [readable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _object(value: dict) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for key, item in value.items():
        name = key if isinstance(key, str) else str(key)
        if (name.endswith("_at_ms") or name in MOMENT_KEYS) and name[:-3] not in value \
                and (item is None or type(item) is int):
            shown[name[:-3]] = iso(item) if item else None
        elif name.endswith("_at") and type(item) is int and f"{name}_ms" not in value:
            # a moment kept under its plain name (a plan's `expires_at`): ISO for people,
            # the milliseconds beside it
            shown[name], shown[f"{name}_ms"] = (iso(item) if item else None), item
            continue
        shown[name] = readable(item)
    return shown
