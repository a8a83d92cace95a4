"""The decider pattern: the pure core every component's processor is built on.

    decide(state, command, now_ms) -> events     (raises Rejection with a reason)
    evolve(state, event, at_ms)    -> state
    initial_state(entity_key)      -> state

No I/O, no wall clock, no unseeded randomness: time arrives as an argument (the command's
Kafka timestamp when deciding, the event's `occurred_at` when evolving), so replaying the
events reproduces the state exactly. Commands and events are frozen dataclasses named after
their Avro records; `to_record`/`from_record` convert them to and from the codec's dicts.

A decider with many rules writes each as a function of a `Decision` (the working copy) and
the command, and runs them through `Rules`; its `evolve` copies state with `copy_with`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from operator import attrgetter
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from streams.errors import InvalidRecordError

S = TypeVar("S")
M = TypeVar("M", bound="Message")
V = TypeVar("V")


class Rejection(Exception):
    """Raised by `decide` when a command is invalid in the current state; says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Message:
    """Base of commands and events: knows its Avro record name and its entity key."""

    avro_name: ClassVar[str]
    key_field: ClassVar[str]
    # `*_id` fields built of other ids (a timer id names its execution and node), so longer
    # than MAX_ID_CHARS
    composite_ids: ClassVar[tuple[str, ...]] = ()

    @property
    def entity_key(self) -> str:
        return getattr(self, self.key_field)

    @property
    def type_name(self) -> str:
        return type(self).__name__


class _PerClass(dict[type, V]):
    """What `compute` says of a message class, computed on first use. A dict rather than
    functools.cache, whose typing takes a class object for unhashable."""

    def __init__(self, compute: Callable[[type], V]) -> None:
        super().__init__()
        self.compute = compute

    def __missing__(self, cls: type) -> V:
        value = self[cls] = self.compute(cls)
        return value


def _enum_fields(cls: type) -> dict[str, type[enum.Enum]]:
    hints = typing.get_type_hints(cls)
    return {name: hint for name, hint in hints.items()
            if isinstance(hint, type) and issubclass(hint, enum.Enum)}


_ENUM_FIELDS = _PerClass(_enum_fields)
_FIELD_NAMES = _PerClass(lambda cls: tuple(field.name for field in dataclasses.fields(cls)))


# --- values every store can hold ---------------------------------------------------------------
# A command is decided once and its events are kept for ever: a value no view, archive or
# codec can hold must be refused at the door, with the field named, not found by a projector.

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_ID_CHARS = 255        # an id (`*_id` field, entity key): the views' id columns' width
MAX_TEXT_CHARS = 1 << 20  # any other string (a Kafka record holds about that much anyway)
MAX_ITEMS = 10_000        # entries of a list or map field


def fits_int64(value: int) -> bool:
    """A counter, size or time a BIGINT column (and Avro's long) can hold."""
    return INT64_MIN <= value <= INT64_MAX


def _problem(value: Any, limit: int) -> str | None:
    """What makes `value` unstorable, or None; `limit`: its maximum length if a string."""
    if value is None or isinstance(value, bool | enum.Enum):
        return None
    if isinstance(value, str):
        if len(value) > limit:
            return f"{len(value):,} characters, more than {limit:,}"
        return "contains a NUL character" if "\x00" in value else None
    if isinstance(value, int):
        return None if fits_int64(value) else f"{value} does not fit in 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} is not a finite number"
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        if len(value) > MAX_ITEMS:
            return f"{len(value):,} entries, more than {MAX_ITEMS:,}"
        pairs = value.items() if isinstance(value, Mapping) else ((None, v) for v in value)
        for key, item in pairs:
            problem = _problem(key, MAX_ID_CHARS) or _problem(item, MAX_TEXT_CHARS)
            if problem:
                return f"{'a key or value' if key is not None else 'an entry'}: {problem}"
    return None


def _limits(cls: type) -> tuple[tuple[str, int], ...]:
    key, composite = getattr(cls, "key_field", ""), getattr(cls, "composite_ids", ())
    return tuple((name, MAX_ID_CHARS if (name.endswith("_id") and name not in composite)
                  or name == key else MAX_TEXT_CHARS) for name in _FIELD_NAMES[cls])


