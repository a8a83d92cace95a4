"""The model lifecycle views: `models` (one row per model) and `model_transitions` (history).

The rows are computed by the decider's own `evolve` (streams.pool.lifecycle) folded over the
events, so the view can never disagree with the Pool Manager's rules. Time in state is not
stored: it grows with the clock, so readers compute it as now - entered_at_ms.

Every column is derived from the events alone (no wall clock: `updated_at_ms` is the last
event's occurred_at), so a rebuild reproduces the live view exactly. Each model's
`last_sequence` (the envelope's per-entity sequence) makes a duplicated event in the log
(same event, another offset) a no-op as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    select,
)

from projections.runtime import View, constraint_name, index_name
from schemas.codec import Decoded
from streams.decider import from_record
from streams.log import LogRecord
from streams.pool.lifecycle import (
    LIFECYCLE,
    ModelLifecycle,
    ModelState,
    ModelTransitioned,
    evolve,
    initial_state,
)
from streams.pool.topics import POOL_EVENTS
from streams.sql import Long, insert_rows, update_rows

_CHUNK = 500  # ids per IN (...) lookup
_STATE_COLUMNS = ("state", "entered_at_ms", "last_used_ms", "transition_count", "failure_count",
                  "usage_count", "last_sequence", "updated_at_ms")
_STATES = {state.value: state for state in ModelState}
_TRANSITION_COLUMNS = ("event_id", "model_id", "sequence", "from_state", "to_state", "reason",
                       "time_in_previous_ms", "occurred_at_ms", "causation_id", "topic",
                       "partition", "offset")


class ModelsView(View):
    name = "models"
    topics = (POOL_EVENTS,)
    table_names = ("models", "model_transitions")

    def define(self, metadata: MetaData, suffix: str = "", token: str = "") -> dict[str, Table]:
        models = Table(
            "models" + suffix,
            metadata,
            Column("model_id", String(255), nullable=False),
            Column("state", String(16), nullable=False),
            Column("entered_at_ms", Long),
            Column("last_used_ms", Long),
            Column("transition_count", Integer, nullable=False),
            Column("failure_count", Integer, nullable=False),
            Column("usage_count", Long, nullable=False),
            Column("last_sequence", Long, nullable=False),
            Column("updated_at_ms", Long, nullable=False),
            PrimaryKeyConstraint("model_id", name=constraint_name("pk", "models", token)),
            Index(index_name("models", "state", token), "state"),
        )
        transitions = Table(
            "model_transitions" + suffix,
            metadata,
            Column("event_id", String(255), nullable=False),
            Column("model_id", String(255), nullable=False),
            Column("sequence", Long, nullable=False),
            Column("from_state", String(16), nullable=False),
            Column("to_state", String(16), nullable=False),
            Column("reason", String(32), nullable=False),
            Column("time_in_previous_ms", Long, nullable=False),
            Column("occurred_at_ms", Long, nullable=False),
            Column("causation_id", Text),
            Column("topic", String(249), nullable=False),
            Column("partition", Integer, nullable=False),
            Column("offset", Long, nullable=False),
            PrimaryKeyConstraint("event_id",
                                 name=constraint_name("pk", "model_transitions", token)),
            Index(index_name("model_transitions", "model_id", token), "model_id", "sequence"),
        )
        return {"models": models, "model_transitions": transitions}

    def apply(self, conn: Connection, tables: dict[str, Table], decoded: Decoded,
              record: LogRecord) -> None:
        self.apply_batch(conn, tables, [(decoded, record)])

    def apply_batch(self, conn: Connection, tables: dict[str, Table],
                    events: Sequence[tuple[Decoded, LogRecord]]) -> None:
        parsed = []
        types: dict[str, Any] = {}  # avro name -> event class (None: not a lifecycle event)
        for decoded, record in events:
            name = decoded.name
            event_type = types[name] if name in types else types.setdefault(
                name, LIFECYCLE.event_type(name))
            if event_type is not None:
                event = from_record(event_type, decoded.record)
                parsed.append((event, event.entity_key, decoded.record["envelope"], record))
        if not parsed:
            return
        models, transitions = tables["models"], tables["model_transitions"]
        current = _load(conn, models, {model_id for _, model_id, _, _ in parsed})
        existing = set(current)
        changed: dict[str, tuple[ModelLifecycle, int, int]] = {}
        history: list[tuple[Any, ...]] = []
        for event, model_id, envelope, record in parsed:
            state, last_sequence, _ = current.get(model_id) or (initial_state(model_id), 0, 0)
            sequence = envelope["sequence"]
            if sequence <= last_sequence:
                continue  # the same event again (a duplicate in the log): already applied
            at_ms = envelope["occurred_at"]
            current[model_id] = changed[model_id] = (evolve(state, event, at_ms), sequence, at_ms)
            if isinstance(event, ModelTransitioned):
                history.append((
                    envelope["event_id"], model_id, sequence, event.from_state._value_,
                    event.to_state._value_, event.reason._value_, event.time_in_previous_ms, at_ms,
                    envelope["causation_id"], record.topic, record.partition, record.offset,
                ))
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        for model_id, (state, sequence, at_ms) in changed.items():
            row = (state.state._value_, state.entered_at_ms, state.last_used_ms,
                   state.transition_count, state.failure_count, state.usage_count, sequence,
                   at_ms, model_id)
            (updates if model_id in existing else inserts).append(row)
        insert_rows(conn, models, (*_STATE_COLUMNS, "model_id"), inserts)
        update_rows(conn, models, "model_id", _STATE_COLUMNS, updates)
        insert_rows(conn, transitions, _TRANSITION_COLUMNS, history)


def _load(conn: Connection, models: Table, ids: set[str]
          ) -> dict[str, tuple[ModelLifecycle, int, int]]:
    """The stored state of these models: (lifecycle, last_sequence, updated_at_ms)."""
    found = {}
    wanted = sorted(ids)
    columns = [models.c.model_id, *(models.c[name] for name in _STATE_COLUMNS)]
    for start in range(0, len(wanted), _CHUNK):
        rows = conn.execute(select(*columns).where(
            models.c.model_id.in_(wanted[start:start + _CHUNK])))
        for (model_id, state, entered_at_ms, last_used_ms, transition_count, failure_count,
             usage_count, last_sequence, updated_at_ms) in rows:
            found[model_id] = (
                ModelLifecycle(model_id=model_id, state=_STATES[state],
                               entered_at_ms=entered_at_ms, last_used_ms=last_used_ms,
                               transition_count=transition_count, failure_count=failure_count,
                               usage_count=usage_count),
                last_sequence, updated_at_ms)
    return found


def lifecycle_of(row: Any) -> ModelLifecycle:
    """The decider's state from a `models` row."""
    return ModelLifecycle(
        model_id=row["model_id"], state=ModelState(row["state"]),
        entered_at_ms=row["entered_at_ms"], last_used_ms=row["last_used_ms"],
        transition_count=row["transition_count"], failure_count=row["failure_count"],
        usage_count=row["usage_count"],
    )


def model_row(row: Any, now_ms: int) -> dict[str, Any]:
    """A `models` row for readers, with time_in_state_ms computed at `now_ms`."""
    out = dict(row)
    out["time_in_state_ms"] = lifecycle_of(row).time_in_state_ms(now_ms)
    return out
