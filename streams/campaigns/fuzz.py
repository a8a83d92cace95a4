"""`pit campaign fuzz`: bad input never stops a process (issue 11).

Starts a whole Pit in-process (`streams.app.Stack`, embedded broker, a fresh data directory)
and sends it, through the broker, seeded random bad input on every component's command topic
(from the registry) and on the schema registry topic, mixed with valid commands:

* random bytes (the empty value too), truncated frames, unknown schema ids;
* valid Avro of the wrong type: events, outcomes, another component's commands;
* valid commands with one hostile value: a NUL character in any string, NaN or infinity in
  any float, ids of 256 characters to 100,000, 10,001 list or map entries, an empty entity
  key, int64 extremes where a field bounds them, a bad command id, and the issue's case: a
  usage count that would overflow 64 bits on a Hot model;
* on `_pit.schemas`: bytes that are not JSON, JSON that is no schema record, a schema under
  an id that is not its fingerprint, JSON nested too deep.

Then it checks the promises from the log:

* every bad command input was rejected with a reason or dead-lettered (none accepted, none
  unanswered, none answered "internal error");
* no process stopped: every task of the Stack and its projector still runs;
* the state changed only by the valid commands: deciding the command log without the bad
  inputs (fresh processors, same records, same times) produces byte for byte the events the
  log holds, and the views equal views rebuilt from those events; the projector
  dead-lettered nothing;
* a restart of the Pit on the same directory starts despite the registry garbage, reports
  every corrupt registry record as a dead letter, and `pit audit verify` is OK.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import enum
import json
import logging
import random
import shutil
import struct
import tempfile
import time
import types
import typing
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from sqlalchemy import Engine, select

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.app import Stack
from streams.client import PitClient
from streams.components import COMPONENTS
from streams.config import Settings
from streams.decider import (
    INT64_MAX,
    INT64_MIN,
    MAX_ID_CHARS,
    MAX_ITEMS,
    Decider,
    Message,
    to_record,
)
from streams.history import history_source, kafka_log_reader
from streams.kafka import make_producer, produce_all
from streams.log import LogRecord
from streams.processor import Output, Processor
from streams.topics import DEAD_LETTERS, OUTCOME, RESULTS, SCHEMAS, load_catalog

log = logging.getLogger(__name__)

Position = tuple[str, int, int]  # topic, partition, offset

# Fields whose int64 extremes every state refuses (sizes and counts out of range, a deadline
# beyond 64-bit time), per command type.
BOUNDED_INTS: dict[str, tuple[str, ...]] = {
    "RegisterModel": ("memory_mb", "expected_load_ms"),
    "RegisterHost": ("memory_budget_mb", "capacity"),
    "ReportModelLoaded": ("memory_mb", "load_ms"),
    "StoreArtifact": ("size",),
    "SubmitRequest": ("priority", "timeout_ms"),
    "DescribeModel": ("slots",),
    "ObserveModel": ("memory_mb", "load_ms"),
    "ObserveHost": ("budget_mb", "free_mb"),
}
HOT_MODEL, HOT_HOST = "fuzz-hot-model", "fuzz-host"
HOT_ROOM = 10  # what the Hot model's usage count may still grow by: no usage command fits
UNICODE = "модель-ü-漢字-🙂"


# --- generating ----------------------------------------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """A message class's field types (typing evaluates them anew on every call: slow)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _plain(hint: Any) -> Any:
    """`str | None` -> str."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint


def _sample(hint: Any) -> Any:
    """A plain value of a field's type (for the fields a template leaves at random)."""
    hint = _plain(hint)
    origin = typing.get_origin(hint)
    if origin is dict:
        return {}
    if origin in (list, tuple):
        return []
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return next(iter(hint))
    return {bool: True, int: 1, float: 0.5, str: "x", bytes: b"x"}.get(hint, "x")


