"""The execution decider (issue 4, seed M3.2): what runs next in one workflow execution, how
a failed node recovers, when the execution ends. Pure: no I/O, no wall clock (time arrives as
`now_ms`), deterministic; the entity is the execution (key = execution id).

Runners do the work: the decider emits `NodeScheduled` (the task: node, attempt, resolved
inputs, resources, priority, deadline) and runners report back (`ReportNodeStarted`,
`ReportNodeCompleted`, `ReportNodeFailed`, each naming its attempt). Timers are durable
events (streams/timers.py): the decider emits `TimerScheduled` with a deterministic id and the
`TimerFired` command to send back, and `TimerCancelled` once a timer has no purpose left.
Timer ids: "<execution>/timeout", "<execution>/<node>/timeout/<attempt>" and
"<execution>/<node>/retry/<attempt>" (node ids hold no "/").

The events are the issue's list plus `ExecutionRestarted` (a restart from a checkpoint is a
fact of its own) and the timer requests. A definition travels inline as canonical JSON, or
by content hash when larger than 256 KiB (read through `Definitions`' store). The start's
`inputs` give values to node inputs the definition feeds with a constant ("node.input"), so
a valid definition stays valid. Outputs travel inline as a JSON object {output: value}, or
as a blob hash; a task receives a blob-held input as a reference {"hash", "path"}.
Bounds are per execution (its entity): a limit across executions is the runners' to keep.

`decide` builds its answer by evolving a working copy event by event (`_Decision`), as the
pool decider does, so what it decides is what a replay of its events reproduces. `evolve` is
O(what changed): the node runs live in a persistent vector (`PVec`: a change copies one
64-entry chunk and the chunk index), each node keeps its count of unresolved incoming edges,
and each runner pool a persistent ready queue (`ReadyQueue`), so no decision rescans the
graph. Static facts about the graph (edges by node, ranks, resources) live in a `Plan` built
once per definition hash.

Rules (written down where the issue leaves them open):
* A node is ready once every incoming edge is resolved: its source completed, fell back or
  was skipped. An edge is live if its source has that output (an untaken branch output is
  missing; an untaken-branch node has no outputs at all). A node whose incoming edges are all
  dead is skipped (NodeSkipped, reason "branch"), transitively; a node with at least one live
  edge runs, a dead input being null. A node skipped by its recovery has its default output
  on "out", so the nodes it feeds run.
* Ready nodes wait in their runner pool's queue (instrument: instruments and maps over a
  model; operator: the rest), ordered by priority (higher first), then critical-path rank
  (longer first), then node id. A node is dispatched while the execution has fewer than
  `max_concurrency` nodes holding a slot and its pool's free cpu and memory hold it. A pool
  whose best node does not fit waits for it (no overtaking, so a big node is not starved);
  the best node of the pools that fit goes first. A node that could never fit is refused when
  the execution starts.
* Reports name their attempt. An attempt that was never dispatched is rejected; an earlier
  attempt (stale) or a repeated report is accepted and changes nothing. Once the execution
  ended, every report and timer is accepted and changes nothing (checked first: an ended
  execution may be held as its `final` record, which has no nodes).
* Recovery (the node's, else the workflow's default): retry with backoff while attempts
  remain and the error is retryable (a runner's retryable=false or a type in
  `non_retryable` goes straight to `on_exhausted`); a node waiting for its retry keeps its
  slot and resources, so newer work does not starve it. Fallback completes the node with a
  value, or with another node's output, waiting (in state Failed) until that node has one.
  Skip completes it with its default output. Fail fails the execution. Restart goes back to
  the last checkpoint (the start without one): the work recorded after it is run again,
  attempt numbers keep growing (so reports from before are stale), and a node may restart
  the execution at most `max_attempts - 1` times before the workflow fails.
* A node's timeout runs from its dispatch (so a lost task times out too): a `Timeout` failure
  that goes through its recovery. The workflow timeout ends the execution (ExecutionTimedOut).
  When the execution ends, nodes still unfinished are cancelled (their terminal state) and
  pending timers are cancelled.
* A checkpoint (TakeCheckpoint, or every `checkpoint_every` completed nodes) emits
  CheckpointTaken with a compact snapshot (zlib JSON of what evolve cannot derive);
  `restore(snapshot, tail)` equals the full replay, and reads no earlier event. The DAG
  processor also asks for one (TakeCheckpoint) when an execution's last checkpoint lies far
  behind its partition's head (streams/recovery.py), so a restart reads a bounded tail.
* An ended execution decides every command as its `final` record does (status, definition
  hash, inputs, times, error): what the checkpoint topic keeps of it once it ended.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache, partial
from typing import Any

from streams.dag.definition import (
    FALSE,
    INLINE_LIMIT_BYTES,
    OUT,
    TRUE,
    DefinitionStore,
    Node,
    NodeKind,
    OperatorRegistry,
    Recovery,
    Strategy,
    Workflow,
    backoff_ms,
    check,
    item_input_of,
    workflow_from_json,
)
from streams.dag.errors import DefinitionStoreError, InvalidWorkflowError
from streams.dag.topics import DAG_CHECKPOINTS, DAG_COMMANDS, DAG_EVENTS
from streams.decider import (
    CheckpointTopic,
    Decided,
    Decider,
    Decision,
    Message,
    Rejection,
    Rules,
    copy_with,
    fits_int64,
)
from streams.timers import TIMER_EVENTS, TimerScheduled, cancel_timer, schedule_timer

DEFAULT_MAX_CONCURRENCY = 1024
POOLS = ("instrument", "operator")  # runner pools, by what their nodes need
TIMEOUT = "Timeout"                 # the error type of a node attempt that ran out of time
INVALID_OUTPUT = "InvalidOutput"    # a report whose output does not fit the node


def task_id(execution_id: str, node_id: str, attempt: int) -> str:
    """An attempt's task id, as NodeScheduled carries it (node ids hold no "/")."""
    return f"{execution_id}/{node_id}/{attempt}"


def runner_pool(node: Node) -> str:
    """The runner pool a node runs in. (For streams/dag/definition.py: a `Node.pool` field
    would replace this.) Instruments need a model through the Pool Manager; the rest is
    Python."""
    uses_model = node.kind == NodeKind.INSTRUMENT or (node.kind == NodeKind.MAP and node.model)
    return POOLS[0] if uses_model else POOLS[1]


# One canonical encoder, made once: json.dumps with options makes one per call.
_json = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                         allow_nan=False).encode


# --- persistent structures ------------------------------------------------------------------

_CHUNK_BITS = 6
_CHUNK = 1 << _CHUNK_BITS
_LOW = _CHUNK - 1


class PVec:
    """An immutable list whose `set`/`update` copy the touched 64-entry chunks and the chunk
    index, not the list: at 10,000 nodes a change copies about 220 slots. Equal by content."""

    __slots__ = ("_chunks", "_len")

    def __init__(self, chunks: tuple[tuple, ...] = (), length: int = 0) -> None:
        self._chunks, self._len = chunks, length

    @classmethod
    def of(cls, items: list) -> PVec:
        return cls(tuple(tuple(items[k:k + _CHUNK]) for k in range(0, len(items), _CHUNK)),
                   len(items))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> Any:
        return self._chunks[i >> _CHUNK_BITS][i & _LOW]

    def __iter__(self) -> Iterator[Any]:
        for chunk in self._chunks:
            yield from chunk

    def update(self, changes: Mapping[int, Any]) -> PVec:
        if not changes:
            return self
        chunks = list(self._chunks)
        touched: dict[int, list] = {}
        for i, value in changes.items():
            c = i >> _CHUNK_BITS
            chunk = touched.get(c)
            if chunk is None:
                chunk = touched[c] = list(chunks[c])
            chunk[i & _LOW] = value
        for c, chunk in touched.items():
            chunks[c] = tuple(chunk)
        return PVec(tuple(chunks), self._len)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PVec):
            return NotImplemented
        return self._len == other._len and self._chunks == other._chunks

    # Unhashable: defining __eq__ without __hash__ sets __hash__ to None.

    def __repr__(self) -> str:
        return f"PVec({list(self)!r})"


Key = tuple[int, float, int]  # (-priority, -rank, node index): the smallest is dispatched first
_Heap = tuple | None          # a leftist heap: None or (key, rank, left, right)


def _meld(a: _Heap, b: _Heap) -> _Heap:
    if a is None:
        return b
    if b is None:
        return a
    if b[0] < a[0]:
        a, b = b, a
    left, right = a[2], _meld(a[3], b)
    assert right is not None  # melding with a heap (b) gives a heap
    if left is None or left[1] < right[1]:
        left, right = right, left
    return (a[0], (right[1] if right is not None else 0) + 1, left, right)


def _heap_keys(heap: _Heap, out: list[Key]) -> None:
    stack = [heap]
    while stack:
        node = stack.pop()
        if node is not None:
            out.append(node[0])
            stack.extend((node[2], node[3]))


