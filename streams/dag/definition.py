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
  "items" (a list); the item is bound to input `item_input` (`item_input_of`: by default the
  operator's only input, else "item"); the map's other inputs are passed
  unchanged to every call; output "out" is the list of results, in item order.

Edges (`Edge`) connect `from_node.from_output` to `to_node.to_input` (written "node.output" ->
"node.input"; a bare "node" as source means its output "out"). An input is fed by exactly one
edge or one constant (`Node.constants`). Every node has `params` (JSON values, passed to the
operator's `params` argument or with the inference call), `priority` (higher first, ties by
critical-path rank), `resources` (cpu, memory_mb), `timeout_ms` (None: only the workflow's
timeout applies), `recovery` (None: the workflow's `default_recovery`) and `pool` (the runner
pool it runs in; "" means by kind, see `Node.runner_pool`).

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

Text forms: `workflow_from_yaml` / `workflow_from_json` / `workflow_from_dict` read the dict
form (see `Workflow.to_dict`; unknown keys are errors), `WorkflowBuilder` builds in Python.
They only check the shape; `validate` (a list of reasons) or `check` (raises
`InvalidWorkflowError` with all of them) check the meaning against an `OperatorRegistry`.
`Workflow.canonical_json()` is the sorted, compact JSON of `to_dict()` (defaults omitted);
`content_hash()` is "sha256:<hex>" of it. A definition whose canonical form is larger than
`INLINE_LIMIT_BYTES` is stored by hash (`DefinitionStore`; streams/dag/definition_store.py
keeps them in files) and referenced.

`Graph` (`workflow.graph`, built once) gives the scheduler index arrays: dependencies,
dependents, a topological order and `critical_path_rank`. `wide_dag`, `deep_dag` and
`layered_dag` generate synthetic workflows for tests and benchmarks.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from functools import cached_property
from typing import Any, Protocol, TypedDict

import yaml

from streams.dag.errors import InvalidWorkflowError
from streams.errors import PitError

OUT = "out"  # the output of instruments, operators and maps
TRUE, FALSE = "true", "false"  # the outputs of a branch
VALUE, ITEMS, ITEM = "value", "items", "item"  # branch input, map list input, default item input
TYPES = ("any", "str", "int", "float", "bool", "list", "dict")
WILDCARD = "*"  # an operator input named "*" accepts any other input names, of its type
INLINE_LIMIT_BYTES = 256 * 1024  # a larger canonical definition is stored by hash
CONDITION_OPS = ("truthy", "falsy", "eq", "ne", "gt", "ge", "lt", "le", "in", "contains")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,199}")
_ERROR_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


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


def _coerce(obj: Any, name: str, enum: type[StrEnum]) -> None:
    # a string naming a member becomes the member; anything else stays for `validate` to report
    value = getattr(obj, name)
    if isinstance(value, str) and not isinstance(value, enum) and value in enum._value2member_map_:
        object.__setattr__(obj, name, enum(value))


def _floats(obj: Any, *names: str) -> None:
    # 1 and 1.0 must give the same canonical JSON, whichever way a definition was written
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(obj, name, float(value))


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

    def __post_init__(self) -> None:
        _coerce(self, "kind", BackoffKind)
        _floats(self, "multiplier", "jitter")


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

    def __post_init__(self) -> None:
        _coerce(self, "strategy", Strategy)
        _coerce(self, "on_exhausted", Strategy)
        if isinstance(self.non_retryable, str):
            object.__setattr__(self, "non_retryable", (self.non_retryable,))
        elif not isinstance(self.non_retryable, tuple):
            object.__setattr__(self, "non_retryable", tuple(self.non_retryable))

    def retries(self, error_type: str) -> bool:
        """Whether an attempt failing with `error_type` may be retried at all."""
        return self.strategy == Strategy.RETRY and error_type not in self.non_retryable


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    memory_mb: int = 0

    def __post_init__(self) -> None:
        _floats(self, "cpu")


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
    pool: str = ""

    def __post_init__(self) -> None:
        _coerce(self, "kind", NodeKind)
        for name in ("constants", "params"):
            value = getattr(self, name)
            if isinstance(value, Mapping) and not isinstance(value, dict):
                object.__setattr__(self, name, dict(value))

    @property
    def outputs(self) -> tuple[str, ...]:
        return (TRUE, FALSE) if self.kind == NodeKind.BRANCH else (OUT,)

    @property
    def runner_pool(self) -> str:
        """The runner pool that runs the node: `pool`, else "instrument" for nodes that call a
        model (instruments, maps over a model) and "operator" for the rest."""
        if self.pool:
            return self.pool
        uses_model = self.kind == NodeKind.INSTRUMENT or (self.kind == NodeKind.MAP
                                                          and bool(self.model))
        return "instrument" if uses_model else "operator"


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
        object.__setattr__(self, "nodes", tuple(sorted(self.nodes, key=lambda n: str(n.id))))
        object.__setattr__(self, "edges", tuple(sorted(self.edges)))

    def recovery_of(self, node: Node) -> Recovery:
        return node.recovery if node.recovery is not None else self.default_recovery

    @cached_property
    def node_by_id(self) -> dict[str, Node]:
        return {node.id: node for node in self.nodes}

    @cached_property
    def graph(self) -> Graph:
        """Index arrays over the node-level DAG (raises `InvalidWorkflowError` on a cycle)."""
        return Graph.of(self)

    def to_dict(self) -> dict[str, Any]:
        return _workflow_dict(self)

    @cached_property
    def canonical_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False).encode()

    def canonical_json(self) -> str:
        return self.canonical_bytes.decode()

    def content_hash(self) -> str:
        return content_hash(self.canonical_bytes)

    @property
    def is_large(self) -> bool:
        """Whether the definition is stored by hash and referenced instead of sent inline."""
        return len(self.canonical_bytes) > INLINE_LIMIT_BYTES


