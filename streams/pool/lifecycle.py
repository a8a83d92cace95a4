"""Model lifecycle (seed M3.1.1/M3.1.2): states, transitions, reasons, counters.

The whole rulebook of a model's life is the `TRANSITIONS` table below; `decide` enforces
it and `evolve` applies what was decided. Time comes from event timestamps (milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from streams.decider import Decider, Message, Rejection, fits_int64
from streams.pool.topics import POOL_COMMANDS, POOL_EVENTS


class ModelState(StrEnum):
    COLD = "Cold"          # not loaded, no resources allocated
    WARMING = "Warming"    # loading into memory, initializing
    HOT = "Hot"            # ready for inference, fully loaded
    COOLING = "Cooling"    # marked for unload, finishing requests
    FAILED = "Failed"      # error state, needs recovery


class TransitionReason(StrEnum):
    USER_REQUEST = "UserRequest"
    AUTOMATIC_TIMEOUT = "AutomaticTimeout"
    HEALTH_CHECK_FAILURE = "HealthCheckFailure"
    RESOURCE_PRESSURE = "ResourcePressure"
    PREDICTIVE_PREWARM = "PredictivePrewarm"
    SCHEDULED_COOLDOWN = "ScheduledCooldown"
    ERROR_RECOVERY = "ErrorRecovery"


Cold, Warming, Hot, Cooling, Failed = ModelState
TRANSITIONS: MappingProxyType[ModelState, frozenset[ModelState]] = MappingProxyType({
    Cold: frozenset({Warming}),
    Warming: frozenset({Hot, Failed}),
    Hot: frozenset({Cooling, Failed}),
    Cooling: frozenset({Cold, Failed}),
    Failed: frozenset({Cold}),  # recovery
})


def can_transition(source: ModelState, target: ModelState) -> bool:
    return target in TRANSITIONS[source]


DEFAULT_POOL = "default"

# --- commands -------------------------------------------------------------------------------
# Each names its model (the subject, `entity_key`) and the pool that decides it: the pool
# processor routes every command by pool_id (see streams/pool/pool.py).

@dataclass(frozen=True)
class TransitionModel(Message):
    avro_name = "pit.pool.TransitionModel"
    key_field = "model_id"
    model_id: str
    to_state: ModelState
    reason: TransitionReason
    metadata: dict[str, str] = field(default_factory=dict)
    pool_id: str = DEFAULT_POOL


@dataclass(frozen=True)
class RecordModelUsage(Message):
    avro_name = "pit.pool.RecordModelUsage"
    key_field = "model_id"
    model_id: str
    invocations: int = 1
    pool_id: str = DEFAULT_POOL


# --- events ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelTransitioned(Message):
    avro_name = "pit.pool.ModelTransitioned"
    key_field = "model_id"
    model_id: str
    from_state: ModelState
    to_state: ModelState
    reason: TransitionReason
    time_in_previous_ms: int
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelUsageRecorded(Message):
    avro_name = "pit.pool.ModelUsageRecorded"
    key_field = "model_id"
    model_id: str
    invocations: int


# --- state ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelLifecycle:
    model_id: str
    state: ModelState = Cold
    entered_at_ms: int | None = None   # None until the first transition
    last_used_ms: int | None = None
    transition_count: int = 0
    failure_count: int = 0
    usage_count: int = 0

    def time_in_state_ms(self, now_ms: int) -> int:
        return 0 if self.entered_at_ms is None else max(0, now_ms - self.entered_at_ms)


def initial_state(model_id: str) -> ModelLifecycle:
    return ModelLifecycle(model_id)


def decide(state: ModelLifecycle, command: Message, now_ms: int) -> list[Message]:
    if not command.entity_key:
        raise Rejection("model_id must not be empty")
    match command:
        case TransitionModel(model_id=model_id, to_state=target, reason=reason):
            if not can_transition(state.state, target):
                allowed = ", ".join(sorted(TRANSITIONS[state.state])) or "none"
                raise Rejection(
                    f"invalid transition {state.state} -> {target} for model {model_id} "
                    f"(from {state.state} only: {allowed})"
                )
            return [ModelTransitioned(model_id, state.state, target, reason,
                                      state.time_in_state_ms(now_ms), dict(command.metadata))]
        case RecordModelUsage(model_id=model_id, invocations=invocations):
            if invocations <= 0:
                raise Rejection(f"invocations must be positive, got {invocations}")
            if state.state is not Hot:
                raise Rejection(f"model {model_id} is {state.state}; usage requires Hot")
            if not fits_int64(state.usage_count + invocations):
                raise Rejection(f"model {model_id}: {invocations} more invocations would"
                                f" overflow its usage count ({state.usage_count}, 64 bits)")
            return [ModelUsageRecorded(model_id, invocations)]
    raise Rejection(f"the pool does not handle {command.type_name}")


def evolve(state: ModelLifecycle, event: Message, at_ms: int) -> ModelLifecycle:
    match event:
        case ModelTransitioned(to_state=target):
            return ModelLifecycle(state.model_id, target, at_ms, state.last_used_ms,
                                  state.transition_count + 1,
                                  state.failure_count + (target is Failed), state.usage_count)
        case ModelUsageRecorded(invocations=invocations):
            return replace(state, usage_count=state.usage_count + invocations, last_used_ms=at_ms)
    return state


LIFECYCLE = Decider(
    name="pool",
    command_topic=POOL_COMMANDS,
    event_topic=POOL_EVENTS,
    commands=(TransitionModel, RecordModelUsage),
    events=(ModelTransitioned, ModelUsageRecorded),
    initial_state=initial_state,
    decide=decide,
    evolve=evolve,
)