@dataclass(frozen=True, slots=True, eq=False)
class ReadyQueue:
    """One runner pool's ready nodes, best first. Persistent: a sorted tuple read through a
    cursor (the nodes ready together, e.g. at the start) plus a leftist heap (the nodes that
    became ready one by one); push and pop are O(log n) and copy nothing else."""

    sorted_keys: tuple[Key, ...] = ()
    cursor: int = 0
    heap: _Heap = None
    size: int = 0

    @classmethod
    def of(cls, keys: Iterable[Key]) -> ReadyQueue:
        ordered = tuple(sorted(keys))
        return cls(ordered, 0, None, len(ordered))

    def head(self) -> Key | None:
        base = self.sorted_keys[self.cursor] if self.cursor < len(self.sorted_keys) else None
        if self.heap is None or (base is not None and base < self.heap[0]):
            return base
        return self.heap[0]

    def push(self, key: Key) -> ReadyQueue:
        if self.size == 0:
            return ReadyQueue((key,), 0, None, 1)
        return ReadyQueue(self.sorted_keys, self.cursor, _meld(self.heap, (key, 1, None, None)),
                          self.size + 1)

    def push_all(self, keys: Sequence[Key]) -> ReadyQueue:
        """With `keys` too. Nodes made ready together (a fan-out's thousands) become one
        sorted run when they outnumber those queued: a pop from it moves the cursor, where
        one from the heap melds its two halves."""
        if len(keys) < 2 or len(keys) < self.size:
            queue = self
            for key in keys:
                queue = queue.push(key)
            return queue
        return ReadyQueue.of([*self.keys(), *keys])

    def remove(self, key: Key) -> ReadyQueue:
        """Without `key`: a pop when it is the head (how the decider dispatches)."""
        base = self.sorted_keys[self.cursor] if self.cursor < len(self.sorted_keys) else None
        if key == base:
            return ReadyQueue(self.sorted_keys, self.cursor + 1, self.heap, self.size - 1)
        if self.heap is not None and key == self.heap[0]:
            return ReadyQueue(self.sorted_keys, self.cursor, _meld(self.heap[2], self.heap[3]),
                              self.size - 1)
        return ReadyQueue.of(k for k in self.keys() if k != key)

    def keys(self) -> list[Key]:
        out = list(self.sorted_keys[self.cursor:])
        _heap_keys(self.heap, out)
        return sorted(out)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReadyQueue):
            return NotImplemented
        return self.size == other.size and self.keys() == other.keys()

    # Unhashable: defining __eq__ without __hash__ sets __hash__ to None (eq=False keeps it).


# --- the plan: static facts of one definition -----------------------------------------------

@dataclass(frozen=True, eq=False)
class Plan:
    """Index arrays over a validated workflow, built once per definition hash. Node i is
    `ids[i]` (ids sorted, as in the definition)."""

    workflow: Workflow
    definition_hash: str
    ids: tuple[str, ...]
    index: Mapping[str, int]
    pool: tuple[int, ...]          # index into POOLS
    cpu_m: tuple[int, ...]         # milli-cpu: sums stay exact
    memory_mb: tuple[int, ...]
    key: tuple[Key, ...]
    inputs: tuple[tuple[tuple[int, str, str], ...], ...]  # (source, its output, input)
    outputs: tuple[tuple[tuple[int, str], ...], ...]      # (target, output), per out-edge
    targets: tuple[tuple[int, ...], ...]                  # distinct targets
    fallback_to: tuple[int, ...]                          # its fallback node, or -1
    fallback_for: tuple[tuple[int, ...], ...]             # the nodes that fall back to it
    sinks: tuple[int, ...]

    @classmethod
    def of(cls, workflow: Workflow, definition_hash: str) -> Plan:
        graph = workflow.graph
        index = graph.index
        nodes = workflow.nodes
        rank = graph.critical_path_rank()
        inputs: list[list[tuple[int, str, str]]] = [[] for _ in nodes]
        outputs: list[list[tuple[int, str]]] = [[] for _ in nodes]
        for edge in workflow.edges:
            source, target = index[edge.from_node], index[edge.to_node]
            inputs[target].append((source, edge.from_output, edge.to_input))
            outputs[source].append((target, edge.from_output))
        fallback_to = [-1] * len(nodes)
        fallback_for: list[list[int]] = [[] for _ in nodes]
        for i, node in enumerate(nodes):
            rec = workflow.recovery_of(node)
            if rec.fallback_node and Strategy.FALLBACK in (rec.strategy, rec.on_exhausted):
                fallback_to[i] = index[rec.fallback_node]
                fallback_for[fallback_to[i]].append(i)
        return cls(
            workflow, definition_hash, graph.ids, index,
            tuple(POOLS.index(runner_pool(n)) for n in nodes),
            tuple(round(n.resources.cpu * 1000) for n in nodes),
            tuple(n.resources.memory_mb for n in nodes),
            tuple((-n.priority, -rank[i], i) for i, n in enumerate(nodes)),
            tuple(map(tuple, inputs)), tuple(map(tuple, outputs)), graph.dependents,
            tuple(fallback_to), tuple(map(tuple, fallback_for)), tuple(graph.sinks))

    @property
    def size(self) -> int:
        return len(self.ids)

    def node(self, i: int) -> Node:
        return self.workflow.nodes[i]

    def recovery(self, i: int) -> Recovery:
        return self.workflow.recovery_of(self.workflow.nodes[i])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and other.definition_hash == self.definition_hash

    # Unhashable: defining __eq__ without __hash__ sets __hash__ to None (eq=False keeps it).


class Definitions:
    """Where the decider finds a definition: plans cached by content hash (a hash names one
    content, so the cache cannot change an answer) and, for definitions started by hash, a
    `DefinitionStore` (content-addressed too, so reading it keeps decide deterministic).

    An inline definition is also known by its text: the same text is the same content, so
    a workflow started again and again is not parsed and hashed again on every start (for a
    20-node chain that was 0.36 ms of each start, measured alone; py-spy found it in 4% of
    `pit up`'s samples while 20-node chains ran back to back)."""

    def __init__(self, store: DefinitionStore | None = None,
                 registry: OperatorRegistry | None = None, cache_size: int = 16) -> None:
        self.store, self.registry, self.cache_size = store, registry, cache_size
        self._plans: OrderedDict[str, Plan] = OrderedDict()
        self._hashes: OrderedDict[str, str] = OrderedDict()  # an inline text -> its hash

    def load(self, definition: str, definition_hash: str) -> Plan:
        """A StartExecution's definition, validated; a Rejection says why it cannot run."""
        workflow: Workflow | None = None
        try:
            if definition:
                found, workflow = self._inline(definition)
                if definition_hash and definition_hash != found:
                    raise Rejection(f"definition_hash {definition_hash} does not match the"
                                    f" definition ({found})")
                definition_hash = found
            elif not definition_hash:
                raise Rejection("a definition or a definition_hash is required")
            if definition_hash in self._plans:
                return self._cached(definition_hash)  # validated when it was first started
            if workflow is None:
                workflow = (workflow_from_json(definition) if definition
                            else self._stored(definition_hash))
            check(workflow, self.registry)
        except (InvalidWorkflowError, DefinitionStoreError) as exc:
            raise Rejection(str(exc)) from None
        return self._remember(Plan.of(workflow, definition_hash))

    def _inline(self, definition: str) -> tuple[str, Workflow | None]:
        """The content hash of an inline definition, and the workflow when it had to be
        parsed for it (not when its text was seen before); a Rejection if it is too large
        to travel inline."""
        found = self._hashes.get(definition)
        if found is not None:
            self._hashes.move_to_end(definition)
            return found, None
        workflow = workflow_from_json(definition)
        found = workflow.content_hash()
        if workflow.is_large:
            raise Rejection(f"definition {found} is {len(workflow.canonical_bytes)} bytes,"
                            f" more than {INLINE_LIMIT_BYTES} travel inline: put it in the"
                            " definition store and start it by hash")
        self._hashes[definition] = found
        while len(self._hashes) > self.cache_size:
            self._hashes.popitem(last=False)
        return found, workflow

    def plan(self, definition_hash: str, definition: str = "") -> Plan:
        """The plan of a definition already accepted (for evolve and restore)."""
        if definition_hash in self._plans:
            return self._cached(definition_hash)
        workflow = workflow_from_json(definition) if definition else self._stored(
            definition_hash)
        return self._remember(Plan.of(workflow, definition_hash))

    def _stored(self, definition_hash: str) -> Workflow:
        if self.store is None:
            raise DefinitionStoreError(f"definition {definition_hash} is not inline and no"
                                       " definition store is configured")
        return self.store.get(definition_hash)

    def _cached(self, definition_hash: str) -> Plan:
        self._plans.move_to_end(definition_hash)
        return self._plans[definition_hash]

    def _remember(self, plan: Plan) -> Plan:
        self._plans[plan.definition_hash] = plan
        while len(self._plans) > self.cache_size:
            self._plans.popitem(last=False)
        return plan