def content_hash(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class DefinitionStore(Protocol):
    """Definitions by content hash (`Workflow.content_hash()`)."""

    def put(self, workflow: Workflow) -> str:
        """Stores the definition (idempotent) and returns its content hash."""
        ...

    def get(self, definition_hash: str) -> Workflow:
        """The definition with that hash; `DefinitionStoreError` if missing or corrupt."""
        ...

    def __contains__(self, definition_hash: object) -> bool: ...


# --- retries ---------------------------------------------------------------------------------


def backoff_ms(policy: Backoff, attempt: int, seed_key: str) -> int:
    """The delay before attempt `attempt + 1` (attempt >= 1 is the attempt that failed).

    Jitter comes from a hash of (seed_key, attempt), not from a random generator, so a replay
    schedules the same retry at the same time; it only shortens the delay, so `max_ms` holds.
    """
    n = max(attempt, 1)
    if policy.kind == BackoffKind.CONSTANT:
        delay = float(policy.initial_ms)
    elif policy.kind == BackoffKind.LINEAR:
        delay = float(policy.initial_ms + policy.increment_ms * (n - 1))
    elif policy.initial_ms <= 0:
        delay = 0.0
    else:
        # compared in log space: multiplier**n overflows long before the cap stops mattering
        grow = (n - 1) * math.log(policy.multiplier)
        ceiling = math.log(max(policy.max_ms, 1) / policy.initial_ms)
        delay = policy.max_ms if grow >= ceiling else policy.initial_ms * math.exp(grow)
    delay = min(delay, float(policy.max_ms))
    if policy.jitter > 0:
        digest = hashlib.sha256(f"{seed_key}:{n}".encode()).digest()
        delay -= delay * policy.jitter * (int.from_bytes(digest[:8], "big") / 2**64)
    return max(int(delay), 0)


# --- branch conditions -----------------------------------------------------------------------

_MISSING = object()


def _at_path(value: Any, path: str) -> Any:
    for step in path.split(".") if path else ():
        if isinstance(value, Mapping) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.lstrip("-").isdigit() and -len(value) <= int(
                step) < len(value):
            value = value[int(step)]
        else:
            return _MISSING
    return value


def evaluate_condition(condition: Condition, value: Any) -> bool:
    """Whether a branch sends `value` to its "true" output. A missing path is falsy and equals
    nothing; comparing values of incomparable types raises TypeError (the node fails)."""
    subject = _at_path(value, condition.path)
    op, operand = condition.op, condition.value
    if op in ("truthy", "falsy"):
        return (subject is not _MISSING and bool(subject)) == (op == "truthy")
    if subject is _MISSING:
        return op == "ne"
    if op == "eq":
        return subject == operand
    if op == "ne":
        return subject != operand
    if op == "gt":
        return subject > operand
    if op == "ge":
        return subject >= operand
    if op == "lt":
        return subject < operand
    if op == "le":
        return subject <= operand
    if op == "in":
        return subject in operand
    if op == "contains":
        return operand in subject
    raise ValueError(f"unknown condition op {op!r}")


# --- operators -------------------------------------------------------------------------------


def json_type(value: Any) -> str:
    """The simple type name of a JSON value (null is "any")."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "dict"
    return "any"


def compatible(source: str, target: str) -> bool:
    return source == target or "any" in (source, target) or (source, target) == ("int", "float")


@dataclass(frozen=True)
class Operator:
    """A registered function: `inputs` maps input names to type names (a "*" input accepts any
    other names, as **kwargs); `required` are the inputs without a default."""

    name: str
    fn: Callable[..., Any]
    inputs: Mapping[str, str]
    output: str
    required: frozenset[str]
    takes_params: bool

    def input_type(self, name: str) -> str | None:
        return self.inputs.get(name, self.inputs.get(WILDCARD))

    def __call__(self, inputs: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> Any:
        if self.takes_params:
            return self.fn(**inputs, params=dict(params or {}))
        return self.fn(**inputs)


def _type_of_annotation(annotation: Any) -> str:
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return name if name in TYPES else "any"


def _operator(name: str, fn: Callable[..., Any], inputs: Mapping[str, str] | None,
              output: str) -> Operator:
    signature = inspect.signature(fn)
    parameters = {p.name: p for p in signature.parameters.values() if p.name != "params"}
    variadic = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    named = {n: p for n, p in parameters.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if inputs is None:
        inputs = {n: _type_of_annotation(p.annotation) for n, p in named.items()}
    inputs = dict(inputs)
    for input_name, type_name in inputs.items():
        if type_name not in TYPES:
            raise ValueError(f"operator {name!r}: input {input_name!r} has unknown type "
                             f"{type_name!r} (one of {', '.join(TYPES)})")
        if input_name == WILDCARD and not variadic:
            raise ValueError(f"operator {name!r}: a '*' input needs a **kwargs parameter")
        if input_name != WILDCARD and input_name not in named and not variadic:
            raise ValueError(f"operator {name!r}: {fn.__name__} has no parameter {input_name!r}")
    undeclared = [n for n, p in named.items() if n not in inputs and p.default is p.empty]
    if undeclared:
        raise ValueError(f"operator {name!r}: required parameters not declared as inputs: "
                         f"{', '.join(undeclared)}")
    if output not in TYPES:
        raise ValueError(f"operator {name!r}: unknown output type {output!r}")
    required = frozenset(n for n in inputs if n in named and named[n].default is named[n].empty)
    return Operator(name, fn, inputs, output, required, "params" in signature.parameters)


OPERATOR_GROUP = "pit.operators"  # the entry-point group of packages that bring operators
OPERATOR_MODULES = "PIT_OPERATOR_MODULES"  # modules to import for operators, comma-separated


def load_operator_modules(modules: Iterable[str] = ()) -> list[str]:
    """Import the user's operators: every entry point of the `pit.operators` group (a
    package declares `[project.entry-points."pit.operators"] mine = "mypkg.operators"`),
    then PIT_OPERATOR_MODULES and `modules`. A module registers its operators as it is
    imported (`register_operator`); an entry point naming a function is called with the
    default registry. Returns what was loaded; one that cannot be is a PitError naming it."""
    import importlib
    import os
    from importlib.metadata import entry_points

    OPERATORS._plugins = False  # loaded once per process, here or on the first unknown name
    loaded = []
    for point in entry_points(group=OPERATOR_GROUP):
        try:
            found = point.load()
        except Exception as exc:  # a user's module: any error, said in one line
            raise PitError(f"operators entry point {point.name} ({point.value}) cannot be"
                           f" loaded: {type(exc).__name__}: {exc}") from None
        if callable(found):
            found(OPERATORS)
        loaded.append(point.value)
    named = [m.strip() for m in os.environ.get(OPERATOR_MODULES, "").split(",") if m.strip()]
    for module in [*named, *modules]:
        try:
            importlib.import_module(module)
        except Exception as exc:  # as above
            raise PitError(f"operators module {module} cannot be imported:"
                           f" {type(exc).__name__}: {exc}") from None
        loaded.append(module)
    return loaded


class OperatorRegistry:
    """Operators by name. `OPERATORS` is the default one, with the built-ins; the first time
    it is asked for a name it does not know, it loads the user's operators
    (`load_operator_modules`), so every process - pit up validating, a runner running, a
    client submitting - finds them with no wiring."""

    def __init__(self, operators: Iterable[Operator] = (), *, plugins: bool = False) -> None:
        self._operators = {op.name: op for op in operators}
        self._plugins = plugins  # still to load (only the default registry has any)

    def register(self, name: str, fn: Callable[..., Any] | None = None, *,
                 inputs: Mapping[str, str] | None = None, output: str = "any",
                 replace: bool = False) -> Any:
        """Registers `fn` (or, without `fn`, returns a decorator that does). `inputs` defaults
        to the function's parameters, typed by their annotations (else any)."""
        def add(function: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._operators and not replace:
                raise ValueError(f"operator {name!r} is already registered")
            self._operators[name] = _operator(name, function, inputs, output)
            return function
        return add if fn is None else add(fn)

    def get(self, name: str) -> Operator | None:
        if name not in self._operators and self._plugins:
            self._plugins = False
            load_operator_modules()
        return self._operators.get(name)

    def __getitem__(self, name: str) -> Operator:
        found = self.get(name)
        if found is None:
            raise KeyError(name)
        return found

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def names(self) -> list[str]:
        return sorted(self._operators)

    def copy(self) -> OperatorRegistry:
        return OperatorRegistry(self._operators.values())


OPERATORS = OperatorRegistry(plugins=True)


def register_operator(name: str, fn: Callable[..., Any] | None = None, *,
                      inputs: Mapping[str, str] | None = None, output: str = "any",
                      registry: OperatorRegistry | None = None, replace: bool = False) -> Any:
    """`register_operator("add", add, inputs={"a": "float", "b": "float"}, output="float")`, or
    as a decorator: `@register_operator("add", inputs=..., output=...)`."""
    return (registry or OPERATORS).register(name, fn, inputs=inputs, output=output,
                                            replace=replace)


def _identity(value: Any) -> Any:
    return value


def _add(a: float, b: float) -> float:
    return a + b


def _sum_list(items: list) -> float:
    return sum(items)


def _sum_inputs(**values: float) -> float:
    return sum(values.values())


def _collect(**values: Any) -> list:
    return [values[name] for name in sorted(values)]


def _pack(**values: Any) -> dict:
    return values


def _length(items: list) -> int:
    return len(items)


def _sleep_then_return(value: Any, ms: int = 0) -> Any:
    time.sleep(ms / 1000)
    return value


def _raise_error(message: str = "injected failure", error: str = "RuntimeError") -> Any:
    # an exception class named `error`, so recovery tests can list it as non-retryable
    raise type(error, (Exception,), {})(message)


def _split_text(text: str, size: int = 1000) -> list:
    return [text[i:i + size] for i in range(0, len(text), max(size, 1))] or [""]


def _join_text(items: list, sep: str = "\n") -> str:
    return sep.join(str(item) for item in items)


register_operator("identity", _identity, inputs={"value": "any"}, output="any")
register_operator("add", _add, inputs={"a": "float", "b": "float"}, output="float")
register_operator("sum_list", _sum_list, inputs={"items": "list"}, output="float")
register_operator("sum_inputs", _sum_inputs, inputs={WILDCARD: "float"}, output="float")
register_operator("collect", _collect, inputs={WILDCARD: "any"}, output="list")
register_operator("pack", _pack, inputs={WILDCARD: "any"}, output="dict")
register_operator("length", _length, inputs={"items": "list"}, output="int")
register_operator("sleep_then_return", _sleep_then_return,
                  inputs={"value": "any", "ms": "int"}, output="any")
register_operator("raise_error", _raise_error,
                  inputs={"message": "str", "error": "str"}, output="any")
register_operator("split_text", _split_text, inputs={"text": "str", "size": "int"},
                  output="list")
register_operator("join_text", _join_text, inputs={"items": "list", "sep": "str"},
                  output="str")


# --- the dict form ---------------------------------------------------------------------------


def _changed(obj: Any) -> dict[str, Any]:
    # the fields that differ from their defaults, for a compact canonical form
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default_factory is MISSING else f.default_factory()
        if value != default or type(value) is not type(default):
            out[f.name] = value
    return out


def _backoff_dict(backoff: Backoff) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, StrEnum) else v for k, v in _changed(backoff).items()}