def template(cls: type[Message], key: str = "fuzz") -> Message:
    """An instance of any command type, well formed (not necessarily acceptable)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name == cls.key_field:
            values[f.name] = key
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            values[f.name] = _sample(_hints(cls)[f.name])
    return cls(**values)


class Generator:
    """Seeded: the same seed sends the same inputs."""

    def __init__(self, seed: int, deciders: Sequence[Decider]) -> None:
        self.rng = random.Random(seed)
        self.deciders = list(deciders)
        self.codec = Codec(EmbeddedRegistry())
        self.known_ids = {self.codec.schema_id(name) for name in self.codec.schemas
                          if "fields" in self.codec.schemas[name]}
        self.count = 0
        self.addresses: list[str] = []  # of the valid artifacts, for valid accesses
        self.executions: list[str] = []  # started by valid commands, to cancel
        self.requests: list[str] = []  # submitted to arbitration, to release

    def _id(self, prefix: str) -> str:
        self.count += 1
        return f"fuzz-{prefix}-{self.count}"

    def encode(self, command: Message, command_id: str | None = None) -> bytes:
        meta = {"command_id": self._id("bad") if command_id is None else command_id,
                "issued_at": 0,
                "issued_by": "fuzz", "correlation_id": None}
        return self.codec.encode(command.avro_name, {"meta": meta, **to_record(command)})

    # Bad input on a command topic: (decider, key, value, category).
    def bad(self) -> tuple[Decider, bytes | None, bytes, str]:
        decider = self.rng.choice(self.deciders)
        roll = self.rng.random()
        if roll < 0.12:
            return decider, self._bytes(8), self._bytes(self.rng.randrange(0, 200)), "random bytes"
        if roll < 0.24:
            frame = self.encode(template(self.rng.choice(decider.commands)))
            return decider, b"fuzz", frame[:self.rng.randrange(1, len(frame))], "truncated frame"
        if roll < 0.32:
            schema_id = self.rng.randrange(1, 1 << 31)
            while schema_id in self.known_ids:
                schema_id = self.rng.randrange(1, 1 << 31)
            body = struct.pack(">bI", 0, schema_id) + self._bytes(self.rng.randrange(0, 64))
            return decider, b"fuzz", body, "unknown schema id"
        if roll < 0.42:
            return decider, b"fuzz", self._wrong_type(decider), "wrong type"
        if roll < 0.47:
            command = template(self.rng.choice(decider.commands), self._key())
            bad_id = self.rng.choice(["", "c" * (MAX_ID_CHARS + 1), "nul\x00id"])
            return decider, b"fuzz", self.encode(command, bad_id), "bad command id"
        if roll < 0.50 and decider.name == "pool":
            from streams.pool.lifecycle import RecordModelUsage

            usage = RecordModelUsage(HOT_MODEL, self.rng.choice([HOT_ROOM + 1, INT64_MAX]))
            return decider, b"default", self.encode(usage), "usage overflow"
        command, category = self.hostile(decider)
        return decider, decider.entity_of(command).encode(errors="replace"), self.encode(
            command), category

    def _bytes(self, size: int) -> bytes:
        return self.rng.randbytes(size)

    def _key(self) -> str:
        return self.rng.choice(["default", "fuzz", UNICODE])

    def _wrong_type(self, decider: Decider) -> bytes:
        roll = self.rng.random()
        if roll < 0.4:  # an event, envelope and all
            event = template(self.rng.choice(decider.events))
            envelope = {"event_id": "e", "event_type": event.type_name, "entity_key": "fuzz",
                        "sequence": 1, "correlation_id": "c", "causation_id": "c",
                        "occurred_at": 0, "producer": "fuzz"}
            return self.codec.encode(event.avro_name, {"envelope": envelope, **to_record(event)})
        if roll < 0.6:
            return self.codec.encode(OUTCOME, {
                "command_id": self._id("bad"), "command_type": "X", "entity_key": "k",
                "status": "ACCEPTED", "duplicate": False, "reason": None, "event_ids": [],
                "decided_at": 0, "processor": "fuzz"})
        other = self.rng.choice([d for d in self.deciders if d is not decider] or self.deciders)
        return self.encode(template(self.rng.choice(other.commands)))

    def hostile(self, decider: Decider) -> tuple[Message, str]:
        """A command with one value no decider may accept, whatever the state."""
        cls = self.rng.choice(decider.commands)
        command = template(cls, self._key())
        hints = _hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        choices: list[tuple[str, Callable[[Any, Any], Any]]] = []
        for name in names:
            hint = _plain(hints[name])
            origin = typing.get_origin(hint)
            composite = name in cls.composite_ids
            if hint is str:
                choices.append((name, lambda v, _h: f"{v}\x00"))
                if (name.endswith("_id") and not composite) or name == cls.key_field:
                    choices.append((name, lambda _v, _h: self._long_id()))
            elif hint is float:
                choices.append((name, lambda _v, _h: self.rng.choice(
                    [float("nan"), float("inf"), float("-inf")])))
            elif origin is dict:
                choices.append((name, self._hostile_map))
            elif origin is list:
                choices.append((name, lambda _v, h: self._hostile_list(h)))
            elif hint is int and name in BOUNDED_INTS.get(cls.__name__, ()):
                choices.append((name, lambda _v, _h: self.rng.choice([INT64_MAX, INT64_MIN])))
        choices.append((cls.key_field, lambda _v, _h: ""))  # an empty entity key
        name, make = self.rng.choice(choices)
        value = make(getattr(command, name), hints[name])
        category = "empty key" if value == "" else f"hostile {type(value).__name__}"
        return replace(command, **{name: value}), category  # type: ignore[type-var]

    def _long_id(self) -> str:
        size = 100_000 if self.rng.random() < 0.01 else self.rng.randrange(MAX_ID_CHARS + 1, 3000)
        return "i" * size

    def _hostile_map(self, _value: Any, hint: Any) -> dict:
        values = typing.get_args(_plain(hint))[1]
        if self.rng.random() < 0.01:
            return {f"k{i}": _sample(values) for i in range(MAX_ITEMS + 1)}
        if values is float:
            return {"cpu": float("nan")}
        return {"nul\x00key": _sample(values)}

    def _hostile_list(self, hint: Any) -> list:
        if self.rng.random() < 0.01:
            return ["x"] * (MAX_ITEMS + 1)
        return ["nul\x00item"] if typing.get_args(_plain(hint))[0] is str else []

    # Bad input on the registry topic: (key, value, category).
    def registry(self) -> tuple[bytes, bytes, str]:
        key = self._id("schema").encode()
        roll = self.rng.random()
        if roll < 0.3:
            return key, self._bytes(self.rng.randrange(1, 100)), "registry: random bytes"
        if roll < 0.5:
            return key, self.rng.choice([b"[]", b'"x"', b"{}", b'{"subject": 1}', b"null",
                                         b'{"subject": "a", "version": 1, "id": 1, "schema":'
                                         b' "{\\"type\\": 5}"}']), "registry: not a record"
        if roll < 0.8:  # a real schema under an id that is not its fingerprint: would rebind
            name = self.rng.choice(sorted(self.codec.schemas))
            schema = json.dumps(self.codec.schemas[name])
            value = {"subject": name, "version": 1, "id": self.rng.randrange(1, 1 << 31),
                     "schema": schema}
            return key, json.dumps(value).encode(), "registry: wrong id"
        return key, b"[" * 3000 + b"]" * 3000, "registry: nested too deep"

    def valid(self) -> Message:
        """A command some decider accepts (mostly: a cancel may find its execution ended)."""
        from streams.artifacts.catalog import RecordArtifactAccess, StoreArtifact
        from streams.dag.definition import WorkflowBuilder
        from streams.dag.execution import CancelExecution, StartExecution
        from streams.pool.pool import RegisterHost, RegisterModel

        n = self._id("valid")
        roll = self.rng.random()
        if roll < 0.05:  # arbitration: a model it knows, requests for it, some released
            from streams.arbitration.arbiter import DescribeModel, ReleaseRequest, SubmitRequest

            if not self.requests or self.rng.random() < 0.1:
                return DescribeModel("fuzz-arb-model", self.rng.randrange(0, 4))
            if self.rng.random() < 0.5:
                return ReleaseRequest(self.requests.pop(0))
            self.requests.append(f"r-{n}")
            return SubmitRequest(f"r-{n}", "fuzz-arb-model", self.rng.choice(["a", UNICODE]),
                                 self.rng.randrange(-1000, 1001), timeout_ms=0)
        if roll < 0.3:
            return RegisterModel(f"m-{n}-{UNICODE}", f"py://{n}", self.rng.randrange(1, 4096),
                                 self.rng.randrange(0, 1000))
        if roll < 0.45:
            return RegisterHost(f"h-{n}", self.rng.randrange(1, 1 << 20), 4)
        if roll < 0.7:
            address = "sha256:" + self.rng.randbytes(32).hex()
            self.addresses.append(address)
            return StoreArtifact(address, self.rng.randrange(0, 1 << 40),
                                 "application/octet-stream", name=f"doc-{n}",
                                 tags=[UNICODE, "fuzz"], metadata='{"k": "ü"}')
        if roll < 0.8 and self.addresses:
            return RecordArtifactAccess({self.rng.choice(self.addresses): 3}, 1, 2)
        if roll < 0.9 or not self.executions:
            workflow = WorkflowBuilder(f"w-{n}").operator(
                "a", "identity", constants={"value": UNICODE}).build()
            self.executions.append(n)
            return StartExecution(n, workflow.canonical_json())
        return CancelExecution(self.executions.pop(0), "fuzz")


# --- checking ------------------------------------------------------------------------------

@dataclass
class Report:
    inputs: int = 0
    valid: int = 0
    registry: int = 0
    categories: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)  # bad inputs: rejected, dead-lettered...
    registry_dead_letters: int = 0
    projector_dead_letters: int = 0
    stopped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    send_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.stopped

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)

    def lines(self) -> list[str]:
        bad = self.inputs - self.valid
        rate = self.inputs / self.send_seconds if self.send_seconds else 0.0
        rows = [
            ("inputs", f"{self.inputs:,}"),
            ("  valid commands", f"{self.valid:,}"),
            ("  bad, on command topics", f"{bad - self.registry:,}"),
            ("  bad, on _pit.schemas", f"{self.registry:,}"),
            ("dead-lettered (command topics)", f"{self.outcomes['dead-lettered']:,}"),
            ("rejected with a reason", f"{self.outcomes['rejected']:,}"),
            ("dead-lettered (registry, at restart)", f"{self.registry_dead_letters:,}"),
            ("accepted (bad)", f"{self.outcomes['accepted']:,}"),
            ("unanswered (bad)", f"{self.outcomes['unanswered']:,}"),
            ("internal errors", f"{self.outcomes['internal error']:,}"),
            ("projector dead letters", f"{self.projector_dead_letters:,}"),
            ("processes stopped", f"{len(self.stopped)}"
             + (f" ({', '.join(self.stopped)})" if self.stopped else "")),
            ("duration", f"{self.seconds:.1f} s (sending {self.send_seconds:.1f} s)"),
            ("inputs/s (sending)", f"{rate:,.0f}"),
        ]
        width = max(len(name) for name, _ in rows)
        out = [f"{name:<{width}}  {value}" for name, value in rows]
        out += ["", "by category: " + ", ".join(f"{name} {count:,}" for name, count
                                                 in sorted(self.categories.items()))]
        out += [f"PROBLEM: {text}" for text in self.problems]
        out.append("fuzz: OK" if self.ok else "fuzz: FAILED")
        return out


def stopped_tasks(stack: Stack) -> list[str]:
    return [task.get_name() for task in [*stack.tasks, stack.projector_task] if task.done()]


def _history(engine: Engine, settings: Settings, topics: Sequence[str]) -> list[LogRecord]:
    return list(history_source(engine, topics, kafka_log_reader(settings, list(topics))))


def check_answers(report: Report, bad: dict[Position, str], records: Iterable[LogRecord],
                  codec: Codec, topic_of: dict[str, str]) -> None:
    """Every bad command input rejected with a reason or dead-lettered."""
    answered: dict[Position, dict] = {}
    letters: dict[Position, str] = {}
    for record in records:
        if record.value is None:
            continue
        if record.topic == RESULTS:
            decided = codec.decode(record.value).record
            topic = topic_of.get(decided["processor"], "")
            answered[(topic, decided["command_partition"], decided["command_offset"])] = decided
        elif record.topic == DEAD_LETTERS:
            headers = {k: (v or b"").decode("utf-8", "replace") for k, v in record.headers}
            source = (headers.get("pit.source.topic", ""),
                      int(headers.get("pit.source.partition", -1)),
                      int(headers.get("pit.source.offset", -1)))
            letters[source] = headers.get("pit.processor", "")
            if headers.get("pit.processor") == "projector":
                report.projector_dead_letters += 1
            elif headers.get("pit.processor") == "registry":
                report.registry_dead_letters += 1
    for position, category in bad.items():
        outcome = answered.get(position)
        if outcome is not None and outcome["status"] == "ACCEPTED":
            report.outcomes["accepted"] += 1
            report.problem(f"bad input accepted ({category}) at {position}: {outcome}")
        elif outcome is not None and (outcome["reason"] or "").startswith("internal error"):
            report.outcomes["internal error"] += 1
            report.problem(f"{category} at {position}: {outcome['reason'][:200]}")
        elif position in letters:
            report.outcomes["dead-lettered"] += 1
        elif outcome is not None and outcome["reason"]:
            report.outcomes["rejected"] += 1
        else:
            report.outcomes["unanswered"] += 1
            if report.outcomes["unanswered"] <= 3:
                report.problem(f"bad input neither rejected nor dead-lettered ({category})"
                               f" at {position}")
    if report.projector_dead_letters:
        report.problem(f"the projector dead-lettered {report.projector_dead_letters} events:"
                       " a decider let through a value a view cannot hold")


def check_state(report: Report, stack: Stack, bad: dict[Position, str],
                records: list[LogRecord], deciders: Sequence[Decider]) -> None:
    """Deciding the command log without the bad inputs gives the log's events, byte for byte,
    and the views equal views rebuilt from them."""
    from projections.runtime import Projector, create_schema
    from streams.components import views
    from streams.sql import connect

    by_topic: dict[str, list[LogRecord]] = {}
    for record in records:
        by_topic.setdefault(record.topic, []).append(record)
    for decider in deciders:
        commands = [r for r in by_topic.get(decider.command_topic, [])
                    if (r.topic, r.partition, r.offset) not in bad]
        processor = Processor(decider, stack.codec)
        decided: dict[int, list[bytes | None]] = {}
        for output in processor.handle(sorted(commands, key=lambda r: (r.partition, r.offset))):
            if output.topic == decider.event_topic:
                decided.setdefault(output.partition, []).append(output.value)
        logged: dict[int, list[bytes | None]] = {}
        for record in by_topic.get(decider.event_topic, []):
            logged.setdefault(record.partition, []).append(record.value)
        if decided != logged:
            differing = sorted(p for p in set(decided) | set(logged)
                               if decided.get(p) != logged.get(p))
            report.problem(f"{decider.name}: deciding the valid commands alone does not give"
                           f" the logged events (partitions {differing})")
    shadow = connect(f"sqlite:///{stack.settings.data_dir / 'fuzz-rebuild.db'}")
    try:
        rebuilt_views = views(stack.settings)
        create_schema(shadow, rebuilt_views)
        topics = {t for view in rebuilt_views for t in view.topics}
        Projector(shadow, rebuilt_views, archive=False).apply_batch(
            [r for r in records if r.topic in topics])
        for view in rebuilt_views:
            for name in view.table_names:
                if _rows(stack.engine, name) != _rows(shadow, name):
                    report.problem(f"view table {name} differs from its rebuild from the log")
    finally:
        shadow.dispose()


def _rows(engine: Engine, table_name: str) -> list[tuple]:
    from streams.sql import METADATA

    table = METADATA.tables[table_name]
    with engine.connect() as conn:
        return sorted((tuple(row) for row in conn.execute(select(table))), key=repr)


# --- the campaign --------------------------------------------------------------------------

async def campaign(settings: Settings, inputs: int, seed: int, valid_share: float = 0.05,
                   progress: Callable[[str], None] = print) -> Report:
    report = Report()
    started = time.perf_counter()
    stack = Stack(settings, progress=False)
    await stack.start()
    live = stack.settings
    deciders = [d for c in COMPONENTS for d in c.running_deciders(live)]
    topic_of = {f"{d.name}-processor": d.command_topic for d in deciders}
    partitions = {name: spec.partitions for name, spec in load_catalog().items()}
    generator = Generator(seed, deciders)
    partitioner = DefaultPartitioner()
    producer = make_producer(live)
    bad: dict[Position, str] = {}
    def command_output(decider: Decider, key: bytes | None, value: bytes) -> Output:
        count = partitions[decider.command_topic]
        partition = partitioner(key, list(range(count)), list(range(count)))
        return Output(decider.command_topic, partition, key, value, int(time.time() * 1000))

    routes = {cls: d for d in deciders for cls in d.commands}
    try:
        async with PitClient(live, issued_by="fuzz") as client:
            await _make_hot_model(client)
        send_started = time.perf_counter()
        chunk = max(100, min(2000, inputs // 20))
        while report.inputs < inputs:
            outputs, categories = [], []
            for _ in range(min(chunk, inputs - report.inputs)):
                roll = generator.rng.random()
                if roll < valid_share:  # in the same stream, so in order with the rest
                    command = generator.valid()
                    decider = routes[type(command)]
                    outputs.append(command_output(decider, decider.entity_of(command).encode(),
                                                  generator.encode(command, generator._id("ok"))))
                    category = "valid"
                elif roll < valid_share + 0.02:
                    key, value, category = generator.registry()
                    outputs.append(Output(SCHEMAS, 0, key, value, int(time.time() * 1000)))
                else:
                    decider, bad_key, value, category = generator.bad()
                    outputs.append(command_output(decider, bad_key, value))
                categories.append(category)
            offsets: list[int] = []
            await produce_all(producer, outputs, 120.0, offsets=offsets)
            for output, offset, category in zip(outputs, offsets, categories, strict=True):
                report.categories[category] += 1
                if category == "valid":
                    report.valid += 1
                elif output.topic == SCHEMAS:
                    report.registry += 1
                else:
                    bad[(output.topic, output.partition, offset)] = category
            report.inputs += len(outputs)
            # Its answers archived before the next chunk: the embedded broker keeps only the
            # newest ~5 MiB of a partition, and what it drops unarchived is lost.
            await _until_answered(stack, bad, deciders, progress)
            await stack.drain_projector(timeout_s=600)
            elapsed = time.perf_counter() - send_started
            progress(f"fuzz: {report.inputs:,}/{inputs:,} inputs sent"
                     f" ({report.inputs / elapsed:,.0f}/s), processes stopped:"
                     f" {len(stopped_tasks(stack))}")
        report.send_seconds = time.perf_counter() - send_started
        await _until_answered(stack, bad, deciders, progress)
        await _until_quiet(stack, deciders, progress)
        await stack.drain_projector(timeout_s=600)
        report.stopped = stopped_tasks(stack)
        progress("fuzz: checking the answers, the decisions and the views")
        records = await asyncio.to_thread(
            _history, stack.engine, live,
            sorted({RESULTS, DEAD_LETTERS} | {t for d in deciders
                                               for t in (d.command_topic, d.event_topic)}
                   | {t for v in stack.views for t in v.topics}))
        check_answers(report, bad, records, stack.codec, topic_of)
        check_state(report, stack, bad, records, deciders)
    finally:
        await asyncio.to_thread(producer.flush, 10)
        await stack.close()
    progress("fuzz: restarting the Pit on the same directory")
    await _restart_checks(settings, report)
    report.seconds = time.perf_counter() - started
    return report


async def _make_hot_model(client: PitClient) -> None:
    """The issue's case: a Hot model whose usage count is within HOT_ROOM of 64 bits."""
    from streams.pool.lifecycle import RecordModelUsage
    from streams.pool.pool import (
        AllocateModel,
        RegisterHost,
        RegisterModel,
        ReleaseModel,
        ReportModelLoaded,
    )

    for command in (RegisterHost(HOT_HOST, 1 << 20, 64), RegisterModel(HOT_MODEL, "py://hot",
                    100, 10), AllocateModel("fuzz-hot-request", HOT_MODEL, "fuzz"),
                    ReportModelLoaded(HOT_HOST, HOT_MODEL, 10, 100),
                    ReleaseModel("fuzz-hot-request"),
                    RecordModelUsage(HOT_MODEL, INT64_MAX - HOT_ROOM)):
        outcome = await client.send(command, timeout=60)
        if not outcome.accepted:
            raise RuntimeError(f"fuzz set-up: {outcome.line()}")