DEFINITIONS = Definitions()


# --- commands -------------------------------------------------------------------------------

class _Execution(Message):
    key_field = "execution_id"


@dataclass(frozen=True)
class StartExecution(_Execution):
    avro_name = "pit.dag.StartExecution"
    execution_id: str
    definition: str = ""        # canonical JSON, or empty with definition_hash
    definition_hash: str = ""
    inputs: str = "{}"          # {"node.input": value} for inputs fed by a constant
    max_concurrency: int = 0    # 0: the definition's, else DEFAULT_MAX_CONCURRENCY
    capacity_cpu: dict[str, float] = field(default_factory=dict)   # per runner pool
    capacity_memory_mb: dict[str, int] = field(default_factory=dict)
    timeout_ms: int = 0         # 0: the definition's
    checkpoint_every: int = -1  # -1: the definition's; 0: no periodic checkpoints
    tenant: str = ""            # whose it is: its instrument nodes' allocations are arbitrated


# A runner's report and the event that records it carry the same fields.

@dataclass(frozen=True)
class _Started(_Execution):
    execution_id: str
    node_id: str
    attempt: int
    runner: str = ""


@dataclass(frozen=True)
class _Completion(_Execution):
    execution_id: str
    node_id: str
    attempt: int
    output: str = ""          # a JSON object {output name: value}
    output_hash: str = ""     # or the blob that holds it
    branch_taken: str = ""    # a branch reported by hash: "true" or "false"
    duration_ms: int = 0
    runner: str = ""


@dataclass(frozen=True)
class _Failure(_Execution):
    execution_id: str
    node_id: str
    attempt: int
    error_type: str
    message: str = ""
    retryable: bool = True
    duration_ms: int = 0
    runner: str = ""


@dataclass(frozen=True)
class ReportNodeStarted(_Started):
    avro_name = "pit.dag.ReportNodeStarted"


@dataclass(frozen=True)
class ReportNodeCompleted(_Completion):
    avro_name = "pit.dag.ReportNodeCompleted"


@dataclass(frozen=True)
class ReportNodeFailed(_Failure):
    avro_name = "pit.dag.ReportNodeFailed"


@dataclass(frozen=True)
class TimerFired(_Execution):
    avro_name = "pit.dag.TimerFired"
    composite_ids = ("timer_id",)
    execution_id: str
    timer_id: str


@dataclass(frozen=True)
class CancelExecution(_Execution):
    avro_name = "pit.dag.CancelExecution"
    execution_id: str
    reason: str = ""


@dataclass(frozen=True)
class TakeCheckpoint(_Execution):
    avro_name = "pit.dag.TakeCheckpoint"
    execution_id: str


# --- events ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExecutionStarted(_Execution):
    avro_name = "pit.dag.ExecutionStarted"
    execution_id: str
    workflow: str
    definition_hash: str
    definition: str          # canonical JSON; empty when only stored by hash
    inputs: str
    max_concurrency: int
    capacity_cpu: dict[str, float]
    capacity_memory_mb: dict[str, int]
    timeout_ms: int
    deadline_at: int         # 0: none
    checkpoint_every: int
    nodes: int
    tenant: str = ""


@dataclass(frozen=True)
class NodeScheduled(_Execution):
    avro_name = "pit.dag.NodeScheduled"
    execution_id: str
    node_id: str
    attempt: int
    task_id: str
    kind: str
    spec: str          # JSON: model, operator, condition, item_input, params
    inputs: str        # JSON object of inline input values
    input_refs: str    # JSON object {input: {"hash": h, "path": [...]}}
    pool: str
    cpu: float
    memory_mb: int
    priority: int
    rank: float
    deadline_at: int   # 0: none
    tenant: str = ""   # the execution's: a model allocation is arbitrated for it


@dataclass(frozen=True)
class NodeStarted(_Started):
    avro_name = "pit.dag.NodeStarted"


@dataclass(frozen=True)
class NodeCompleted(_Completion):
    avro_name = "pit.dag.NodeCompleted"


@dataclass(frozen=True)
class NodeFailed(_Failure):
    """error type Timeout: the attempt's deadline passed (its timer fired first)."""
    avro_name = "pit.dag.NodeFailed"


@dataclass(frozen=True)
class NodeRetryScheduled(_Execution):
    avro_name = "pit.dag.NodeRetryScheduled"
    execution_id: str
    node_id: str
    attempt: int        # the attempt that failed
    next_attempt: int
    delay_ms: int
    due_at: int
    timer_id: str


@dataclass(frozen=True)
class NodeSkipped(_Execution):
    avro_name = "pit.dag.NodeSkipped"
    execution_id: str
    node_id: str
    reason: str             # "branch" | "recovery"
    output: str = ""        # JSON object of its outputs; empty: none
    error_type: str = ""


@dataclass(frozen=True)
class FallbackUsed(_Execution):
    avro_name = "pit.dag.FallbackUsed"
    execution_id: str
    node_id: str
    fallback_node: str = ""   # empty: a value
    output: str = ""          # JSON object of its outputs, or empty with output_hash
    output_hash: str = ""
    output_path: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CheckpointTaken(_Execution):
    avro_name = "pit.dag.CheckpointTaken"
    execution_id: str
    checkpoint: int
    snapshot: bytes
    nodes_done: int = 0


@dataclass(frozen=True)
class ExecutionRestarted(_Execution):
    avro_name = "pit.dag.ExecutionRestarted"
    execution_id: str
    node_id: str
    checkpoint: int = 0       # 0: the start
    reason: str = ""


@dataclass(frozen=True)
class ExecutionCompleted(_Execution):
    avro_name = "pit.dag.ExecutionCompleted"
    execution_id: str
    outputs: str = "{}"       # {sink: outputs}; empty when too large for an event
    duration_ms: int = 0
    completed: int = 0
    skipped: int = 0
    fallbacks: int = 0


@dataclass(frozen=True)
class ExecutionFailed(_Execution):
    avro_name = "pit.dag.ExecutionFailed"
    execution_id: str
    node_id: str = ""
    error_type: str = ""
    message: str = ""


@dataclass(frozen=True)
class ExecutionCancelled(_Execution):
    avro_name = "pit.dag.ExecutionCancelled"
    execution_id: str
    reason: str = ""


@dataclass(frozen=True)
class ExecutionTimedOut(_Execution):
    avro_name = "pit.dag.ExecutionTimedOut"
    execution_id: str
    timeout_ms: int = 0


# --- state ----------------------------------------------------------------------------------

class NodeStatus(IntEnum):
    PENDING = 0     # waiting for dependencies
    READY = 1       # in its pool's ready queue
    SCHEDULED = 2   # dispatched to the runners
    RUNNING = 3     # a runner started it
    RETRYING = 4    # failed; waits for its retry timer, holding its slot
    FAILED = 5      # failed; waiting for its fallback node, or the one that failed the run
    COMPLETED = 6
    FALLBACK = 7    # completed with its fallback
    SKIPPED = 8
    CANCELLED = 9   # the execution ended first


class ExecutionStatus(IntEnum):
    NEW = 0
    RUNNING = 1
    COMPLETED = 2
    FAILED = 3
    CANCELLED = 4
    TIMED_OUT = 5


P, READY, SCHEDULED, RUNNING, RETRYING, FAILED, COMPLETED, FALLBACK, SKIPPED, CANCELLED = (
    NodeStatus)
RESOLVED = frozenset({COMPLETED, FALLBACK, SKIPPED})    # its outgoing edges are settled
IN_FLIGHT = frozenset({SCHEDULED, RUNNING, RETRYING})  # holds a slot and resources
TERMINAL = RESOLVED | {CANCELLED}
_NO_COUNTS = (0,) * len(NodeStatus)


@dataclass(frozen=True, slots=True)
class Ref:
    """An output value held in the blob store: the JSON at `path` inside blob `hash`."""

    hash: str
    path: tuple[str, ...] = ()


_MISSING = object()


def output_value(output: Any, name: str) -> Any:
    """A node's output `name`: a JSON value, a Ref, or _MISSING (a dead edge)."""
    if isinstance(output, Ref):
        return Ref(output.hash, (*output.path, name))
    if isinstance(output, dict):
        return output.get(name, _MISSING)
    return _MISSING


@dataclass(frozen=True, slots=True)
class NodeRun:
    status: NodeStatus = P
    remaining: int = 0      # incoming edges not resolved yet
    live: int = 0           # resolved incoming edges whose source has the output
    attempt: int = 0        # the last attempt dispatched; never reused, also across restarts
    tries: int = 0          # attempts since the start or the restart: the retry budget
    restarts: int = 0       # restarts this node caused
    output: Any = None      # dict {name: JSON value or Ref}, a Ref (all of it), None: none
    scheduled_at: int = 0
    started_at: int = 0
    error: str = ""         # the last failure: "ErrorType: message"
    runner: str = ""        # the runner that reported the attempt started