def _recovery_dict(recovery: Recovery) -> dict[str, Any]:
    out: dict[str, Any] = {"strategy": str(recovery.strategy)}
    for name, value in _changed(recovery).items():
        if name == "backoff":
            out[name] = _backoff_dict(value)
        elif name == "non_retryable":
            out[name] = list(value)
        elif name != "strategy":
            out[name] = str(value) if isinstance(value, StrEnum) else value
    return out


def _node_dict(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {"id": node.id, "kind": str(node.kind)}
    for name, value in _changed(node).items():
        if name == "condition":
            out[name] = {"op": value.op, **_changed(value)}
        elif name == "resources":
            out[name] = _changed(value)
        elif name == "recovery":
            out[name] = _recovery_dict(value)
        elif name not in ("id", "kind"):
            out[name] = value
    return out


def _workflow_dict(workflow: Workflow) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": workflow.name,
        "nodes": [_node_dict(node) for node in workflow.nodes],
        "edges": [{"from": e.source, "to": e.target} for e in workflow.edges],
    }
    settings = _changed(workflow)
    for name in ("timeout_ms", "max_concurrency", "checkpoint_every"):
        if name in settings:
            out[name] = settings[name]
    if "default_recovery" in settings:
        out["recovery"] = _recovery_dict(workflow.default_recovery)
    return out