_LIMITS = _PerClass(_limits)


def check_values(message: Message) -> None:
    """Reject (naming the field) a value no store can hold: an int beyond 64 bits, a NaN or
    infinite float, a NUL character (PostgreSQL text has none), an id longer than
    MAX_ID_CHARS, another string longer than MAX_TEXT_CHARS, a list or map of more than
    MAX_ITEMS entries. `Rules` checks every command before its rule runs."""
    for name, limit in _LIMITS[type(message)]:
        problem = _problem(getattr(message, name), limit)
        if problem is not None:
            raise Rejection(f"{message.type_name}.{name}: {problem}")


def to_record(message: Message) -> dict[str, Any]:
    """The message as a codec dict (without `meta`/`envelope`, which the runtime adds)."""
    return {name: getattr(message, name) for name in _FIELD_NAMES[type(message)]}


_FRAMING = ("meta", "envelope")  # what the runtime adds to a command's or event's record


def unknown_fields(cls: type[Message], record: Mapping[str, Any],
                   framing: tuple[str, ...] = _FRAMING) -> None:
    """Raise `InvalidRecordError` naming the first field of `record` that `cls` does not
    have (nor `framing`, the runtime's): a misspelt field must fail, not vanish."""
    known = _FIELD_NAMES[cls]
    for name in record:
        if name not in known and name not in framing:
            raise InvalidRecordError(f"unknown field {name!r} for {cls.__name__} "
                                     f"(known: {', '.join(known)})")


def from_record(cls: type[M], record: dict[str, Any]) -> M:
    """The message of a codec dict; `InvalidRecordError` on a field it does not have."""
    values = {name: record[name] for name in _FIELD_NAMES[cls] if name in record}
    if len(values) != len(record) - sum(name in record for name in _FRAMING):
        unknown_fields(cls, record)
    for name, enum_type in _ENUM_FIELDS[cls].items():
        if name in values:
            values[name] = enum_type(values[name])
    return cls(**values)


class Decision(Generic[S]):
    """A decision in progress, the working copy a decider's rules write to: the events
    emitted so far, and `state`, the entity with all of them applied, so a later rule sees
    what an earlier one decided. What `decide` returns is then, by construction, what a
    replay of its events reproduces. The events are applied when `state` is next read, not
    when emitted: the last ones of a decision are never evolved for nothing.

    A decider's rules subclass it for their helpers (and any scratch they keep)."""

    __slots__ = ("_applied", "_evolve", "_state", "events", "now")

    def __init__(self, state: S, now_ms: int, evolve: Callable[[S, Message, int], S]) -> None:
        self._state, self._applied, self._evolve, self.now = state, 0, evolve, now_ms
        self.events: list[Message] = []

    @property
    def state(self) -> S:
        while self._applied < len(self.events):
            self._state = self._evolve(self._state, self.events[self._applied], self.now)
            self._applied += 1
        return self._state

    def emit(self, *events: Message) -> None:
        self.events.extend(events)


class Decided(list[Message]):
    """What `Rules.decide` returns: the events, and how far the decision had applied them.
    `state` is the entity with the first `applied` of them evolved (a later rule read it),
    so a processor evolves only the rest: by construction, the state evolving them all from
    the one given to `decide` reaches. A DAG report's decision reads the state it moved, so
    this halves the evolving a processor does."""

    __slots__ = ("applied", "state")

    def __init__(self, events: list[Message], state: Any, applied: int) -> None:
        super().__init__(events)
        self.state, self.applied = state, applied


D = TypeVar("D", bound=Decision[Any])