@dataclass(frozen=True, slots=True)
class PoolRun:
    name: str
    cpu_m: float            # capacity (inf: unbounded)
    memory_mb: float
    used_cpu_m: int = 0
    used_memory_mb: int = 0
    ready: ReadyQueue = field(default_factory=ReadyQueue)


@dataclass(frozen=True, slots=True)
class ExecutionState:
    execution_id: str
    status: ExecutionStatus = ExecutionStatus.NEW
    plan: Plan | None = None
    nodes: PVec = field(default_factory=PVec)
    pools: tuple[PoolRun, ...] = ()
    slots: int = 0                  # nodes in flight (scheduled, running, retrying)
    counts: tuple[int, ...] = _NO_COUNTS  # nodes per NodeStatus
    inputs: str = "{}"
    max_concurrency: int = 0
    started_at: int = 0
    timeout_ms: int = 0
    deadline_at: int = 0
    checkpoint_every: int = 0
    checkpoint: int = 0             # the last checkpoint taken (0: none)
    since_checkpoint: int = 0       # nodes completed since
    durations: tuple[tuple[str, int, int], ...] = ()  # (kind, count, total ms), by kind
    ended_at: int = 0
    error: str = ""
    base: ExecutionState | None = None  # where a restart goes back to (without its base)
    definition_hash: str = ""       # what it was started with: kept once ended (`final`)
    tenant: str = ""                # whose execution it is (StartExecution.tenant)

    @property
    def running(self) -> bool:
        return self.status is ExecutionStatus.RUNNING

    @property
    def done(self) -> int:
        counts = self.counts
        return counts[COMPLETED] + counts[FALLBACK] + counts[SKIPPED]

    def node(self, node_id: str) -> NodeRun:
        assert self.plan is not None  # a started execution has its plan
        return self.nodes[self.plan.index[node_id]]

    def overrides(self, i: int) -> dict[str, Any]:
        """The execution's input values for node i."""
        assert self.plan is not None  # a started execution has its plan
        prefix = self.plan.ids[i] + "."
        return {key[len(prefix):]: value for key, value in _inputs(self.inputs).items()
                if key.startswith(prefix)}


@lru_cache(maxsize=64)
def _inputs(text: str) -> dict[str, Any]:
    return json.loads(text)  # read only


def initial_state(execution_id: str) -> ExecutionState:
    return ExecutionState(execution_id)


# --- evolve: apply one fact -----------------------------------------------------------------

class _Change:
    """The changes one event makes, gathered and applied at once (`state()`): the node runs
    it touches, with status counts, slots and pool usage kept in step."""

    __slots__ = ("counts", "fields", "plan", "pools", "runs", "s", "slots")

    def __init__(self, s: ExecutionState) -> None:
        assert s.plan is not None  # node events come after the start, which set the plan
        self.s = s
        self.plan: Plan = s.plan
        self.runs: dict[int, NodeRun] = {}
        self.fields: dict[str, object] = {}  # ExecutionState fields to replace
        self.pools: list[PoolRun] | None = None
        self.counts: list[int] | None = None
        self.slots = s.slots

    def run(self, i: int) -> NodeRun:
        run = self.runs.get(i)
        return self.s.nodes[i] if run is None else run

    def put(self, i: int, run: NodeRun) -> None:
        """Node i's run is now `run`. A node leaving READY leaves its queue here; nodes
        become READY only in `resolve`, which queues them all at once."""
        old = self.run(i)
        if old.status is not run.status:
            if self.counts is None:
                self.counts = list(self.s.counts)
            self.counts[old.status] -= 1
            self.counts[run.status] += 1
            plan = self.plan
            if (old.status in IN_FLIGHT) != (run.status in IN_FLIGHT):
                sign = 1 if run.status in IN_FLIGHT else -1
                self.slots += sign
                pool = self.pool(plan.pool[i])
                self.set_pool(plan.pool[i], copy_with(
                    pool, used_cpu_m=pool.used_cpu_m + sign * plan.cpu_m[i],
                    used_memory_mb=pool.used_memory_mb + sign * plan.memory_mb[i]))
            if old.status is READY:
                p = plan.pool[i]
                pool = self.pool(p)
                self.set_pool(p, copy_with(pool, ready=pool.ready.remove(plan.key[i])))
        self.runs[i] = run

    def pool(self, p: int) -> PoolRun:
        return (self.s.pools if self.pools is None else self.pools)[p]

    def set_pool(self, p: int, pool: PoolRun) -> None:
        if self.pools is None:
            self.pools = list(self.s.pools)
        self.pools[p] = pool

    def resolve(self, i: int, run: NodeRun) -> None:
        """Node i completed, fell back or was skipped: its edges settle; the targets they
        leave with nothing to wait for and something to run on become ready."""
        self.put(i, run)
        output = run.output
        for target, name in self.plan.outputs[i]:
            t = self.run(target)
            live = t.live + (output is not None and output_value(output, name) is not _MISSING)
            self.runs[target] = copy_with(t, remaining=t.remaining - 1, live=live)
        keys: dict[int, list[Key]] = {}  # by pool, the nodes made ready
        for target in self.plan.targets[i]:  # distinct: a node fed twice by i is queued once
            t = self.runs[target]
            if t.status is P and t.remaining == 0 and t.live > 0:
                self.put(target, copy_with(t, status=READY))
                keys.setdefault(self.plan.pool[target], []).append(self.plan.key[target])
        for p, queued in keys.items():
            pool = self.pool(p)
            self.set_pool(p, copy_with(pool, ready=pool.ready.push_all(queued)))

    def state(self) -> ExecutionState:
        s, changes = self.s, self.fields
        if self.runs:
            changes["nodes"] = s.nodes.update(self.runs)
        if self.pools is not None:
            changes["pools"] = tuple(self.pools)
        if self.counts is not None:
            changes["counts"] = tuple(self.counts)
        if self.slots != s.slots:
            changes["slots"] = self.slots
        return copy_with(s, **changes) if changes else s


def _parse_output(text: str, output_hash: str, branch_taken: str = "",
                  path: Iterable[str] = ()) -> Any:
    if text:
        return json.loads(text)
    ref = Ref(output_hash, tuple(path))
    return {branch_taken: output_value(ref, branch_taken)} if branch_taken else ref


def _observed(durations: tuple[tuple[str, int, int], ...], kind: str,
              ms: int) -> tuple[tuple[str, int, int], ...]:
    table = {k: (n, total) for k, n, total in durations}
    n, total = table.get(kind, (0, 0))
    table[kind] = (n + 1, total + ms)
    return tuple((k, n, total) for k, (n, total) in sorted(table.items()))


def _ended(s: ExecutionState, status: ExecutionStatus, at_ms: int,
           error: str = "") -> ExecutionState:
    """The execution ends: what has not finished is cancelled, nothing holds a slot."""
    assert s.plan is not None  # a running execution has its plan
    ended = copy_with(s, status=status, ended_at=at_ms, error=error)
    if s.done == s.plan.size:
        return ended  # completed: every node is resolved already
    runs = [run if run.status in TERMINAL or run.status is FAILED
            else copy_with(run, status=CANCELLED) for run in s.nodes]
    return _rebuilt(ended, runs)


def _rebuilt(s: ExecutionState, runs: list[NodeRun]) -> ExecutionState:
    """`s` with node runs whose statuses and outputs are given: the counters, ready queues,
    slots and pool usage that evolve keeps step by step, recounted (restore and restart)."""
    plan = s.plan
    assert plan is not None  # set before the node runs are (re)built
    counts = [0] * len(NodeStatus)
    ready: list[list[Key]] = [[] for _ in POOLS]
    used = [[0, 0] for _ in POOLS]
    slots = 0
    for i, run in enumerate(runs):
        remaining = live = 0
        for source, name, _ in plan.inputs[i]:
            src = runs[source]
            if src.status in RESOLVED:
                live += output_value(src.output, name) is not _MISSING
            else:
                remaining += 1
        status = run.status
        if status is P and remaining == 0 and (live > 0 or not plan.inputs[i]):
            status = READY
        if status is READY:
            ready[plan.pool[i]].append(plan.key[i])
        elif status in IN_FLIGHT:
            slots += 1
            used[plan.pool[i]][0] += plan.cpu_m[i]
            used[plan.pool[i]][1] += plan.memory_mb[i]
        counts[status] += 1
        runs[i] = copy_with(run, status=status, remaining=remaining, live=live)
    pools = tuple(copy_with(pool, used_cpu_m=used[p][0], used_memory_mb=used[p][1],
                        ready=ReadyQueue.of(ready[p])) for p, pool in enumerate(s.pools))
    return copy_with(s, nodes=PVec.of(runs), pools=pools, slots=slots, counts=tuple(counts))