class _Shape:
    """Reads the dict form, collecting every shape problem instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def mapping(self, value: Any, where: str, keys: Iterable[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.problems.append(f"{where}: expected a mapping, got {json_type(value)}")
            return {}
        unknown = sorted(str(k) for k in value if k not in keys)
        if unknown:
            self.problems.append(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                                 f"{', '.join(unknown)} (known: {', '.join(sorted(keys))})")
        return value

    def items(self, value: Any, where: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.problems.append(f"{where}: expected a list, got {json_type(value)}")
            return []
        return value

    def build(self, cls: type, data: Mapping[str, Any], **converted: Any) -> Any:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names}, **converted)

    def backoff(self, value: Any, where: str) -> Backoff:
        data = self.mapping(value, where, {f.name for f in fields(Backoff)})
        return self.build(Backoff, data)

    def recovery(self, value: Any, where: str) -> Recovery:
        data = self.mapping(value, where, {f.name for f in fields(Recovery)})
        converted: dict[str, Any] = {}
        if "backoff" in data:
            converted["backoff"] = self.backoff(data["backoff"], f"{where}.backoff")
        if "non_retryable" in data:
            converted["non_retryable"] = tuple(self.items(data["non_retryable"],
                                                          f"{where}.non_retryable"))
        return self.build(Recovery, {k: v for k, v in data.items() if k not in converted},
                          **converted)

    def node(self, value: Any, index: int) -> Node | None:
        where = f"nodes[{index}]"
        data = self.mapping(value, where, {f.name for f in fields(Node)})
        if "id" not in data:
            self.problems.append(f"{where}: missing id")
            return None
        where = f"node {data['id']!r}"
        converted: dict[str, Any] = {"kind": data.get("kind") or _implied_kind(data)}
        if "condition" in data:
            cond = self.mapping(data["condition"], f"{where}.condition", ("op", "value", "path"))
            converted["condition"] = self.build(Condition, cond)
        if "resources" in data:
            res = self.mapping(data["resources"], f"{where}.resources", ("cpu", "memory_mb"))
            converted["resources"] = self.build(Resources, res)
        if data.get("recovery") is not None:
            converted["recovery"] = self.recovery(data["recovery"], f"{where}.recovery")
        for name in ("constants", "params"):
            if name in data and data[name] is None:
                converted[name] = {}
            elif name in data and not isinstance(data[name], Mapping):
                self.problems.append(f"{where}.{name}: expected a mapping, got "
                                     f"{json_type(data[name])}")
        return self.build(Node, {k: v for k, v in data.items() if k not in converted},
                          **converted)

    def edge(self, value: Any, index: int) -> Edge | None:
        where = f"edges[{index}]"
        data = self.mapping(value, where, ("from", "to"))
        if not isinstance(data.get("from"), str) or not isinstance(data.get("to"), str):
            self.problems.append(f"{where}: needs 'from: node.output' and 'to: node.input' "
                                 "strings")
            return None
        return Edge.parse(data["from"], data["to"])


def _implied_kind(data: Mapping[str, Any]) -> str:
    if data.get("model"):
        return NodeKind.INSTRUMENT
    if data.get("condition") is not None:
        return NodeKind.BRANCH
    return NodeKind.OPERATOR if data.get("operator") else ""


_WORKFLOW_KEYS = ("name", "nodes", "edges", "timeout_ms", "max_concurrency", "recovery",
                  "checkpoint_every")


def workflow_from_dict(data: Any) -> Workflow:
    """A workflow from its dict form; `InvalidWorkflowError` listing every shape problem
    (unknown keys, a node without id, an edge without from/to). Call `check` for meaning."""
    shape = _Shape()
    top = shape.mapping(data, "workflow", _WORKFLOW_KEYS)
    name = top.get("name", "")
    nodes = [shape.node(v, i) for i, v in enumerate(shape.items(top.get("nodes"), "nodes"))]
    edges = [shape.edge(v, i) for i, v in enumerate(shape.items(top.get("edges"), "edges"))]
    recovery = (shape.recovery(top["recovery"], "recovery")
                if top.get("recovery") is not None else Recovery())
    if shape.problems:
        raise InvalidWorkflowError(str(name or "?"), shape.problems)
    return Workflow(name=name, nodes=tuple(n for n in nodes if n is not None),
                    edges=tuple(e for e in edges if e is not None),
                    timeout_ms=top.get("timeout_ms"), max_concurrency=top.get("max_concurrency"),
                    default_recovery=recovery, checkpoint_every=top.get("checkpoint_every", 0))


def workflow_from_json(text: str | bytes) -> Workflow:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidWorkflowError("?", [f"not JSON: {exc}"]) from None
    return workflow_from_dict(data)


def workflow_from_yaml(text: str | bytes) -> Workflow:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidWorkflowError("?", [f"not YAML: {' '.join(str(exc).split())}"]) from None
    return workflow_from_dict(data)


# --- building in Python ----------------------------------------------------------------------


class _BuilderSettings(TypedDict):
    """The `Workflow` fields a builder is given up front."""
    name: str
    timeout_ms: int | None
    max_concurrency: int | None
    default_recovery: Recovery
    checkpoint_every: int


class WorkflowBuilder:
    """`WorkflowBuilder("w").operator("a", "identity", constants={"value": 1})
    .operator("b", "add", constants={"b": 2}).edge("a", "b.a").build()`; the node methods take
    the other `Node` fields as keywords."""

    def __init__(self, name: str, *, timeout_ms: int | None = None,
                 max_concurrency: int | None = None, recovery: Recovery | None = None,
                 checkpoint_every: int = 0) -> None:
        self._settings: _BuilderSettings = {"name": name, "timeout_ms": timeout_ms,
                                            "max_concurrency": max_concurrency,
                                            "default_recovery": recovery or Recovery(),
                                            "checkpoint_every": checkpoint_every}
        self._nodes: list[Node] = []
        self._edges: list[Edge] = []

    def node(self, node: Node) -> WorkflowBuilder:
        self._nodes.append(node)
        return self

    def instrument(self, id: str, model: str, **options: Any) -> WorkflowBuilder:
        return self.node(Node(id, NodeKind.INSTRUMENT, model=model, **options))

    def operator(self, id: str, operator: str, **options: Any) -> WorkflowBuilder:
        return self.node(Node(id, NodeKind.OPERATOR, operator=operator, **options))

    def branch(self, id: str, condition: Condition, **options: Any) -> WorkflowBuilder:
        return self.node(Node(id, NodeKind.BRANCH, condition=condition, **options))

    def map(self, id: str, *, operator: str = "", model: str = "",
            **options: Any) -> WorkflowBuilder:
        return self.node(Node(id, NodeKind.MAP, operator=operator, model=model, **options))

    def edge(self, source: str, target: str) -> WorkflowBuilder:
        """`edge("a.out", "b.x")` (or `edge("a", "b.x")`)."""
        self._edges.append(Edge.parse(source, target))
        return self

    def build(self) -> Workflow:
        return Workflow(nodes=tuple(self._nodes), edges=tuple(self._edges), **self._settings)


# --- the graph -------------------------------------------------------------------------------


def _cycles(succ: list[list[int]], candidates: Iterable[int]) -> list[list[int]]:
    """One cycle (as a node path, first node repeated at the end) per strongly connected
    component with a cycle, among `candidates` (iterative Tarjan: 10,000-node chains)."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    components: list[list[int]] = []
    for root in candidates:
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(succ[w])))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1 or v in succ[v]:
                        components.append(component)
    cycles = []
    for component in components:
        members = set(component)
        start = min(component)
        parent: dict[int, int] = {}
        queue = deque([start])
        while queue:  # shortest way from `start` back to itself inside the component
            v = queue.popleft()
            if start in succ[v]:
                path = [start]
                while v != start:
                    path.append(v)
                    v = parent[v]
                cycles.append([start, *reversed(path[1:]), start])
                break
            for w in succ[v]:
                if w in members and w not in parent and w != start:
                    parent[w] = v
                    queue.append(w)
    return cycles