@dataclass(frozen=True)
class Rules(Generic[D]):
    """A decider's rule per command type, and the one way they run: find the command's rule,
    check the command is for the entity deciding it, run the rule on a working copy, return
    its events. Every command names its entity in the field `key` (e.g. "pool_id"), which
    the state carries too.

    `reject_blank_key`: an empty key is rejected before any rule runs (the pool, the catalog:
    their key defaults to "default", so an empty one is a client's mistake), or, False, left
    to the rules (an execution's: a command to an unknown execution is rejected there)."""

    owner: str  # in the rejection of a command it has no rule for: "the pool"
    key: str
    rules: Mapping[type[Message], Callable[[D, Any], None]]
    reject_blank_key: bool = True

    @property
    def commands(self) -> tuple[type[Message], ...]:
        return tuple(self.rules)

    def decide(self, d: D, command: Message) -> Decided:
        rule = self.rules.get(type(command))
        if rule is None:
            raise Rejection(f"{self.owner} does not handle {command.type_name}")
        check_values(command)
        key = getattr(command, self.key)
        if not key and self.reject_blank_key:
            raise Rejection(f"{self.key} must not be empty")
        deciding = getattr(d._state, self.key)  # nothing emitted yet: the state as given
        if key != deciding:
            entity = self.key.removesuffix("_id")
            raise Rejection(f"command for {entity} {key!r} sent to {entity} {deciding!r}")
        rule(d, command)
        return Decided(d.events, d._state, d._applied)


class _Slotted(Protocol):
    """A class whose instances keep their fields in slots (the state classes)."""

    __slots__: ClassVar[Iterable[str]]


T = TypeVar("T", bound=_Slotted)
_set = object.__setattr__


def copy_with(obj: T, **changes: Any) -> T:
    """`dataclasses.replace` for the frozen slotted state classes, without re-running
    `__init__`: same result, about twice as fast, and `evolve` copies for every event."""
    new = _copier(type(obj))(obj)
    for name, value in changes.items():
        _set(new, name, value)
    return new


@cache
def _copier(cls: type[T]) -> Callable[[T], T]:
    """A function that copies a `cls` instance slot by slot, written out per class as
    `dataclasses` writes `__init__`: a loop over the slot names took a third longer."""
    lines = "".join(f"\n    _set(new, {name!r}, obj.{name})" for name in cls.__slots__)
    namespace: dict[str, Any] = {"_new": object.__new__, "_set": _set, "cls": cls}
    exec(f"def copy(obj):\n    new = _new(cls){lines}\n    return new", namespace)
    copy: Callable[[T], T] = namespace["copy"]
    return copy


@dataclass(frozen=True)
class CheckpointTopic(Generic[S]):
    """A decider's compacted checkpoint topic (its rules: streams/recovery.py): where each
    entity's restore starts, so a processor's restore reads the recent log only.

    `final(state)` is None while an entity may still change; once it cannot (an execution
    ended), the small record of what deciding on it still needs, and `from_final` the state
    that decides every command as the full one does. `request(key)` is the command that makes
    the entity take a checkpoint (a snapshot event), sent when its last one lies far behind."""

    topic: str
    final: Callable[[S], bytes | None]
    from_final: Callable[[bytes], S]
    request: Callable[[str], Message]


@dataclass(frozen=True)
class Decider(Generic[S]):
    """One component's rules, plus the message types its processor reads and writes."""

    name: str
    command_topic: str
    event_topic: str
    commands: Sequence[type[Message]]
    events: Sequence[type[Message]]
    initial_state: Callable[[str], S]
    decide: Callable[[S, Message, int], Sequence[Message]]
    evolve: Callable[[S, Message, int], S]
    # The entity that decides a command (state key, Kafka key, partition); by default the
    # command's own subject. The pool decides every command of a pool together.
    entity_of: Callable[[Message], str] = attrgetter("entity_key")
    # Checkpoints, optional: event types that carry an entity's whole state, and the state one
    # of them records (as evolve leaves it after that event). A processor restoring from the
    # log then starts each entity at its last such event and evolves only what follows, so
    # recovery work is bounded by the time since the last checkpoint, not by history length.
    snapshots: tuple[type[Message], ...] = ()
    from_snapshot: Callable[[Message], S] | None = None
    # With snapshots, optionally: a checkpoint topic, so a restore also reads only the events
    # and outcomes recent enough to matter, not every one (streams/recovery.py).
    checkpoint_topic: CheckpointTopic[S] | None = None

    def command_type(self, avro_name: str) -> type[Message] | None:
        return _types(tuple(self.commands)).get(avro_name)

    def event_type(self, avro_name: str) -> type[Message] | None:
        return _types(tuple(self.events)).get(avro_name)


@cache
def _types(classes: tuple[type[Message], ...]) -> dict[str, type[Message]]:
    return {cls.avro_name: cls for cls in classes}
