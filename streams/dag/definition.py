"""Workflow definitions (issue 4, seed M3.2): the DAG a workflow execution runs. Pure: no I/O.

A `Workflow` is a name, nodes, edges and workflow-level settings. Nodes are kept sorted by id
and edges by (to_node, to_input, from_node, from_output), so two definitions that differ only
in the order they were written are equal and have the same `content_hash()`.

Nodes (`Node`, kind `NodeKind`):
* instrument: calls the AI model `model` (a Pool Manager model id) with its inputs as the
  inference inputs; any input names are accepted; one output "out" (type any).
* operator: calls the registered Python function `operator` (see `register_operator`); its
  inputs are the operator's declared inputs; one output "out" of the declared output type.
* branch (control): evaluates `condition` over its input "value"; the value leaves on output
  "true" or "false" and the nodes fed from the other output are skipped.
* map (control): calls `operator` (or the instrument `model`) once per item of its input
  "items" (a list); the item is bound to input `item_input`; the map's other inputs are passed
  unchanged to every call; output "out" is the list of results, in item order.

Edges (`Edge`) connect `from_node.from_output` to `to_node.to_input` (written "node.output" ->
"node.input"; a bare "node" as source means its output "out"). An input is fed by exactly one
edge or one constant (`Node.constants`). Every node has `params` (JSON values, passed to the
operator's `params` argument or with the inference call), `priority` (higher first, ties by
critical-path rank), `resources` (cpu, memory_mb), `timeout_ms` (None: only the workflow's
timeout applies) and `recovery` (None: the workflow's `default_recovery`).

Recovery (`Recovery`, strategy `Strategy`) when a node attempt fails:
* retry: up to `max_attempts` attempts in all, waiting `backoff_ms(backoff, attempt, key)`
  before attempt `attempt + 1`; once exhausted (or at once for an error type listed in
  `non_retryable`) the `on_exhausted` strategy applies (fail by default).
* fallback: the node completes with `fallback_value`, or with the output `fallback_output` of
  node `fallback_node` (which must not depend on this node; it is not an edge).
* skip: the node is skipped; its output is `default_output` for the nodes it feeds.
* fail: the workflow fails.
* restart: the execution restarts from its last checkpoint (taken every `checkpoint_every`
  completed nodes; 0 = no periodic checkpoints, so from the start).

Types are simple names (`TYPES`): any, str, int, float, bool, list, dict; an int output may
feed a float input, and any is compatible both ways.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

OUT = "out"  # the output of instruments, operators and maps
TRUE, FALSE = "true", "false"  # the outputs of a branch
TYPES = ("any", "str", "int", "float", "bool", "list", "dict")
INLINE_LIMIT_BYTES = 256 * 1024  # a larger canonical definition is stored by hash


class NodeKind(StrEnum):
    INSTRUMENT = "instrument"
    OPERATOR = "operator"
    BRANCH = "branch"
    MAP = "map"


class Strategy(StrEnum):
    RETRY = "retry"
    FALLBACK = "fallback"
    SKIP = "skip"
    FAIL = "fail"
    RESTART = "restart"


class BackoffKind(StrEnum):
    CONSTANT = "constant"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"


@dataclass(frozen=True)
class Backoff:
    """Delay before a retry: constant `initial_ms`; linear `initial_ms + increment_ms*(n-1)`;
    exponential `initial_ms * multiplier**(n-1)`; all capped at `max_ms`, then reduced by up
    to `jitter` (a fraction) of itself, deterministically (see `backoff_ms`)."""

    kind: BackoffKind = BackoffKind.EXPONENTIAL
    initial_ms: int = 100
    increment_ms: int = 100
    multiplier: float = 2.0
    max_ms: int = 30_000
    jitter: float = 0.0


@dataclass(frozen=True)
class Recovery:
    strategy: Strategy = Strategy.FAIL
    max_attempts: int = 3
    backoff: Backoff = Backoff()
    on_exhausted: Strategy = Strategy.FAIL
    fallback_value: Any = None
    fallback_node: str = ""
    fallback_output: str = OUT
    default_output: Any = None
    non_retryable: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    memory_mb: int = 0


@dataclass(frozen=True)
class Condition:
    """A test of a branch's input: `op` (see `CONDITION_OPS`) against `value`, applied to the
    input itself or to the item at `path` (dot-separated keys or list indexes) inside it."""

    op: str = "truthy"
    value: Any = None
    path: str = ""


@dataclass(frozen=True)
class Node:
    id: str
    kind: NodeKind
    model: str = ""
    operator: str = ""
    condition: Condition | None = None
    item_input: str = ""
    constants: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    priority: int = 0
    resources: Resources = Resources()
    timeout_ms: int | None = None
    recovery: Recovery | None = None


@dataclass(frozen=True, order=True)
class Edge:
    to_node: str
    to_input: str
    from_node: str
    from_output: str = OUT

    @classmethod
    def parse(cls, source: str, target: str) -> Edge:
        """`Edge.parse("a.out", "b.x")`; a source without an output means "out"."""
        from_node, _, from_output = source.partition(".")
        to_node, _, to_input = target.partition(".")
        return cls(to_node, to_input, from_node, from_output or OUT)

    @property
    def source(self) -> str:
        return f"{self.from_node}.{self.from_output}"

    @property
    def target(self) -> str:
        return f"{self.to_node}.{self.to_input}"


@dataclass(frozen=True)
class Workflow:
    name: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...] = ()
    timeout_ms: int | None = None
    max_concurrency: int | None = None
    default_recovery: Recovery = Recovery()
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(sorted(self.nodes, key=lambda n: n.id)))
        object.__setattr__(self, "edges", tuple(sorted(self.edges)))

    def recovery_of(self, node: Node) -> Recovery:
        return node.recovery if node.recovery is not None else self.default_recovery


def backoff_ms(policy: Backoff, attempt: int, seed_key: str) -> int:
    """The delay before attempt `attempt + 1` (attempt >= 1 is the attempt that failed).

    Jitter comes from a hash of (seed_key, attempt), not from a random generator, so a replay
    schedules the same retry at the same time; it only shortens the delay, so `max_ms` holds.
    """
    n = max(attempt, 1)
    if policy.kind is BackoffKind.CONSTANT:
        delay = float(policy.initial_ms)
    elif policy.kind is BackoffKind.LINEAR:
        delay = float(policy.initial_ms + policy.increment_ms * (n - 1))
    else:
        # log-space comparison: multiplier**n overflows long before the cap matters
        grow = (n - 1) * math.log(policy.multiplier) if policy.multiplier > 0 else 0.0
        ceiling = math.log(max(policy.max_ms, 1) / max(policy.initial_ms, 1))
        delay = policy.max_ms if grow >= ceiling else policy.initial_ms * math.exp(grow)
    delay = min(delay, float(policy.max_ms))
    if policy.jitter > 0:
        digest = hashlib.sha256(f"{seed_key}:{n}".encode()).digest()
        unit = int.from_bytes(digest[:8], "big") / 2**64
        delay -= delay * policy.jitter * unit
    return max(int(delay), 0)
