"""The decider pattern: the pure core every component's processor is built on.

    decide(state, command, now_ms) -> events     (raises Rejection with a reason)
    evolve(state, event, at_ms)    -> state
    initial_state(entity_key)      -> state

No I/O, no wall clock, no unseeded randomness: time arrives as an argument (the command's
Kafka timestamp when deciding, the event's `occurred_at` when evolving), so replaying the
events reproduces the state exactly. Commands and events are frozen dataclasses named after
their Avro records; `to_record`/`from_record` convert them to and from the codec's dicts.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar, Generic, TypeVar

S = TypeVar("S")


class Rejection(Exception):
    """Raised by `decide` when a command is invalid in the current state; says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Message:
    """Base of commands and events: knows its Avro record name and its entity key."""

    avro_name: ClassVar[str]
    key_field: ClassVar[str]

    @property
    def entity_key(self) -> str:
        return getattr(self, self.key_field)

    @property
    def type_name(self) -> str:
        return type(self).__name__


@cache
def _enum_fields(cls: type) -> dict[str, type[enum.Enum]]:
    hints = typing.get_type_hints(cls)
    return {name: hint for name, hint in hints.items()
            if isinstance(hint, type) and issubclass(hint, enum.Enum)}


@cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


def to_record(message: Message) -> dict[str, Any]:
    """The message as a codec dict (without `meta`/`envelope`, which the runtime adds)."""
    return {name: getattr(message, name) for name in _field_names(type(message))}


def from_record(cls: type[Message], record: dict[str, Any]) -> Message:
    values = {name: record[name] for name in _field_names(cls) if name in record}
    for name, enum_type in _enum_fields(cls).items():
        if name in values:
            values[name] = enum_type(values[name])
    return cls(**values)


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
    entity_of: Callable[[Message], str] = Message.entity_key.fget
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