def _with_base(s: ExecutionState) -> ExecutionState:
    """The state as a checkpoint (or the start) leaves it: its own restart point."""
    base = copy_with(s, base=None)
    return copy_with(base, base=base)


def _started(s: ExecutionState, e: ExecutionStarted, at_ms: int,
             definitions: Definitions) -> ExecutionState:
    plan = definitions.plan(e.definition_hash, e.definition)
    pools = tuple(PoolRun(name, round(e.capacity_cpu[name] * 1000) if name in e.capacity_cpu
                          else math.inf, e.capacity_memory_mb.get(name, math.inf))
                  for name in POOLS)
    state = copy_with(s, status=ExecutionStatus.RUNNING, plan=plan, pools=pools, inputs=e.inputs,
                  max_concurrency=e.max_concurrency, started_at=at_ms,
                  timeout_ms=e.timeout_ms, deadline_at=e.deadline_at,
                  checkpoint_every=e.checkpoint_every, definition_hash=e.definition_hash,
                  tenant=e.tenant)
    return _with_base(_rebuilt(state, [NodeRun()] * plan.size))


def _restarted(s: ExecutionState, e: ExecutionRestarted) -> ExecutionState:
    """Back to the base: what was recorded there stays, the rest runs again with new
    attempt numbers; observed durations are kept (they were observed)."""
    base, plan = s.base, s.plan
    assert base is not None and plan is not None  # both set when the execution started
    failed = plan.index[e.node_id]
    runs = []
    for i, (now, then) in enumerate(zip(s.nodes, base.nodes, strict=True)):
        status = then.status if then.status in RESOLVED else P
        runs.append(copy_with(then, status=status, attempt=now.attempt,
                          restarts=now.restarts + (i == failed)))
    state = _rebuilt(copy_with(base, durations=s.durations), runs)
    return copy_with(state, base=base)


def evolve(state: ExecutionState, event: Message, at_ms: int,
           definitions: Definitions = DEFINITIONS) -> ExecutionState:
    """Apply one event; only what it touches is copied."""
    if type(event) is ExecutionStarted:
        return _started(state, event, at_ms, definitions)
    handler = _EVOLVE.get(type(event))
    return state if handler is None else handler(state, event, at_ms)  # timers: no change


def _on_scheduled(s: ExecutionState, e: NodeScheduled, at_ms: int) -> ExecutionState:
    change = _Change(s)
    i = change.plan.index[e.node_id]
    run = change.run(i)
    change.put(i, copy_with(run, status=SCHEDULED, attempt=e.attempt, tries=run.tries + 1,
                        scheduled_at=at_ms, started_at=0))
    return change.state()


def _on_started(s: ExecutionState, e: NodeStarted, at_ms: int) -> ExecutionState:
    change = _Change(s)
    i = change.plan.index[e.node_id]
    change.put(i, copy_with(change.run(i), status=RUNNING, started_at=at_ms, runner=e.runner))
    return change.state()


def _on_completed(s: ExecutionState, e: NodeCompleted, at_ms: int) -> ExecutionState:
    change = _Change(s)
    i = change.plan.index[e.node_id]
    output = _parse_output(e.output, e.output_hash, e.branch_taken)
    change.resolve(i, copy_with(change.run(i), status=COMPLETED, output=output))
    change.fields.update(since_checkpoint=s.since_checkpoint + 1, durations=_observed(
        s.durations, change.plan.node(i).kind.value, e.duration_ms))
    return change.state()


def _on_failed(s: ExecutionState, e: NodeFailed, at_ms: int) -> ExecutionState:
    change = _Change(s)
    i = change.plan.index[e.node_id]
    error = f"{e.error_type}: {e.message}" if e.message else e.error_type
    change.put(i, copy_with(change.run(i), status=FAILED, error=error))
    return change.state()


def _on_retry(s: ExecutionState, e: NodeRetryScheduled, at_ms: int) -> ExecutionState:
    change = _Change(s)
    i = change.plan.index[e.node_id]
    change.put(i, copy_with(change.run(i), status=RETRYING))
    return change.state()


def _on_skipped(s: ExecutionState, e: NodeSkipped, at_ms: int) -> ExecutionState:
    change = _Change(s)
    i = change.plan.index[e.node_id]
    output = json.loads(e.output) if e.output else None
    change.resolve(i, copy_with(change.run(i), status=SKIPPED, output=output))
    return change.state()


def _on_fallback(s: ExecutionState, e: FallbackUsed, at_ms: int) -> ExecutionState:
    change = _Change(s)
    i = change.plan.index[e.node_id]
    output = (json.loads(e.output) if e.output
              else {OUT: Ref(e.output_hash, tuple(e.output_path))})
    change.resolve(i, copy_with(change.run(i), status=FALLBACK, output=output))
    return change.state()


def _on_checkpoint(s: ExecutionState, e: CheckpointTaken, at_ms: int) -> ExecutionState:
    return _with_base(copy_with(s, checkpoint=e.checkpoint, since_checkpoint=0))


_EVOLVE: dict[type, Callable[[ExecutionState, Any, int], ExecutionState]] = {
    NodeScheduled: _on_scheduled,
    NodeStarted: _on_started,
    NodeCompleted: _on_completed,
    NodeFailed: _on_failed,
    NodeRetryScheduled: _on_retry,
    NodeSkipped: _on_skipped,
    FallbackUsed: _on_fallback,
    CheckpointTaken: _on_checkpoint,
    ExecutionRestarted: lambda s, e, at: _restarted(s, e),
    ExecutionCompleted: lambda s, e, at: _ended(s, ExecutionStatus.COMPLETED, at),
    ExecutionFailed: lambda s, e, at: _ended(
        s, ExecutionStatus.FAILED, at, f"node {e.node_id}: {e.error_type}: {e.message}"),
    ExecutionCancelled: lambda s, e, at: _ended(s, ExecutionStatus.CANCELLED, at, e.reason),
    ExecutionTimedOut: lambda s, e, at: _ended(
        s, ExecutionStatus.TIMED_OUT, at, f"timed out after {e.timeout_ms} ms"),
}


# --- checkpoints ----------------------------------------------------------------------------

def _encode_output(output: Any) -> Any:
    if output is None:
        return 0
    if isinstance(output, Ref):
        return ["r", output.hash, list(output.path)]
    values = {k: v for k, v in output.items() if not isinstance(v, Ref)}
    refs = {k: [v.hash, list(v.path)] for k, v in output.items() if isinstance(v, Ref)}
    return ["d", values, refs]


def _decode_output(data: Any) -> Any:
    if data == 0:
        return None
    if data[0] == "r":
        return Ref(data[1], tuple(data[2]))
    return {**data[1], **{k: Ref(h, tuple(path)) for k, (h, path) in data[2].items()}}


_BLANK = NodeRun()
SNAPSHOT_VERSION = 1


def snapshot(s: ExecutionState, checkpoint: int) -> bytes:
    """What evolve cannot derive, as of checkpoint number `checkpoint`: the definition (when
    it travels inline), the settings, and every node that has left its blank state."""
    plan = s.plan
    assert plan is not None  # a started execution has its plan
    nodes = []
    for i, run in enumerate(s.nodes):
        if run.status is P and run.attempt == 0 and run.restarts == 0:
            continue
        nodes.append([i, int(run.status), run.attempt, run.tries, run.restarts,
                      run.scheduled_at, run.started_at, run.error,
                      _encode_output(run.output), run.runner])
    pools = [[p.name, None if math.isinf(p.cpu_m) else p.cpu_m,
              None if math.isinf(p.memory_mb) else p.memory_mb] for p in s.pools]
    doc = {
        "v": SNAPSHOT_VERSION, "execution_id": s.execution_id,
        "definition_hash": plan.definition_hash,
        "definition": "" if plan.workflow.is_large else plan.workflow.canonical_json(),
        "status": int(s.status), "inputs": s.inputs, "max_concurrency": s.max_concurrency,
        "pools": pools, "started_at": s.started_at, "timeout_ms": s.timeout_ms,
        "deadline_at": s.deadline_at, "checkpoint_every": s.checkpoint_every,
        "checkpoint": checkpoint, "durations": s.durations, "nodes": nodes,
        "tenant": s.tenant,
    }
    return zlib.compress(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode(), 6)