@dataclass(frozen=True)
class Graph:
    """The node-level DAG as index arrays: node i is `ids[i]` (ids sorted); `dependencies[i]`
    and `dependents[i]` are distinct node indexes; `order` is a topological order (Kahn's,
    smallest index first among the ready). Built for a validated workflow: edges naming
    unknown nodes are left out; a cycle raises `InvalidWorkflowError` naming it."""

    ids: tuple[str, ...]
    index: Mapping[str, int]
    dependencies: tuple[tuple[int, ...], ...]
    dependents: tuple[tuple[int, ...], ...]
    order: tuple[int, ...]

    @classmethod
    def of(cls, workflow: Workflow) -> Graph:
        ids = tuple(node.id for node in workflow.nodes)
        index = {node_id: i for i, node_id in enumerate(ids)}
        deps: list[set[int]] = [set() for _ in ids]
        for edge in workflow.edges:
            source, target = index.get(edge.from_node), index.get(edge.to_node)
            if source is not None and target is not None:
                deps[target].add(source)
        dependencies = tuple(tuple(sorted(d)) for d in deps)
        succ: list[list[int]] = [[] for _ in ids]
        for target, sources in enumerate(dependencies):
            for source in sources:
                succ[source].append(target)
        order, cycles = _topological(succ)
        if cycles:
            raise InvalidWorkflowError(workflow.name, [_cycle_reason(ids, c) for c in cycles])
        return cls(ids, index, dependencies, tuple(tuple(s) for s in succ), tuple(order))

    def dependencies_of(self, node_id: str) -> list[str]:
        return [self.ids[i] for i in self.dependencies[self.index[node_id]]]

    def dependents_of(self, node_id: str) -> list[str]:
        return [self.ids[i] for i in self.dependents[self.index[node_id]]]

    @property
    def sources(self) -> list[int]:
        return [i for i, deps in enumerate(self.dependencies) if not deps]

    @property
    def sinks(self) -> list[int]:
        return [i for i, deps in enumerate(self.dependents) if not deps]

    def critical_path_rank(self, durations: Mapping[str, float] | None = None,
                           default: float = 1.0) -> list[float]:
        """Per node index: its expected duration plus the longest rank among its dependents
        (the longest expected path from it to a sink). Schedule high ranks first."""
        weight = [default] * len(self.ids)
        for node_id, duration in (durations or {}).items():
            if node_id in self.index:
                weight[self.index[node_id]] = duration
        rank = [0.0] * len(self.ids)
        for i in reversed(self.order):
            rank[i] = weight[i] + max((rank[j] for j in self.dependents[i]), default=0.0)
        return rank