async def _until_answered(stack: Stack, bad: dict[Position, str], deciders: Sequence[Decider],
                          progress: Callable[[str], None], timeout_s: float = 600) -> None:
    """Wait until each processor has committed past the last bad input of its topic."""
    from aiokafka import TopicPartition

    from streams.kafka import start_consumer, stop_consumer

    last: dict[tuple[str, int], int] = {}
    for topic, partition, offset in bad:
        last[(topic, partition)] = max(offset, last.get((topic, partition), -1))
    readers = {d.command_topic: await start_consumer(
        stack.settings, group_id=f"pit.{d.name}.processor")
        for d in deciders}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            behind = 0
            for (topic, partition), offset in last.items():
                committed = await readers[topic].committed(TopicPartition(topic, partition))
                behind += committed is None or committed <= offset
            if not behind:
                return
            await asyncio.sleep(0.5)
        progress(f"fuzz: processors did not answer everything within {timeout_s:.0f} s")
    finally:
        for reader in readers.values():
            await stop_consumer(reader)


async def _until_quiet(stack: Stack, deciders: Sequence[Decider],
                       progress: Callable[[str], None], timeout_s: float = 300) -> None:
    """Wait until the Pit's own services have stopped sending too (the pool observer tells
    arbitration about every model registered, timers fire): every command partition
    answered to its end, and the ends unmoved for a second. The log read after this is
    whole; read while they still send, a command could be read without its events."""
    from aiokafka import TopicPartition

    from streams.kafka import partitions_of, start_consumer, stop_consumer

    readers = {d.command_topic: await start_consumer(
        stack.settings, group_id=f"pit.{d.name}.processor") for d in deciders}
    deadline = time.monotonic() + timeout_s
    previous: dict[TopicPartition, int] = {}
    try:
        while time.monotonic() < deadline:
            ends: dict[TopicPartition, int] = {}
            behind = 0
            for topic, reader in readers.items():
                tps = [TopicPartition(topic, p) for p in await partitions_of(reader, topic)]
                ends.update(await reader.end_offsets(tps))
                for tp in tps:
                    behind += (await reader.committed(tp) or 0) < ends[tp]
            if not behind and ends == previous:
                return
            previous = ends
            await asyncio.sleep(1.0)
        progress(f"fuzz: the Pit's services did not go quiet within {timeout_s:.0f} s")
    finally:
        for reader in readers.values():
            await stop_consumer(reader)