def restore(snapshot_bytes: bytes, tail: Iterable[tuple[Message, int]] = (),
            definitions: Definitions = DEFINITIONS) -> ExecutionState:
    """The state a CheckpointTaken's snapshot records, with the events after it applied
    ((event, at_ms) pairs): equal to replaying every event from the start."""
    doc = json.loads(zlib.decompress(snapshot_bytes))
    plan = definitions.plan(doc["definition_hash"], doc["definition"])
    pools = tuple(PoolRun(name, math.inf if cpu is None else cpu,
                          math.inf if memory is None else memory)
                  for name, cpu, memory in doc["pools"])
    state = ExecutionState(
        doc["execution_id"], ExecutionStatus(doc["status"]), plan, pools=pools,
        inputs=doc["inputs"], max_concurrency=doc["max_concurrency"],
        started_at=doc["started_at"], timeout_ms=doc["timeout_ms"],
        deadline_at=doc["deadline_at"], checkpoint_every=doc["checkpoint_every"],
        checkpoint=doc["checkpoint"], durations=tuple(map(tuple, doc["durations"])),
        definition_hash=plan.definition_hash, tenant=doc.get("tenant", ""))
    runs = [_BLANK] * plan.size
    for i, status, attempt, tries, restarts, scheduled_at, started_at, error, output, *runner \
            in doc["nodes"]:  # snapshots taken before the runner was kept have no runner
        runs[i] = NodeRun(NodeStatus(status), 0, 0, attempt, tries, restarts,
                          _decode_output(output), scheduled_at, started_at, error,
                          *runner)
    state = _with_base(_rebuilt(state, runs))
    for event, at_ms in tail:
        state = evolve(state, event, at_ms, definitions)
    return state


def from_checkpoint(event: CheckpointTaken,
                    definitions: Definitions = DEFINITIONS) -> ExecutionState:
    """The state once `event` is applied: the processor's restore starts an execution here."""
    return restore(event.snapshot, (), definitions)


FINAL_VERSION = 1


def final(s: ExecutionState) -> bytes | None:
    """None while the execution may change; once it ended, what deciding on it still needs
    (the ended marker on pit.dag.checkpoints): how it ended and what it was started with."""
    if s.status in (ExecutionStatus.NEW, ExecutionStatus.RUNNING):
        return None
    return _json({"v": FINAL_VERSION, "execution_id": s.execution_id, "status": int(s.status),
                  "definition_hash": s.definition_hash, "inputs": s.inputs,
                  "started_at": s.started_at, "ended_at": s.ended_at,
                  "error": s.error}).encode()


def from_final(data: bytes) -> ExecutionState:
    """An ended execution held as its `final` record: no plan and no nodes, and every
    command decided as on its full state (the rules check that it ended first)."""
    doc = json.loads(data)
    return ExecutionState(doc["execution_id"], ExecutionStatus(doc["status"]),
                          inputs=doc["inputs"], started_at=doc["started_at"],
                          ended_at=doc["ended_at"], error=doc["error"],
                          definition_hash=doc["definition_hash"])


# --- decide: the rules ----------------------------------------------------------------------

class _Decision(Decision[ExecutionState]):
    """An execution's working copy, evolved with the definitions it decides with.
    `resolved` lists the nodes resolved in this decision whose dependents and fallback
    waiters have not been looked at yet."""

    __slots__ = ("definitions", "resolved")

    def __init__(self, state: ExecutionState, now_ms: int, definitions: Definitions) -> None:
        super().__init__(state, now_ms, partial(evolve, definitions=definitions))
        self.definitions = definitions
        self.resolved: list[int] = []


def _timer(s: ExecutionState, timer_id: str, due_at: int) -> TimerScheduled:
    return schedule_timer(timer_id, due_at, TimerFired(s.execution_id, timer_id), DAG,
                          owner=f"dag {s.execution_id}")


def _node_timer(s: ExecutionState, i: int, purpose: str, attempt: int) -> str:
    assert s.plan is not None  # a running execution has its plan
    return f"{s.execution_id}/{s.plan.ids[i]}/{purpose}/{attempt}"


def _workflow_timer(s: ExecutionState) -> str:
    return f"{s.execution_id}/timeout"


def _running(s: ExecutionState) -> ExecutionState:
    if s.status is ExecutionStatus.NEW:
        raise Rejection(f"unknown execution {s.execution_id!r}")
    if not s.running:
        raise Rejection(f"execution {s.execution_id} already ended"
                        f" ({s.status.name.lower().replace('_', ' ')})")
    return s


def _on_start(d: _Decision, c: StartExecution) -> None:
    s = d.state
    if not c.execution_id:
        raise Rejection("execution_id must not be empty")
    plan = d.definitions.load(c.definition, c.definition_hash)
    if s.status is not ExecutionStatus.NEW:
        if s.definition_hash == plan.definition_hash and s.inputs == _start_inputs(plan, c):
            return  # the same start again: nothing to do
        raise Rejection(f"execution {c.execution_id} already started with other arguments")
    workflow = plan.workflow
    for name, amount in (*c.capacity_cpu.items(), *c.capacity_memory_mb.items()):
        if name not in POOLS:
            raise Rejection(f"unknown runner pool {name!r} in capacity (pools: "
                            f"{', '.join(POOLS)})")
        if not amount > 0:
            raise Rejection(f"capacity of pool {name} must be positive, got {amount}")
    for i, node in enumerate(workflow.nodes):
        pool = POOLS[plan.pool[i]]
        cpu, memory = c.capacity_cpu.get(pool, math.inf), c.capacity_memory_mb.get(pool, math.inf)
        if node.resources.cpu > cpu or node.resources.memory_mb > memory:
            raise Rejection(f"node {node.id} needs {node.resources.cpu} cpu and"
                            f" {node.resources.memory_mb} MB, more than pool {pool} has"
                            f" ({cpu} cpu, {memory} MB): it could never run")
    if c.max_concurrency < 0 or c.timeout_ms < 0 or c.checkpoint_every < -1:
        raise Rejection("max_concurrency and timeout_ms must not be negative, checkpoint_every"
                        " not below -1")
    inputs = _start_inputs(plan, c)
    timeout = c.timeout_ms or workflow.timeout_ms or 0
    if not fits_int64(d.now + timeout):
        raise Rejection(f"timeout_ms {timeout} puts the deadline beyond 64-bit time")
    d.emit(ExecutionStarted(
        c.execution_id, workflow.name, plan.definition_hash,
        "" if workflow.is_large else workflow.canonical_json(), inputs,
        c.max_concurrency or workflow.max_concurrency or DEFAULT_MAX_CONCURRENCY,
        dict(c.capacity_cpu), dict(c.capacity_memory_mb), timeout,
        d.now + timeout if timeout else 0,
        workflow.checkpoint_every if c.checkpoint_every < 0 else c.checkpoint_every,
        plan.size, c.tenant))
    if timeout:
        s = d.state
        d.emit(_timer(s, _workflow_timer(s), s.deadline_at))
    _advance(d)


def _start_inputs(plan: Plan, c: StartExecution) -> str:
    """The execution's input values as canonical JSON; each must replace a constant."""
    try:
        values = json.loads(c.inputs or "{}")
    except ValueError as exc:
        raise Rejection(f"inputs are not JSON: {exc}") from None
    if not isinstance(values, dict):
        raise Rejection("inputs must be a JSON object {\"node.input\": value}")
    for key in values:
        node_id, _, name = key.partition(".")
        i = plan.index.get(node_id)
        if i is None or name not in plan.node(i).constants:
            raise Rejection(f"input {key!r} does not name a node input the definition feeds"
                            " with a constant")
    return _json(values)


def _report(d: _Decision, c: Any, *statuses: NodeStatus) -> int | None:
    """The node a runner reports on, if the report is current; None for a stale or repeated
    report, or one that arrives after the end (accepted, nothing changes)."""
    s = d.state
    if s.status is ExecutionStatus.NEW:
        raise Rejection(f"unknown execution {c.execution_id!r}")
    if not s.running:
        return None  # an ended execution may be held as its `final` record, without nodes
    assert s.plan is not None  # a running execution has its plan
    i = s.plan.index.get(c.node_id)
    if i is None:
        raise Rejection(f"execution {c.execution_id} has no node {c.node_id!r}")
    run = s.nodes[i]
    if not 1 <= c.attempt <= run.attempt:
        raise Rejection(f"node {c.node_id} attempt {c.attempt} was never dispatched (the"
                        f" latest is {run.attempt})")
    if c.attempt < run.attempt or run.status not in statuses:
        return None
    return i


def _why_over(s: ExecutionState, c: ReportNodeStarted) -> str:
    if not s.running:
        return "its execution has ended"
    assert s.plan is not None  # a running execution has its plan
    run = s.nodes[s.plan.index[c.node_id]]
    if c.attempt < run.attempt:
        return f"attempt {run.attempt} is the latest"
    return f"it is {run.status.name.lower()}"


