"""The pool decider, rule by rule, as short scenarios."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from schemas.catalog import current_schemas
from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.decider import Message, Rejection, from_record, to_record
from streams.persistent import PMap
from streams.pool.lifecycle import (
    ModelState,
    ModelTransitioned,
    ModelUsageRecorded,
    RecordModelUsage,
    TransitionModel,
    TransitionReason,
)
from streams.pool.pool import (
    COMMANDS,
    EVENTS,
    HEALTH_FAILURE_THRESHOLD,
    POOL,
    AllocateModel,
    AllocationFailed,
    CoolModel,
    HostDown,
    HostRegistered,
    LoadRequested,
    ModelAllocated,
    ModelEvicted,
    ModelPlaced,
    ModelRegistered,
    ModelReleased,
    PoolState,
    RegisterHost,
    RegisterModel,
    ReleaseModel,
    ReportHealth,
    ReportHostDown,
    ReportModelLoaded,
    ReportModelLoadFailed,
    ReportModelUnloaded,
    UnloadRequested,
    WarmModel,
    decide,
    evolve,
    initial_state,
)

Cold, Warming, Hot, Cooling, Failed = ModelState
R = TransitionReason
T0 = 1_700_000_000_000


class Pool:
    """A pool under test: send commands, keep the state, remember every event."""

    def __init__(self, *hosts: tuple[str, int, int], **models: int) -> None:
        self.state: PoolState = initial_state("default")
        self.now = T0
        self.log: list[Message] = []
        for host_id, budget, capacity in hosts:
            self.send(RegisterHost(host_id, budget, capacity))
        for model_id, memory in models.items():
            self.send(RegisterModel(model_id, f"py://{model_id}", memory, 100))

    def send(self, command: Message, after_ms: int = 10) -> list[Message]:
        self.now += after_ms
        events = decide(self.state, command, self.now)
        for event in events:
            self.state = evolve(self.state, event, self.now)
        self.log.extend(events)
        return events

    def reject(self, command: Message) -> str:
        with pytest.raises(Rejection) as caught:
            decide(self.state, command, self.now)
        return caught.value.reason

    def model(self, model_id: str):
        return self.state.models[model_id]

    def hot(self, model_id: str, request_id: str = "warmup", memory: int | None = None) -> str:
        """Allocate and load a model, then release it: Hot and idle. Returns its host."""
        self.send(AllocateModel(request_id, model_id, "test"))
        host = self.model(model_id).host
        self.send(ReportModelLoaded(host, model_id, 50,
                                    memory or self.model(model_id).declared_memory_mb))
        self.send(ReleaseModel(request_id))
        return host


def kinds(events: list[Message]) -> list[str]:
    """Event names, with the target state for transitions: readable expectations."""
    return [f"->{e.to_state}" if isinstance(e, ModelTransitioned) else type(e).__name__
            for e in events]


# --- registration ----------------------------------------------------------------------------

def test_registering_twice_is_a_no_op_and_different_parameters_are_refused() -> None:
    pool = Pool(("h1", 1000, 4), m=100)
    assert pool.send(RegisterModel("m", "py://m", 100, 100)) == []
    assert pool.send(RegisterHost("h1", 1000, 4)) == []
    assert "already registered with other parameters" in pool.reject(
        RegisterModel("m", "py://other", 100, 100))
    assert "already registered with other parameters" in pool.reject(RegisterHost("h1", 999, 4))
    assert "must lie in 1.." in pool.reject(RegisterModel("n", "py://n", 0, 100))
    assert "must lie in 1.." in pool.reject(RegisterHost("h2", 100, 0))
    assert pool.reject(AllocateModel("r", "m", "x", pool_id="other")).startswith("command for pool")


# --- allocation: hits and misses -------------------------------------------------------------

def test_a_cold_model_is_placed_loaded_and_then_every_queued_request_allocated() -> None:
    pool = Pool(("small", 500, 4), ("big", 2000, 4), m=300)
    events = pool.send(AllocateModel("r1", "m", "alice"))
    assert kinds(events) == ["ModelPlaced", "->Warming", "LoadRequested", "AllocationQueued"]
    assert events[0] == ModelPlaced("m", "big", 300, R.USER_REQUEST)  # the most free memory
    assert events[2] == LoadRequested("m", "big", "py://m", 300, R.USER_REQUEST)
    # Warming: queued, no second load.
    assert kinds(pool.send(AllocateModel("r2", "m", "bob"))) == ["AllocationQueued"]
    events = pool.send(ReportModelLoaded("big", "m", load_ms=1234, memory_mb=280))
    assert kinds(events) == ["ModelLoaded", "->Hot", "ModelAllocated", "ModelAllocated"]
    assert events[2:] == [ModelAllocated("r1", "m", "alice", "big", False),
                          ModelAllocated("r2", "m", "bob", "big", False)]
    model = pool.model("m")
    assert (model.state, model.memory_mb, model.load_ms, model.allocations) == (
        Hot, 280, 1234, {"r1", "r2"})
    stats = pool.state.stats
    assert (stats.hits, stats.misses, stats.loads, stats.load_time_total_ms) == (0, 2, 1, 1234)


def test_a_hot_model_is_a_cache_hit_and_moves_to_the_back_of_the_lru() -> None:
    pool = Pool(("h1", 1000, 4), a=100, b=100)
    pool.hot("a", "w1")
    pool.hot("b", "w2")
    assert pool.state.lru("h1") == ["a", "b"]
    assert pool.send(AllocateModel("r", "a", "carol")) == [
        ModelAllocated("r", "a", "carol", "h1", True)]
    assert pool.state.lru("h1") == ["b", "a"]
    assert pool.state.stats.hits == 1
    assert pool.model("a").lifecycle.usage_count == 2  # the lifecycle's own usage counter
    assert "already active" in pool.reject(AllocateModel("r", "b", "carol"))
    assert pool.reject(AllocateModel("r2", "nope", "carol")) == "unknown model 'nope'"


# --- LRU eviction within memory limits -------------------------------------------------------

def test_a_full_host_evicts_its_least_recently_used_idle_model_and_loads_after_the_unload() -> None:
    pool = Pool(("h1", 300, 10), a=100, b=100, c=100, d=100)
    for model_id in "abc":
        pool.hot(model_id, f"w-{model_id}")
    pool.send(AllocateModel("use-a", "a", "x"))  # a is now the most recently used
    events = pool.send(AllocateModel("r", "d", "x"))
    assert kinds(events) == ["ModelEvicted", "->Cooling", "UnloadRequested", "ModelPlaced",
                             "AllocationQueued"]
    assert events[0] == ModelEvicted("b", "h1")  # least recently used, and idle
    assert events[1].reason is R.RESOURCE_PRESSURE
    assert events[2] == UnloadRequested("b", "h1", R.RESOURCE_PRESSURE)
    # No LoadRequested yet: b still occupies memory on h1 until h1 says it is gone.
    assert pool.model("d").waiting
    usage = pool.state.usage("h1")
    assert (usage.resident_mb, usage.committed_mb) == (300, 300)
    events = pool.send(ReportModelUnloaded("h1", "b"))
    assert kinds(events) == ["ModelUnloaded", "->Cold", "->Warming", "LoadRequested"]
    assert pool.model("b").state is Cold and pool.model("b").host is None
    assert pool.state.stats.evictions == 1


def test_allocated_models_are_never_evicted_and_a_request_that_cannot_fit_is_refused() -> None:
    pool = Pool(("h1", 300, 10), a=100, b=100, big=250)
    pool.hot("a", "w1")
    pool.hot("b", "w2")
    pool.send(AllocateModel("hold-a", "a", "x"))
    reason = pool.reject(AllocateModel("r", "big", "x"))
    assert "needs 250 MB" in reason and "200 MB" in reason
    assert "allocated or draining models are never evicted" in reason
    pool.send(ReleaseModel("hold-a"))  # a release is a use: b is now least recently used
    events = pool.send(AllocateModel("r", "big", "x"))
    assert [e for e in events if isinstance(e, ModelEvicted)] == [
        ModelEvicted("b", "h1"), ModelEvicted("a", "h1")]


def test_capacity_counts_models_like_memory() -> None:
    pool = Pool(("h1", 10_000, 1), a=100, b=100)
    pool.hot("a")
    events = pool.send(AllocateModel("r", "b", "x"))
    assert ModelEvicted("a", "h1") in events


def test_eviction_prefers_the_host_needing_the_fewest_evictions() -> None:
    pool = Pool(("h1", 200, 10), ("h2", 200, 10), a=100, b=100, c=200, d=150)
    pool.hot("a", "w1")  # h1 (most free, then id)
    pool.hot("b", "w2")  # h2
    events = pool.send(AllocateModel("r", "c", "x"))  # fits nowhere without evicting
    assert ModelEvicted("a", "h1") in events  # one eviction either way: then the id decides
    assert pool.model("c").host == "h1" and pool.model("b").state is Hot
    assert kinds(pool.send(ReportModelUnloaded("h1", "a")))[-1] == "LoadRequested"


# --- graceful shutdown: Cooling drains ------------------------------------------------------

def test_cooling_accepts_no_new_allocations_and_unloads_only_once_drained() -> None:
    pool = Pool(("h1", 1000, 4), m=100)
    pool.hot("m")
    pool.send(AllocateModel("r1", "m", "x"))
    pool.send(AllocateModel("r2", "m", "x"))
    assert kinds(pool.send(CoolModel("m", R.SCHEDULED_COOLDOWN))) == ["->Cooling"]
    assert "Cooling" in pool.reject(AllocateModel("r3", "m", "x"))
    assert "no unload was requested" in pool.reject(ReportModelUnloaded("h1", "m"))
    assert kinds(pool.send(ReleaseModel("r1"))) == ["ModelReleased"]
    assert pool.send(ReleaseModel("r2")) == [ModelReleased("r2", "m", "h1"),
                                             UnloadRequested("m", "h1", R.SCHEDULED_COOLDOWN)]
    assert kinds(pool.send(ReportModelUnloaded("h1", "m"))) == ["ModelUnloaded", "->Cold"]
    assert "invalid transition Cold -> Cooling" in pool.reject(CoolModel("m"))


def test_release_of_an_unknown_request_is_refused_and_of_a_queued_one_cancels_it() -> None:
    pool = Pool(("h1", 1000, 4), m=100)
    assert "unknown request" in pool.reject(ReleaseModel("nope"))
    pool.send(AllocateModel("r", "m", "x"))
    assert pool.send(ReleaseModel("r")) == [
        AllocationFailed("r", "m", "cancelled", "released while queued", False)]
    assert "unknown request" in pool.reject(ReleaseModel("r"))
    assert kinds(pool.send(ReportModelLoaded("h1", "m", 5, 100))) == ["ModelLoaded", "->Hot"]


# --- failures and recovery ------------------------------------------------------------------

def test_a_load_failure_fails_the_queue_and_frees_the_reservation() -> None:
    pool = Pool(("h1", 1000, 4), m=600)
    pool.send(AllocateModel("r1", "m", "x"))
    events = pool.send(ReportModelLoadFailed("h1", "m", "no such file"))
    assert kinds(events) == ["AllocationFailed", "->Failed", "ModelLoadFailed"]
    assert events[0].code == "load_failed" and "no such file" in events[0].reason
    assert not events[0].in_flight
    assert pool.state.usage("h1").resident_mb == 0 and pool.model("m").host is None
    # Recovery on demand: Failed -> Cold (ErrorRecovery), then warm like Cold.
    events = pool.send(AllocateModel("r2", "m", "x"))
    assert kinds(events) == ["->Cold", "ModelPlaced", "->Warming", "LoadRequested",
                             "AllocationQueued"]
    assert events[0].reason is R.ERROR_RECOVERY


def test_consecutive_health_failures_fail_a_hot_model_and_a_success_resets_the_count() -> None:
    pool = Pool(("h1", 1000, 4), m=100)
    pool.hot("m")
    pool.send(AllocateModel("busy", "m", "x"))
    for _ in range(HEALTH_FAILURE_THRESHOLD - 1):
        pool.send(ReportHealth("h1", "m", False, 900.0, "timeout"))
    assert pool.model("m").health_failures == HEALTH_FAILURE_THRESHOLD - 1
    (recorded,) = pool.send(ReportHealth("h1", "m", True, 12.0, "ok"))
    assert recorded.consecutive_failures == 0
    for _ in range(HEALTH_FAILURE_THRESHOLD - 1):
        pool.send(ReportHealth("h1", "m", False, 900.0, "timeout"))
    events = pool.send(ReportHealth("h1", "m", False, 900.0, "timeout"))
    assert kinds(events) == ["HealthRecorded", "AllocationFailed", "->Failed", "UnloadRequested"]
    assert events[1].in_flight and events[1].code == "health_check"
    assert events[2].reason is R.HEALTH_CHECK_FAILURE and events[2].metadata["host"] == "h1"
    assert "awaiting its unload" in pool.reject(AllocateModel("again", "m", "x"))
    assert kinds(pool.send(ReportModelUnloaded("h1", "m"))) == ["ModelUnloaded"]
    assert pool.model("m").state is Failed and pool.model("m").host is None


def test_a_host_down_fails_its_models_ends_their_allocations_and_replaces_queued_ones() -> None:
    pool = Pool(("h1", 1000, 4), ("h2", 500, 4), hot=100, loading=100)
    assert pool.hot("hot") == "h1"
    pool.send(AllocateModel("in-flight", "hot", "x"))
    pool.send(AllocateModel("queued", "loading", "x"))
    assert pool.model("loading").host == "h1"
    events = pool.send(ReportHostDown("h1"))
    assert kinds(events) == ["AllocationFailed", "->Failed", "->Failed", "HostDown",
                             "->Cold", "ModelPlaced", "->Warming", "LoadRequested"]
    assert events[0] == AllocationFailed("in-flight", "hot", "host_down", "host h1 is down", True)
    assert events[3] == HostDown("h1", ["hot", "loading"])
    assert events[5].host_id == "h2" and events[5].reason is R.ERROR_RECOVERY
    assert pool.model("hot").state is Failed and pool.model("hot").host is None
    assert pool.state.requests["queued"].model_id == "loading"  # still waiting, not lost
    assert "host h1 is down" in pool.reject(ReportModelLoaded("h1", "loading", 1, 100))
    assert kinds(pool.send(ReportModelLoaded("h2", "loading", 1, 100)))[-1] == "ModelAllocated"
    # The host comes back empty.
    assert pool.send(RegisterHost("h1", 1000, 4)) == [HostRegistered("h1", 1000, 4)]
    assert pool.state.hosts["h1"].alive and pool.state.usage("h1").resident_mb == 0


def test_a_queued_allocation_that_fits_nowhere_after_a_host_down_fails() -> None:
    pool = Pool(("h1", 1000, 4), ("h2", 100, 4), m=500)
    pool.send(AllocateModel("r", "m", "x"))
    events = pool.send(ReportHostDown("h1"))
    assert kinds(events) == ["->Failed", "HostDown", "AllocationFailed"]
    assert events[-1].code == "no_room" and "needs 500 MB" in events[-1].reason


def test_a_model_measured_too_big_for_its_host_fails_and_is_unloaded() -> None:
    pool = Pool(("h1", 500, 4), m=300)
    pool.send(AllocateModel("r", "m", "x"))
    events = pool.send(ReportModelLoaded("h1", "m", 10, 700))
    assert kinds(events) == ["ModelLoaded", "AllocationFailed", "->Failed", "UnloadRequested"]
    assert events[1].code == "too_big" and events[2].reason is R.RESOURCE_PRESSURE
    pool.send(ReportModelUnloaded("h1", "m"))
    assert "needs 700 MB" in pool.reject(AllocateModel("r2", "m", "x"))  # measured now


# --- prewarming ------------------------------------------------------------------------------

def test_prewarming_without_scores_loads_into_free_memory_only_and_never_evicts() -> None:
    pool = Pool(("h1", 200, 4), a=100, b=100, c=100)
    events = pool.send(WarmModel("a", 0.8, "markov: b follows a"))
    assert kinds(events) == ["ModelPlaced", "->Warming", "LoadRequested"]
    assert events[1].reason is R.PREDICTIVE_PREWARM
    assert events[2].reason is R.PREDICTIVE_PREWARM
    assert pool.send(WarmModel("a", 0.8, "again")) == []  # already warming
    pool.send(ReportModelLoaded("h1", "a", 5, 100))
    assert kinds(pool.send(AllocateModel("r", "a", "x"))) == ["ModelAllocated"]  # a hit
    pool.send(ReleaseModel("r"))
    pool.hot("b")
    assert "a prewarm without scores never evicts" in pool.reject(WarmModel("c", 0.99, "x"))
    assert "probability" in pool.reject(WarmModel("c", 1.5, "x"))
    assert pool.state.stats.prewarm_loads == 1


def test_a_prewarm_with_scores_displaces_the_least_likely_idle_model_only_for_a_gain() -> None:
    pool = Pool(("h1", 300, 3), a=100, b=100, c=100, d=100, e=100)
    for model_id in ("a", "b", "c"):  # a is least recently used, b least likely
        pool.hot(model_id, f"warm-{model_id}")
    scores = {"a": 0.7, "b": 0.2, "c": 0.9}
    declined = pool.send(WarmModel("d", 0.2, "periodic", scores=scores))
    assert kinds(declined) == ["PredictionsRecorded"]
    assert declined[0].victim == "" and "0.200 does not beat the loss 0.200" in declined[0].reason
    events = pool.send(WarmModel("d", 0.8, "periodic", scores=scores))
    assert kinds(events) == ["PredictionsRecorded", "ModelEvicted", "->Cooling",
                             "UnloadRequested", "ModelPlaced"]
    assert events[1].model_id == "b" and events[1].reason == events[0].reason
    assert "gain 0.800 beats the loss 0.200 of evicting b" in events[1].reason
    pool.send(ReportModelUnloaded("h1", "b"))
    pool.send(ReportModelLoaded("h1", "d", 5, 100))
    # A demand miss now evicts by the recorded scores (d's own included): a (0.7) goes
    # before d (0.8) and c (0.9).
    assert pool.state.predicted == scores | {"d": 0.8}
    evicted = [e.model_id for e in pool.send(AllocateModel("r", "e", "x"))
               if isinstance(e, ModelEvicted)]
    assert evicted == ["a"]


# --- host reports must come from the host that holds the model --------------------------------

def test_reports_are_refused_unless_the_host_holds_the_model_in_the_right_state() -> None:
    pool = Pool(("h1", 1000, 4), ("h2", 1000, 4), m=100)
    assert pool.reject(ReportModelLoaded("h9", "m", 1, 1)) == "unknown host 'h9'"
    assert "does not hold model m" in pool.reject(ReportModelLoaded("h1", "m", 1, 100))
    pool.send(AllocateModel("r", "m", "x"))
    other = "h2" if pool.model("m").host == "h1" else "h1"
    assert "does not hold model m" in pool.reject(ReportModelLoaded(other, "m", 1, 100))
    assert "health reports apply" in pool.reject(ReportHealth(pool.model("m").host, "m", True,
                                                              1.0))
    assert pool.reject(ReportHostDown("h9")) == "unknown host 'h9'"
    pool.send(ReportHostDown("h2"))
    assert pool.reject(ReportHostDown("h2")) == "host h2 is already down"


# --- replay, wiring, schemas -----------------------------------------------------------------

def test_folding_the_log_reproduces_the_state() -> None:
    pool = Pool(("h1", 300, 10), a=100, b=100, c=100, d=100)
    for model_id in "abc":
        pool.hot(model_id, f"w-{model_id}")
    pool.send(AllocateModel("r", "d", "x"))
    pool.send(ReportModelUnloaded("h1", "a"))
    state = initial_state("default")
    for event in pool.log:
        state = evolve(state, event, T0)
    # Timestamps differ (lifecycle times), so compare everything else.
    def strip(s: PoolState) -> dict:
        return {m: dataclasses.replace(model, lifecycle=model.lifecycle.state)
                for m, model in s.models.items()}
    assert strip(state) == strip(pool.state)
    assert (state.hosts, state.requests, state.stats) == (
        pool.state.hosts, pool.state.requests, pool.state.stats)


def test_every_message_has_its_schema_and_survives_the_codec() -> None:
    codec = Codec(EmbeddedRegistry())
    assert POOL.command_type("pit.pool.AllocateModel") is AllocateModel
    assert POOL.event_type("pit.pool.ModelTransitioned") is ModelTransitioned
    samples = {str: "x", int: 7, float: 0.5, bool: True, TransitionReason: R.USER_REQUEST,
               ModelState: Hot, list[str]: ["a", "b"], dict[str, float]: {"k": 0.5}}
    envelope = {"event_id": "e", "event_type": "t", "entity_key": "default", "sequence": 1,
                "correlation_id": "c", "causation_id": "c", "occurred_at": T0, "producer": "p"}
    meta = {"command_id": "c", "issued_at": T0, "issued_by": "t", "correlation_id": None}
    for cls in (*COMMANDS, *EVENTS):
        assert cls.avro_name in current_schemas(), cls.avro_name
        hints = typing.get_type_hints(cls)
        values = {f.name: samples.get(hints[f.name], {"k": "v"})
                  for f in dataclasses.fields(cls)}
        message = cls(**values)
        head = {"meta": meta} if cls in COMMANDS else {"envelope": envelope}
        decoded = codec.decode(codec.encode(cls.avro_name, {**head, **to_record(message)}))
        assert from_record(cls, decoded.record) == message
    # A command without pool_id (an older or minimal producer) goes to the default pool.
    assert RegisterModel("m", "u", 1, 1).entity_key == "default"


def test_the_persistent_map_copies_one_shard_and_compares_by_content() -> None:
    empty: PMap[str, int] = PMap()
    one = empty.set("a", 1)
    two = one.set("b", 2)
    assert (len(empty), len(one), len(two)) == (0, 1, 2)
    assert "a" not in empty and one["a"] == 1 and two.get("c") is None
    assert two.delete("b") == one and two.delete("zz") is two
    assert sorted(two.items()) == [("a", 1), ("b", 2)]
    big = empty
    for i in range(1000):
        big = big.set(f"k{i}", i)
    changed = big.set("k5", -1)
    shared = sum(a is b for a, b in zip(big._shards, changed._shards, strict=True))
    assert shared == 63  # only the touched shard was copied
    assert big["k5"] == 5 and changed["k5"] == -1


def test_registration_events() -> None:
    pool = Pool()
    assert pool.send(RegisterHost("h", 10, 1)) == [HostRegistered("h", 10, 1)]
    assert pool.send(RegisterModel("m", "py://m", 5, 3)) == [ModelRegistered("m", "py://m", 5, 3)]


# --- operators' lifecycle commands on the pool -----------------------------------------------

def test_an_operators_transition_is_carried_out_the_way_the_pool_would() -> None:
    pool = Pool(("h1", 1000, 4), a=100, b=100)
    cold_to_hot = pool.reject(TransitionModel("a", Hot, R.USER_REQUEST))
    assert "invalid transition Cold -> Hot" in cold_to_hot
    assert kinds(pool.send(TransitionModel("a", Warming, R.USER_REQUEST))) == [
        "ModelPlaced", "->Warming", "LoadRequested"]  # placed and loaded, not just relabelled
    assert "reports the load" in pool.reject(TransitionModel("a", Hot, R.USER_REQUEST))
    pool.send(ReportModelLoaded("h1", "a", 20, 100))
    assert kinds(pool.send(TransitionModel("a", Cooling, R.SCHEDULED_COOLDOWN))) == [
        "->Cooling", "UnloadRequested"]
    assert "reports the unload" in pool.reject(TransitionModel("a", Cold, R.USER_REQUEST))

    pool.send(TransitionModel("b", Warming, R.USER_REQUEST))
    assert kinds(pool.send(TransitionModel("b", Failed, R.HEALTH_CHECK_FAILURE,
                                           {"error": "bad weights"}))) == [
        "->Failed", "UnloadRequested"]  # the host is told to drop what it was loading
    assert "awaiting its unload" in pool.reject(TransitionModel("b", Cold, R.ERROR_RECOVERY))
    pool.send(ReportModelUnloaded("h1", "b"))
    assert kinds(pool.send(TransitionModel("b", Cold, R.ERROR_RECOVERY))) == ["->Cold"]


def test_failing_an_allocated_model_by_command_ends_its_allocations() -> None:
    pool = Pool(("h1", 1000, 4), a=100)
    pool.hot("a")
    pool.send(AllocateModel("r", "a", "carol"))
    events = pool.send(TransitionModel("a", Failed, R.HEALTH_CHECK_FAILURE, {"error": "oom"}))
    assert events[0] == AllocationFailed("r", "a", "failed", "oom", True)
    assert kinds(events[1:]) == ["->Failed", "UnloadRequested"]


def test_usage_keeps_a_model_warm_in_the_lru() -> None:
    pool = Pool(("h1", 1000, 4), a=100, b=100)
    pool.hot("a", "w1")
    pool.hot("b", "w2")
    assert pool.state.lru("h1") == ["a", "b"]
    assert pool.send(RecordModelUsage("a", 3)) == [ModelUsageRecorded("a", 3)]
    assert pool.state.lru("h1") == ["b", "a"]
    assert pool.model("a").lifecycle.usage_count == 4  # the allocation, then 3 calls
    assert pool.reject(RecordModelUsage("nope", 1)) == "unknown model 'nope'"


def test_the_pool_routes_every_command_by_pool_id() -> None:
    assert POOL.entity_of(TransitionModel("a", Warming, R.USER_REQUEST)) == "default"
    assert POOL.entity_of(AllocateModel("r", "a", "who", pool_id="gpu")) == "gpu"
    assert "sent to pool 'default'" in Pool().reject(RecordModelUsage("a", 1, pool_id="gpu"))


def test_a_live_host_registering_at_a_new_endpoint_keeps_what_it_holds() -> None:
    pool = Pool(("h1", 1000, 4), a=100)
    pool.hot("a")
    before = pool.state.hosts["h1"]
    assert kinds(pool.send(RegisterHost("h1", 1000, 4, endpoint="http://127.0.0.1:9"))) == [
        "HostRegistered"]
    after = pool.state.hosts["h1"]
    assert after.endpoint == "http://127.0.0.1:9"
    assert (after.models, after.usage, after.idle) == (before.models, before.usage, before.idle)
    assert pool.send(AllocateModel("r", "a", "carol"))[0].endpoint == "http://127.0.0.1:9"