async def _restart_checks(settings: Settings, report: Report) -> None:
    from projections import audit

    stack = Stack(settings, progress=False)
    try:
        await stack.start()
    except Exception as exc:
        report.problem(f"the Pit does not start again: {exc!r}")
        return
    try:
        await stack.drain_projector(timeout_s=300)
        records = await asyncio.to_thread(_history, stack.engine, stack.settings,
                                          [DEAD_LETTERS])
        report.registry_dead_letters = sum(
            1 for r in records if dict(r.headers).get("pit.processor") == b"registry")
        if report.registry_dead_letters < report.registry:
            report.problem(f"{report.registry - report.registry_dead_letters} corrupt registry"
                           " records were not dead-lettered at the restart")
        verified = await asyncio.to_thread(audit.verify, stack.engine)
        if not verified.ok:
            report.problem("pit audit verify: " + "; ".join(verified.lines()[:3]))
        report.stopped += [f"{name} (after the restart)" for name in stopped_tasks(stack)]
    finally:
        await stack.close()


# --- the command ---------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inputs", type=int, default=100_000,
                        help="inputs to send, valid ones included (default 100,000)")
    parser.add_argument("--seed", type=int, default=11, help="the generator's seed")
    parser.add_argument("--valid-share", type=float, default=0.05,
                        help="share of valid commands among the inputs (default 0.05)")
    parser.add_argument("--data-dir", type=Path,
                        help="where the fuzzed Pit keeps its state (default: a temporary"
                             " directory, removed afterwards)")
    parser.add_argument("--db-url", help="its database (default: SQLite in the data dir)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    temporary = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="pit-fuzz-")) if temporary else args.data_dir
    fuzzed = replace(settings, data_dir=data_dir, bootstrap_servers=None,
                     database_url=args.db_url, http_port=settings.http_port)
    logging.getLogger("streams").setLevel(logging.ERROR)  # thousands of expected warnings
    logging.getLogger("projections").setLevel(logging.ERROR)
    try:
        report = asyncio.run(campaign(fuzzed, args.inputs, args.seed, args.valid_share))
    finally:
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1