def _on_report_started(d: _Decision, c: ReportNodeStarted) -> None:
    # Started again while running by another runner: it took the task over (the first was
    # lost mid-node). The same runner's start again changes nothing, so a report re-sent
    # after a restore that no longer knows its command id stays without effect (recovery.py).
    # A start for an attempt that is over is refused: a runner given a task that may have
    # run elsewhere asks first and runs it only if its start is accepted (runner.py).
    i = _report(d, c, SCHEDULED, RUNNING)
    if i is None:
        raise Rejection(f"node {c.node_id} attempt {c.attempt} is over ({_why_over(d.state, c)})"
                        ": it does not run again")
    if not (d.state.nodes[i].status is RUNNING and d.state.nodes[i].runner == c.runner):
        d.emit(NodeStarted(c.execution_id, c.node_id, c.attempt, c.runner))


def _output_problem(node: Node, c: ReportNodeCompleted) -> str:
    """Why a reported output does not fit the node ("" when it does)."""
    if bool(c.output) == bool(c.output_hash):
        return "the report must carry exactly one of output and output_hash"
    if c.output:
        try:
            output = json.loads(c.output)
        except ValueError as exc:
            return f"output is not JSON: {exc}"
        if not isinstance(output, dict):
            return "output must be a JSON object {output name: value}"
        names = set(output)
    else:
        names = {c.branch_taken} if c.branch_taken else {OUT}
    if node.kind == NodeKind.BRANCH:
        if len(names) != 1 or not names <= {TRUE, FALSE}:
            return f"a branch takes exactly one of {TRUE!r} and {FALSE!r}, got {sorted(names)}"
    elif OUT not in names or c.branch_taken:
        return f"output must have {OUT!r} (and no branch_taken)"
    return ""


def _on_report_completed(d: _Decision, c: ReportNodeCompleted) -> None:
    i = _report(d, c, SCHEDULED, RUNNING)
    if i is None:
        return
    s = d.state
    assert s.plan is not None  # a running execution has its plan
    problem = _output_problem(s.plan.node(i), c)
    if problem:
        _failed(d, i, INVALID_OUTPUT, problem, False, c.duration_ms, c.runner)
    else:
        d.emit(NodeCompleted(c.execution_id, c.node_id, c.attempt, c.output, c.output_hash,
                             c.branch_taken, c.duration_ms, c.runner))
        _cancel_timeout(d, i, c.attempt)
        d.resolved.append(i)
    _advance(d)


def _on_report_failed(d: _Decision, c: ReportNodeFailed) -> None:
    i = _report(d, c, SCHEDULED, RUNNING)
    if i is None:
        return
    if not c.error_type:
        raise Rejection("error_type must not be empty")
    _failed(d, i, c.error_type, c.message, c.retryable, c.duration_ms, c.runner)
    _advance(d)


def _failed(d: _Decision, i: int, error_type: str, message: str, retryable: bool,
            duration_ms: int, runner: str = "", timed_out: bool = False) -> None:
    s = d.state
    assert s.plan is not None  # a running execution has its plan
    run = s.nodes[i]
    d.emit(NodeFailed(s.execution_id, s.plan.ids[i], run.attempt, error_type, message,
                      retryable, duration_ms, runner))
    if not timed_out:
        _cancel_timeout(d, i, run.attempt)
    _recover(d, i, error_type, message, retryable)


def _cancel_timeout(d: _Decision, i: int, attempt: int) -> None:
    s = d.state
    assert s.plan is not None  # a running execution has its plan
    if s.plan.node(i).timeout_ms:
        d.emit(cancel_timer(_node_timer(s, i, "timeout", attempt), "attempt ended"))


def _recover(d: _Decision, i: int, error_type: str, message: str, retryable: bool) -> None:
    s = d.state
    assert s.plan is not None  # a running execution has its plan
    rec, run = s.plan.recovery(i), s.nodes[i]
    strategy = rec.strategy
    if strategy == Strategy.RETRY:
        if retryable and rec.retries(error_type) and run.tries < rec.max_attempts:
            node_id = s.plan.ids[i]
            delay = backoff_ms(rec.backoff, run.tries, f"{s.execution_id}/{node_id}")
            timer_id = _node_timer(s, i, "retry", run.attempt)
            d.emit(NodeRetryScheduled(s.execution_id, node_id, run.attempt, run.attempt + 1,
                                      delay, d.now + delay, timer_id),
                   _timer(s, timer_id, d.now + delay))
            return
        strategy = rec.on_exhausted
    if strategy == Strategy.FALLBACK:
        _fall_back(d, i)
    elif strategy == Strategy.SKIP:
        d.emit(NodeSkipped(s.execution_id, s.plan.ids[i], "recovery",
                           _json({OUT: rec.default_output}), error_type))
        d.resolved.append(i)
    elif strategy == Strategy.RESTART and run.restarts < rec.max_attempts - 1:
        _cancel_timers(d, workflow=False)  # the workflow's deadline stands
        d.emit(ExecutionRestarted(s.execution_id, s.plan.ids[i], s.checkpoint,
                                  f"{error_type}: {message}" if message else error_type))
        d.resolved.clear()  # what they would wake is back to the checkpoint
    else:
        _fail_execution(d, i, error_type, message)


def _fall_back(d: _Decision, i: int) -> None:
    """Complete node i with its fallback: a value, or its fallback node's output once that
    node has one (until then node i waits, Failed)."""
    s = d.state
    assert s.plan is not None  # a running execution has its plan
    rec, node_id = s.plan.recovery(i), s.plan.ids[i]
    f = s.plan.fallback_to[i]
    if f < 0:
        d.emit(FallbackUsed(s.execution_id, node_id, "", _json({OUT: rec.fallback_value})))
        d.resolved.append(i)
        return
    source = s.nodes[f]
    if source.status not in RESOLVED:
        return  # waits: looked at again when node f is resolved
    value = output_value(source.output, rec.fallback_output)
    if value is _MISSING:
        _fail_execution(d, i, "FallbackUnavailable", f"fallback node {rec.fallback_node} has"
                        f" no output {rec.fallback_output!r} (it was skipped)")
        return
    if isinstance(value, Ref):
        d.emit(FallbackUsed(s.execution_id, node_id, rec.fallback_node, "", value.hash,
                            list(value.path)))
    else:
        d.emit(FallbackUsed(s.execution_id, node_id, rec.fallback_node, _json({OUT: value})))
    d.resolved.append(i)


def _fail_execution(d: _Decision, i: int, error_type: str, message: str) -> None:
    s = d.state
    assert s.plan is not None  # a running execution has its plan
    _cancel_timers(d)
    d.emit(ExecutionFailed(s.execution_id, s.plan.ids[i], error_type, message))


def _cancel_timers(d: _Decision, *, workflow: bool = True) -> None:
    """Cancel the node timers still pending, and the workflow's unless told not to."""
    s = d.state
    if s.slots:
        assert s.plan is not None  # nodes in flight: it is running, with its plan
        for i, run in enumerate(s.nodes):
            if run.status is RETRYING:
                d.emit(cancel_timer(_node_timer(s, i, "retry", run.attempt), "not needed"))
            elif run.status in IN_FLIGHT and s.plan.node(i).timeout_ms:
                d.emit(cancel_timer(_node_timer(s, i, "timeout", run.attempt), "not needed"))
    if workflow and s.deadline_at:
        d.emit(cancel_timer(_workflow_timer(s), "not needed"))


def _on_timer(d: _Decision, c: TimerFired) -> None:
    s = d.state
    if s.status is ExecutionStatus.NEW:
        raise Rejection(f"unknown execution {c.execution_id!r}")
    prefix = f"{s.execution_id}/"
    if not c.timer_id.startswith(prefix):
        raise Rejection(f"timer {c.timer_id!r} is not one of execution {s.execution_id}")
    if not s.running:
        return  # stale: the execution ended
    rest = c.timer_id[len(prefix):]
    if rest == "timeout":
        _cancel_timers(d, workflow=False)  # it is the one firing
        d.emit(ExecutionTimedOut(s.execution_id, s.timeout_ms))
        return
    node_id, purpose, attempt = [*rest.split("/"), "", ""][:3]
    assert s.plan is not None  # a running execution has its plan
    i = s.plan.index.get(node_id)
    if i is None or purpose not in ("timeout", "retry") or not attempt.isdigit():
        raise Rejection(f"timer {c.timer_id!r} names no node timeout or retry")
    run = s.nodes[i]
    if run.attempt != int(attempt):
        return  # stale: the attempt ended
    if purpose == "timeout" and run.status in (SCHEDULED, RUNNING):
        timeout = s.plan.node(i).timeout_ms
        _failed(d, i, TIMEOUT, f"no result within {timeout} ms", True,
                d.now - run.scheduled_at, timed_out=True)
    elif purpose == "retry" and run.status is RETRYING:
        _dispatch(d, i)
    _advance(d)


def _on_cancel(d: _Decision, c: CancelExecution) -> None:
    _running(d.state)
    _cancel_timers(d)
    d.emit(ExecutionCancelled(c.execution_id, c.reason))


def _on_take_checkpoint(d: _Decision, c: TakeCheckpoint) -> None:
    _checkpoint(d, _running(d.state))