def _topological(succ: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Kahn's order of the nodes, and (if some are left over) the cycles that stop it."""
    indegree = [0] * len(succ)
    for targets in succ:
        for t in targets:
            indegree[t] += 1
    ready = deque(i for i, d in enumerate(indegree) if d == 0)
    order = []
    while ready:
        v = ready.popleft()
        order.append(v)
        for w in succ[v]:
            indegree[w] -= 1
            if indegree[w] == 0:
                ready.append(w)
    if len(order) == len(succ):
        return order, []
    return order, _cycles(succ, sorted(set(range(len(succ))) - set(order)))


def _cycle_reason(ids: tuple[str, ...], cycle: list[int]) -> str:
    return "cycle: " + " -> ".join(ids[i] for i in cycle)


# --- validation ------------------------------------------------------------------------------


def _is_json(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if depth > 64:
        return False
    if isinstance(value, list | tuple):
        return all(_is_json(v, depth + 1) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_json(v, depth + 1) for k, v in value.items())
    return False


# The largest int a definition may hold: what every JSON reader keeps exact (2**53), so a
# timeout added to a time still fits 64 bits; priorities and memory sizes go to INTEGER columns
# (32 bits on PostgreSQL).
MAX_INT, MAX_INT32 = 1 << 53, (1 << 31) - 1


def _is_int(value: Any, limit: int = MAX_INT) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -limit <= value <= limit


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


# the fields that say what a node does, by the kinds they apply to
_APPLIES = {NodeKind.INSTRUMENT: frozenset({"model"}), NodeKind.OPERATOR: frozenset({"operator"}),
            NodeKind.BRANCH: frozenset({"condition"}),
            NodeKind.MAP: frozenset({"model", "operator", "item_input"})}


def _where(edge: Edge) -> str:
    return f"edge {edge.source} -> {edge.target}"


class _Validator:
    def __init__(self, workflow: Workflow, registry: OperatorRegistry) -> None:
        self.wf = workflow
        self.registry = registry
        self.problems: list[str] = []
        self.nodes: dict[str, Node] = {}

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    def run(self) -> list[str]:
        self.settings()
        self.unique_ids()
        for node in self.nodes.values():
            self.node(node)
        fed = self.edges()
        for node in self.nodes.values():
            self.constants_and_required(node, fed)
        self.recovery(self.wf.default_recovery, "default recovery", None)
        for node in self.nodes.values():
            if node.recovery is not None:
                self.recovery(node.recovery, f"node {node.id!r}: recovery", node)
        self.cycles()
        return self.problems

    # workflow and nodes

    def settings(self) -> None:
        wf = self.wf
        if not isinstance(wf.name, str) or not wf.name.strip():
            self.add("workflow name is empty")
        if not wf.nodes:
            self.add("workflow has no nodes")
        for name in ("timeout_ms", "max_concurrency"):
            value = getattr(wf, name)
            if value is not None and not (_is_int(value) and value > 0):
                self.add(f"workflow {name} must be a positive int, got {value!r}")
        if not (_is_int(wf.checkpoint_every) and wf.checkpoint_every >= 0):
            self.add(f"workflow checkpoint_every must be an int >= 0 (0: no periodic "
                     f"checkpoints), got {wf.checkpoint_every!r}")

    def unique_ids(self) -> None:
        counts: dict[str, int] = {}
        for node in self.wf.nodes:
            if not isinstance(node.id, str) or not _NAME.fullmatch(node.id):
                self.add(f"node id {node.id!r} is not a name (letters, digits, _ and -, "
                         "at most 200)")
                continue
            counts[node.id] = counts.get(node.id, 0) + 1
            self.nodes.setdefault(node.id, node)
        for node_id, count in counts.items():
            if count > 1:
                self.add(f"duplicate node id {node_id!r} ({count} nodes)")

    def node(self, node: Node) -> None:
        where = f"node {node.id!r}"
        kind = node.kind
        if kind not in NodeKind._value2member_map_:
            self.add(f"{where}: unknown kind {kind!r} (one of {', '.join(NodeKind)})")
            return
        applies = _APPLIES[kind]
        for name, used in (("condition", node.condition is not None),
                           ("item_input", node.item_input), ("model", node.model),
                           ("operator", node.operator)):
            if used and name not in applies:
                self.add(f"{where}: {name} does not apply to {kind} nodes")
        if kind == NodeKind.INSTRUMENT and not (isinstance(node.model, str) and node.model):
            self.add(f"{where}: an instrument needs a model (a pool model id)")
        if kind == NodeKind.OPERATOR:
            self.known_operator(node, where)
        if kind == NodeKind.MAP:
            self.map_node(node, where)
        if kind == NodeKind.BRANCH:
            self.condition(node, where)
        if not _is_int(node.priority, MAX_INT32):
            self.add(f"{where}: priority must be an int within ±{MAX_INT32},"
                     f" got {node.priority!r}")
        res = node.resources
        if not isinstance(res, Resources) or not (_is_number(res.cpu) and res.cpu >= 0) or not (
                _is_int(res.memory_mb, MAX_INT32) and res.memory_mb >= 0):
            self.add(f"{where}: resources need cpu >= 0 and an int memory_mb in"
                     f" 0..{MAX_INT32}, got {res!r}")
        if not isinstance(node.pool, str) or (node.pool and not _NAME.fullmatch(node.pool)):
            self.add(f"{where}: pool {node.pool!r} is not a name (letters, digits, _ and -)")
        if node.timeout_ms is not None and not (_is_int(node.timeout_ms) and node.timeout_ms > 0):
            self.add(f"{where}: timeout_ms must be a positive int, got {node.timeout_ms!r}")
        for name in ("constants", "params"):
            value = getattr(node, name)
            if not isinstance(value, Mapping) or not _is_json(value):
                self.add(f"{where}: {name} must be a mapping of JSON values")

    def known_operator(self, node: Node, where: str) -> Operator | None:
        if not node.operator:
            self.add(f"{where}: an operator node needs an operator name")
            return None
        op = self.registry.get(node.operator)
        if op is None:
            self.add(f"{where}: unknown operator {node.operator!r}")
        return op

    def map_node(self, node: Node, where: str) -> None:
        if bool(node.model) == bool(node.operator):
            self.add(f"{where}: a map needs either an operator or a model (not both)")
            return
        op = self.known_operator(node, where) if node.operator else None
        item = item_input_of(node, self.registry)
        if op is not None and op.input_type(item) is None:
            self.add(f"{where}: item_input {item!r} is not an input of operator {op.name!r} "
                     f"(inputs: {', '.join(sorted(op.inputs))})")

    def condition(self, node: Node, where: str) -> None:
        cond = node.condition
        if not isinstance(cond, Condition):
            self.add(f"{where}: a branch needs a condition")
            return
        if cond.op not in CONDITION_OPS:
            self.add(f"{where}: unknown condition op {cond.op!r} "
                     f"(one of {', '.join(CONDITION_OPS)})")
        elif cond.op in ("gt", "ge", "lt", "le") and not (
                _is_number(cond.value) or isinstance(cond.value, str)):
            self.add(f"{where}: condition {cond.op} needs a number or string value")
        elif cond.op == "in" and not isinstance(cond.value, list | tuple | str):
            self.add(f"{where}: condition 'in' needs a list or string value")
        if not isinstance(cond.path, str) or not _is_json(cond.value):
            self.add(f"{where}: condition path must be a string and value JSON")

    # inputs and types

    def input_type(self, node: Node, name: str) -> str | None:
        """The type an input accepts, or None if the node has no such input."""
        if node.kind == NodeKind.INSTRUMENT:
            return "any"
        if node.kind == NodeKind.BRANCH:
            return "any" if name == VALUE else None
        if node.kind == NodeKind.MAP and name == ITEMS:
            return "list"
        op = self.registry.get(node.operator) if node.operator else None
        if node.kind == NodeKind.MAP:
            if name == item_input_of(node, self.registry):
                return None  # bound to each item, never fed
            return "any" if node.model else (op.input_type(name) if op else "any")
        return op.input_type(name) if op else "any"

    def required(self, node: Node) -> set[str]:
        if node.kind == NodeKind.BRANCH:
            return {VALUE}
        op = self.registry.get(node.operator) if node.operator else None
        if node.kind == NodeKind.MAP:
            return {ITEMS} | (set(op.required) - {item_input_of(node, self.registry)}
                              if op else set())
        if node.kind == NodeKind.OPERATOR and op is not None:
            return set(op.required)
        return set()

    def output_type(self, node_id: str, output: str) -> str:
        # a branch passes on what it is fed; follow a chain of branches to its start
        seen = set()
        node = self.nodes[node_id]
        while node.kind == NodeKind.BRANCH and node.id not in seen:
            seen.add(node.id)
            if VALUE in node.constants:
                return json_type(node.constants[VALUE])
            edge = self.feeding.get((node.id, VALUE))
            if edge is None or edge.from_node not in self.nodes:
                return "any"
            node = self.nodes[edge.from_node]
        if node.kind == NodeKind.MAP:
            return "list"
        op = self.registry.get(node.operator) if node.kind == NodeKind.OPERATOR else None
        return op.output if op else "any"

    def edges(self) -> set[tuple[str, str]]:
        # `input_type` once per edge, and an edge's name only when it has a problem: a large
        # workflow is validated by its client and again by the decider, edge by edge
        fed: set[tuple[str, str]] = set()
        self.feeding: dict[tuple[str, str], Edge] = {}
        typed: list[tuple[Edge, str]] = []  # the edges to type-check, with their input's type
        for edge in self.wf.edges:
            source, target = self.nodes.get(edge.from_node), self.nodes.get(edge.to_node)
            if source is None:
                self.add(f"{_where(edge)}: unknown node {edge.from_node!r}")
            elif edge.from_output not in source.outputs:
                self.add(f"{_where(edge)}: node {source.id!r} has no output"
                         f" {edge.from_output!r} (outputs: {', '.join(source.outputs)})")
            if target is None:
                self.add(f"{_where(edge)}: unknown node {edge.to_node!r}")
                continue
            if not edge.to_input:
                self.add(f"{_where(edge)}: no input named (write 'to: node.input')")
                continue
            known_kind = target.kind in NodeKind._value2member_map_
            want = self.input_type(target, edge.to_input) if known_kind else None
            if known_kind and want is None:
                self.add(f"{_where(edge)}: node {target.id!r} has no input {edge.to_input!r}")
                continue
            key = (edge.to_node, edge.to_input)
            if key in fed:
                self.add(f"{_where(edge)}: input {edge.target} is already fed by "
                         f"{self.feeding[key].source}")
                continue
            fed.add(key)
            self.feeding[key] = edge
            if want is not None and source is not None and edge.from_output in source.outputs:
                typed.append((edge, want))
        for edge, want in typed:
            have = self.output_type(edge.from_node, edge.from_output)
            if not compatible(have, want):
                self.add(f"{_where(edge)}: type mismatch, {have} output into {want} input")
        return fed

    def constants_and_required(self, node: Node, fed: set[tuple[str, str]]) -> None:
        if node.kind not in NodeKind._value2member_map_ or not isinstance(node.constants,
                                                                            Mapping):
            return
        where = f"node {node.id!r}"
        for name, value in node.constants.items():
            want = self.input_type(node, name)
            if want is None:
                self.add(f"{where}: constant for unknown input {name!r}")
            elif (node.id, name) in fed:
                self.add(f"{where}: input {name!r} is fed by both a constant and an edge")
            elif value is not None and not compatible(json_type(value), want):
                self.add(f"{where}: type mismatch, constant {name}={value!r} "
                         f"({json_type(value)}) into {want} input")
        missing = sorted(n for n in self.required(node)
                         if (node.id, n) not in fed and n not in node.constants)
        if missing:
            self.add(f"{where}: missing required input{'s' if len(missing) > 1 else ''} "
                     f"{', '.join(missing)}")

    # recovery and cycles

    def recovery(self, rec: Recovery, where: str, node: Node | None) -> None:
        if not isinstance(rec, Recovery):
            self.add(f"{where}: expected a recovery, got {rec!r}")
            return
        for name in ("strategy", "on_exhausted"):
            if getattr(rec, name) not in Strategy._value2member_map_:
                self.add(f"{where}: unknown {name} {getattr(rec, name)!r} "
                         f"(one of {', '.join(Strategy)})")
        if rec.on_exhausted == Strategy.RETRY:
            self.add(f"{where}: on_exhausted cannot be retry")
        if not (_is_int(rec.max_attempts) and rec.max_attempts >= 1):
            self.add(f"{where}: max_attempts must be an int >= 1, got {rec.max_attempts!r}")
        self.backoff(rec.backoff, where)
        if not all(isinstance(t, str) and _ERROR_TYPE.fullmatch(t) for t in rec.non_retryable):
            self.add(f"{where}: non_retryable must list error type names, got "
                     f"{list(rec.non_retryable)!r}")
        for name in ("fallback_value", "default_output"):
            if not _is_json(getattr(rec, name)):
                self.add(f"{where}: {name} must be a JSON value")
        uses_fallback = Strategy.FALLBACK in (rec.strategy, rec.on_exhausted)
        if rec.fallback_node and not uses_fallback:
            self.add(f"{where}: fallback_node is set but the strategy never falls back")
        if uses_fallback and rec.fallback_node:
            if node is None:
                self.add(f"{where}: cannot fall back to a node (it would apply to every node)")
            elif rec.fallback_node not in self.nodes:
                self.add(f"{where}: fallback to unknown node {rec.fallback_node!r}")
            elif rec.fallback_node == node.id:
                self.add(f"{where}: a node cannot fall back to itself")
            elif rec.fallback_output not in self.nodes[rec.fallback_node].outputs:
                self.add(f"{where}: fallback node {rec.fallback_node!r} has no output "
                         f"{rec.fallback_output!r}")
            elif rec.fallback_value is not None:
                self.add(f"{where}: fallback takes a value or a node, not both")
        if node is not None and node.kind in NodeKind._value2member_map_:
            self.fallback_type(rec, where, node)

    def fallback_type(self, rec: Recovery, where: str, node: Node) -> None:
        if node.kind == NodeKind.BRANCH:
            return  # a branch's output type is what it is fed
        want = self.output_type(node.id, OUT)
        for name in ("fallback_value", "default_output"):
            value = getattr(rec, name)
            if value is not None and _is_json(value) and not compatible(json_type(value), want):
                self.add(f"{where}: type mismatch, {name} {value!r} ({json_type(value)}) for a "
                         f"{want} output")

    def backoff(self, b: Backoff, where: str) -> None:
        if not isinstance(b, Backoff):
            self.add(f"{where}: expected a backoff, got {b!r}")
            return
        if b.kind not in BackoffKind._value2member_map_:
            self.add(f"{where}: unknown backoff kind {b.kind!r} (one of {', '.join(BackoffKind)})")
        for name in ("initial_ms", "increment_ms", "max_ms"):
            if not (_is_int(getattr(b, name)) and getattr(b, name) >= 0):
                self.add(f"{where}: backoff {name} must be an int >= 0, got {getattr(b, name)!r}")
        if _is_int(b.initial_ms) and _is_int(b.max_ms) and b.max_ms < b.initial_ms:
            self.add(f"{where}: backoff max_ms {b.max_ms} is below initial_ms {b.initial_ms}")
        if not (_is_number(b.multiplier) and b.multiplier >= 1):
            self.add(f"{where}: backoff multiplier must be >= 1, got {b.multiplier!r}")
        if not (_is_number(b.jitter) and 0 <= b.jitter <= 1):
            self.add(f"{where}: backoff jitter must be a fraction in [0, 1], got {b.jitter!r}")

    def cycles(self) -> None:
        ids = sorted(self.nodes)
        index = {node_id: i for i, node_id in enumerate(ids)}
        succ: list[list[int]] = [[] for _ in ids]
        for edge in self.wf.edges:
            if edge.from_node in index and edge.to_node in index:
                succ[index[edge.from_node]].append(index[edge.to_node])
        cycles = _topological(succ)[1]
        for cycle in cycles:
            self.add(_cycle_reason(tuple(ids), cycle))
        if cycles:
            return
        # a node waits for its fallback node only when it fails: that must not wait for it
        fallback = False
        for node in self.nodes.values():
            rec = node.recovery
            if (rec is not None and rec.fallback_node in index and rec.fallback_node != node.id
                    and Strategy.FALLBACK in (rec.strategy, rec.on_exhausted)):
                succ[index[rec.fallback_node]].append(index[node.id])
                fallback = True
        if fallback:
            for cycle in _cycles(succ, range(len(ids))):
                self.add("fallback " + _cycle_reason(tuple(ids), cycle)
                         + " (a node cannot fall back to a node that depends on it)")


def item_input_of(node: Node, registry: OperatorRegistry | None = None) -> str:
    """The input each item of a map node is bound to: `item_input`, else the operator's only
    input, else "item"."""
    if node.item_input:
        return node.item_input
    op = (registry or OPERATORS).get(node.operator) if node.operator else None
    if op is not None and len(op.inputs) == 1 and WILDCARD not in op.inputs:
        return next(iter(op.inputs))
    return ITEM


def validate(workflow: Workflow, registry: OperatorRegistry | None = None) -> list[str]:
    """Every problem of the definition, one clear reason each (empty if valid)."""
    return _Validator(workflow, registry or OPERATORS).run()


def check(workflow: Workflow, registry: OperatorRegistry | None = None) -> Workflow:
    """The workflow if it is valid; else `InvalidWorkflowError` listing every problem."""
    problems = validate(workflow, registry)
    if problems:
        raise InvalidWorkflowError(str(workflow.name), problems)
    return workflow


# --- synthetic DAGs --------------------------------------------------------------------------


def _ids(count: int, prefix: str = "n") -> list[str]:
    width = len(str(max(count - 1, 0)))
    return [f"{prefix}{i:0{width}d}" for i in range(count)]


def deep_dag(length: int, *, name: str = "deep", operator: str = "add",
             **node_options: Any) -> Workflow:
    """A chain: n0 = 0 + 1, n(i) = n(i-1) + 1; the last node's output is `length`."""
    ids = _ids(length)
    nodes = [Node(ids[0], NodeKind.OPERATOR, operator=operator,
                  constants={"a": 0, "b": 1}, **node_options)]
    nodes += [Node(i, NodeKind.OPERATOR, operator=operator, constants={"b": 1}, **node_options)
              for i in ids[1:]]
    edges = [Edge(ids[k], "a", ids[k - 1]) for k in range(1, length)]
    return Workflow(name, tuple(nodes), tuple(edges))


def wide_dag(width: int, *, name: str = "wide", operator: str = "add",
             **node_options: Any) -> Workflow:
    """Fan-out/fan-in: "source" (1) feeds `width` nodes n(i) = source + i, whose outputs
    "sink" sums (sum_inputs): the sink's output is width + width*(width-1)/2."""
    ids = _ids(width)
    nodes = [Node("source", NodeKind.OPERATOR, operator="identity", constants={"value": 1}),
             Node("sink", NodeKind.OPERATOR, operator="sum_inputs")]
    nodes += [Node(i, NodeKind.OPERATOR, operator=operator, constants={"b": k}, **node_options)
              for k, i in enumerate(ids)]
    edges = [Edge(i, "a", "source") for i in ids] + [Edge("sink", i, i) for i in ids]
    return Workflow(name, tuple(nodes), tuple(edges))


def sleepy_dag(width: int, ms: int, *, name: str = "sleepy") -> Workflow:
    """Fan-out/fan-in of `width` nodes that each sleep `ms` (sleep_then_return) between a
    source (1) and a sink that sums them: the sink's output is `width`."""
    ids = _ids(width)
    nodes = [Node("source", NodeKind.OPERATOR, operator="identity", constants={"value": 1}),
             Node("sink", NodeKind.OPERATOR, operator="sum_inputs")]
    nodes += [Node(i, NodeKind.OPERATOR, operator="sleep_then_return", constants={"ms": ms})
              for i in ids]
    edges = [Edge(i, "value", "source") for i in ids] + [Edge("sink", i, i) for i in ids]
    return Workflow(name, tuple(nodes), tuple(edges))


def layered_dag(count: int, *, seed: int, layers: int = 10, max_fan_in: int = 3,
                name: str = "layered", **node_options: Any) -> Workflow:
    """`count` nodes spread at random over `layers` non-empty layers (fewer if count is
    smaller). A first-layer node outputs 1; every other node sums (sum_inputs) one node of the
    layer just before it and up to max_fan_in - 1 more of any earlier layer, so the longest
    path has exactly `layers` nodes. Same seed, same DAG."""
    rng = random.Random(seed)
    layers = max(1, min(layers, count))
    ids = _ids(count)
    layer_of = sorted(list(range(layers)) + [rng.randrange(layers) for _ in range(count - layers)])
    # layer -> its first node, so nodes first[l-1]..first[l]-1 are layer l-1
    first: dict[int, int] = {}
    for k, layer in enumerate(layer_of):
        first.setdefault(layer, k)
    nodes: list[Node] = []
    edges: list[Edge] = []
    for k, node_id in enumerate(ids):
        layer = layer_of[k]
        if layer == 0:
            nodes.append(Node(node_id, NodeKind.OPERATOR, operator="identity",
                              constants={"value": 1}, **node_options))
            continue
        nodes.append(Node(node_id, NodeKind.OPERATOR, operator="sum_inputs", **node_options))
        sources = {rng.randrange(first[layer - 1], first[layer])}
        extra = rng.randint(0, max_fan_in - 1)
        sources.update(rng.sample(range(first[layer]), min(first[layer], extra)))
        edges.extend(Edge(node_id, ids[source], ids[source]) for source in sorted(sources))
    return Workflow(name, tuple(nodes), tuple(edges))