def _checkpoint(d: _Decision, s: ExecutionState) -> None:
    n = s.checkpoint + 1
    d.emit(CheckpointTaken(s.execution_id, n, snapshot(s, n), s.done))


def _advance(d: _Decision) -> None:
    """After a node resolved: skip what only untaken branches feed, hand fallbacks their
    value, dispatch what fits, then finish or checkpoint."""
    while d.resolved and d.state.running:
        i = d.resolved.pop()
        plan = d.state.plan
        assert plan is not None  # a running execution has its plan
        for t in plan.targets[i]:
            run = d.state.nodes[t]
            if run.status is P and run.remaining == 0 and run.live == 0:
                d.emit(NodeSkipped(d.state.execution_id, plan.ids[t], "branch"))
                d.resolved.append(t)
        for w in plan.fallback_for[i]:
            if d.state.running and d.state.nodes[w].status is FAILED:
                _fall_back(d, w)
    s = d.state
    if not s.running:
        return
    _schedule(d)
    s = d.state
    assert s.plan is not None  # a running execution has its plan
    if s.done == s.plan.size:
        _complete(d)
    elif s.checkpoint_every and s.since_checkpoint >= s.checkpoint_every:
        _checkpoint(d, s)


def _schedule(d: _Decision) -> None:
    """Dispatch ready nodes, best first, while slots and their pool's resources allow."""
    s = d.state
    plan = s.plan
    assert plan is not None  # a running execution has its plan
    while s.slots < s.max_concurrency:
        best = None
        for pool in s.pools:
            key = pool.ready.head()
            if key is None or (best is not None and best < key):
                continue
            i = key[2]
            if (pool.used_cpu_m + plan.cpu_m[i] <= pool.cpu_m
                    and pool.used_memory_mb + plan.memory_mb[i] <= pool.memory_mb):
                best = key
        if best is None:
            return
        _dispatch(d, best[2])
        s = d.state


def _dispatch(d: _Decision, i: int) -> None:
    s = d.state
    plan, run = s.plan, s.nodes[i]
    assert plan is not None  # a running execution has its plan
    node = plan.node(i)
    inputs = {**node.constants, **s.overrides(i)} if s.inputs != "{}" else dict(node.constants)
    refs = {}
    for source, name, to_input in plan.inputs[i]:
        value = output_value(s.nodes[source].output, name)
        if isinstance(value, Ref):
            refs[to_input] = {"hash": value.hash, "path": list(value.path)}
        else:
            inputs[to_input] = None if value is _MISSING else value
    attempt = run.attempt + 1
    deadline = d.now + node.timeout_ms if node.timeout_ms else s.deadline_at
    d.emit(NodeScheduled(
        s.execution_id, node.id, attempt, task_id(s.execution_id, node.id, attempt),
        node.kind.value, _spec(node), _json(inputs), _json(refs) if refs else "{}",
        POOLS[plan.pool[i]], node.resources.cpu, node.resources.memory_mb, node.priority,
        -plan.key[i][1], deadline, s.tenant))
    if node.timeout_ms:
        d.emit(_timer(s, _node_timer(s, i, "timeout", attempt), deadline))


def _spec(node: Node) -> str:
    """What a runner needs to run the node, besides its inputs."""
    spec: dict[str, Any] = {}
    if node.model:
        spec["model"] = node.model
    if node.operator:
        spec["operator"] = node.operator
    if node.condition is not None:
        c = node.condition
        spec["condition"] = {"op": c.op, "value": c.value, "path": c.path}
    if node.kind == NodeKind.MAP:
        spec["item_input"] = item_input_of(node)
    if node.params:
        spec["params"] = node.params
    return _json(spec)


def _complete(d: _Decision) -> None:
    s = d.state
    plan = s.plan
    assert plan is not None  # a running execution has its plan
    outputs = {}
    for i in plan.sinks:
        output = s.nodes[i].output
        if output is not None:
            outputs[plan.ids[i]] = _plain_output(output)
    text = _json(outputs)
    if len(text) > INLINE_LIMIT_BYTES:
        text = ""
    if s.deadline_at:
        d.emit(cancel_timer(_workflow_timer(s), "execution completed"))
    counts = s.counts
    d.emit(ExecutionCompleted(s.execution_id, text, d.now - s.started_at, counts[COMPLETED],
                              counts[SKIPPED], counts[FALLBACK]))


def _plain_output(output: Any) -> Any:
    """An output as JSON, a Ref as {"hash": h, "path": [...]}."""
    if isinstance(output, Ref):
        return {"hash": output.hash, "path": list(output.path)}
    return {k: _plain_output(v) if isinstance(v, Ref) else v for k, v in output.items()}


# An empty execution_id is the rules' to reject: a start says so, other commands find no
# such execution.
_RULES: Rules[_Decision] = Rules("the DAG tracker", "execution_id", {
    StartExecution: _on_start,
    ReportNodeStarted: _on_report_started,
    ReportNodeCompleted: _on_report_completed,
    ReportNodeFailed: _on_report_failed,
    TimerFired: _on_timer,
    CancelExecution: _on_cancel,
    TakeCheckpoint: _on_take_checkpoint,
}, reject_blank_key=False)


def decide(state: ExecutionState, command: Message, now_ms: int,
           definitions: Definitions = DEFINITIONS) -> Decided:
    return _RULES.decide(_Decision(state, now_ms, definitions), command)


# --- status ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Progress:
    """An execution's real-time status: node states, progress and an ETA."""

    execution_id: str
    status: str
    nodes: int
    counts: dict[str, int]      # per node status (non-zero only)
    done: int                   # completed, fell back or skipped
    progress: float             # done / nodes
    in_flight: int
    elapsed_ms: int
    eta_ms: int | None          # None until a node has completed
    mean_ms: dict[str, float]   # observed duration per node kind


def status(s: ExecutionState, now_ms: int) -> Progress:
    """The ETA is the remaining work (each unfinished node at the mean observed duration of
    its kind, else of all kinds) over the parallelism observed so far (busy time / elapsed
    time, within 1 and max_concurrency). O(nodes): for views, not for deciding."""
    plan = s.plan
    nodes = plan.size if plan else 0
    counts = {status.name.lower(): n for status, n in zip(NodeStatus, s.counts, strict=True)
              if n}
    elapsed = (s.ended_at or now_ms) - s.started_at if s.started_at else 0
    observed = sum(n for _, n, _ in s.durations)
    busy = sum(total for _, _, total in s.durations)
    mean = {kind: total / n for kind, n, total in s.durations}
    eta = None
    if not s.running and s.status is not ExecutionStatus.NEW:
        eta = 0
    elif observed:
        assert plan is not None  # durations are observed on the nodes of its plan
        overall = busy / observed
        remaining: dict[str, int] = {}
        for i, run in enumerate(s.nodes):
            if run.status not in TERMINAL:
                kind = plan.node(i).kind.value
                remaining[kind] = remaining.get(kind, 0) + 1
        work = sum(n * mean.get(kind, overall) for kind, n in remaining.items())
        parallelism = min(max(busy / elapsed if elapsed > 0 else 1.0, 1.0),
                          float(s.max_concurrency))
        eta = round(work / parallelism)
    done = s.done
    return Progress(s.execution_id, s.status.name.lower(), nodes, counts, done,
                    done / nodes if nodes else 0.0, s.slots, elapsed, eta, mean)


# --- the decider ----------------------------------------------------------------------------

COMMANDS = _RULES.commands
# The events that end an execution, with the status each leaves (in views and results).
ENDINGS: dict[type[Message], str] = {
    ExecutionCompleted: "completed", ExecutionFailed: "failed",
    ExecutionCancelled: "cancelled", ExecutionTimedOut: "timed_out"}
EVENTS = (ExecutionStarted, NodeScheduled, NodeStarted, NodeCompleted, NodeFailed,
          NodeRetryScheduled, NodeSkipped, FallbackUsed, CheckpointTaken, ExecutionRestarted,
          ExecutionCompleted, ExecutionFailed, ExecutionCancelled, ExecutionTimedOut,
          *TIMER_EVENTS)


def execution_decider(definitions: Definitions = DEFINITIONS) -> Decider[ExecutionState]:
    """The decider, finding definitions through `definitions` (e.g. with a store)."""
    return Decider(
        name="dag",
        command_topic=DAG_COMMANDS,
        event_topic=DAG_EVENTS,
        commands=COMMANDS,
        events=EVENTS,
        initial_state=initial_state,
        decide=partial(decide, definitions=definitions),
        evolve=partial(evolve, definitions=definitions),
        snapshots=(CheckpointTaken,),
        from_snapshot=partial(from_checkpoint, definitions=definitions),
        checkpoint_topic=CheckpointTopic(DAG_CHECKPOINTS, final, from_final, TakeCheckpoint),
    )


DAG = execution_decider()
