"""Properties of the pool decider under random command sequences.

A few hosts and models, random allocations, releases, prewarms, cooldowns, host reports
(loads, load failures, unloads, health), host deaths and re-registrations, and operators'
lifecycle commands (TransitionModel to any state, RecordModelUsage). Every emitted
event is applied with `evolve`, and checked against an oracle that follows the events only
(never the decider's own bookkeeping):
* no host is ever told to load more than its budget/capacity can hold (what it holds:
  loads requested and not yet unloaded, failed or lost with the host);
* a model with allocations is never evicted, cooled for pressure or unloaded;
* every lifecycle change is in lifecycle.TRANSITIONS, from the state the model was in;
* decide is deterministic; a rejection carries a reason;
* folding evolve over all events (through the Avro codec) reproduces the state;
* the per-host usage, eviction candidates and load queue that evolve maintains incrementally
  equal what a recount from scratch gives, after every event;
* no allocation is lost: once hosts finish their work, every accepted AllocateModel got
  exactly one ModelAllocated or AllocationFailed(in_flight=false), and a granted one ends
  at most once (ModelReleased or AllocationFailed(in_flight=true)).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.decider import Message, Rejection, from_record, to_record
from streams.pool.lifecycle import (
    TRANSITIONS,
    ModelState,
    ModelTransitioned,
    RecordModelUsage,
    TransitionModel,
    TransitionReason,
)
from streams.pool.pool import (
    POOL,
    AllocateModel,
    AllocationFailed,
    AllocationQueued,
    CoolModel,
    HostDown,
    HostRegistered,
    LoadRequested,
    ModelAllocated,
    ModelEvicted,
    ModelLoaded,
    ModelLoadFailed,
    ModelReleased,
    ModelUnloaded,
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
    Usage,
    WarmModel,
    decide,
    evolve,
    initial_state,
)

T0 = 1_700_000_000_000
HOSTS = ["h1", "h2", "h3"]
MODELS = ["m1", "m2", "m3", "m4", "m5", "m6"]
CODEC = Codec(EmbeddedRegistry())
ENVELOPE = {"event_id": "e", "event_type": "t", "entity_key": "default", "sequence": 1,
            "correlation_id": "c", "causation_id": "c", "occurred_at": T0, "producer": "p"}


@dataclass
class Oracle:
    """What the events say, tracked independently of the decider's state."""

    budgets: dict[str, tuple[int, int]] = field(default_factory=dict)  # host -> (MB, capacity)
    held: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    lifecycle: dict[str, ModelState] = field(default_factory=dict)
    allocations: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    answers: Counter = field(default_factory=Counter)   # request -> grant-or-refusal count
    endings: Counter = field(default_factory=Counter)   # request -> end count
    granted: set[str] = field(default_factory=set)
    accepted: set[str] = field(default_factory=set)     # accepted AllocateModel request ids
    reservation: dict[str, int] = field(default_factory=dict)  # model -> MB asked to load
    liar: bool = False  # a host reported more memory than reserved

    def apply(self, event: Message) -> None:
        match event:
            case HostRegistered(host_id=h, memory_budget_mb=mb, capacity=cap):
                self.budgets[h] = (mb, cap)
                self.held[h] = {}
            case LoadRequested(model_id=m, host_id=h, memory_mb=mb):
                self.held[h][m] = mb
                self.reservation[m] = mb
            case ModelLoaded(model_id=m, host_id=h, memory_mb=mb):
                self.held[h][m] = mb
            case ModelUnloaded(model_id=m, host_id=h) | ModelLoadFailed(model_id=m, host_id=h):
                assert not self.allocations[m], f"{m} left {h} with allocations"
                self.held[h].pop(m)
            case HostDown(host_id=h, models=models):
                assert set(self.held[h]) <= set(models)
                self.held[h] = {}
            case ModelEvicted(model_id=m) | UnloadRequested(model_id=m):
                assert not self.allocations[m], f"{type(event).__name__} of allocated {m}"
            case ModelTransitioned(model_id=m, from_state=source, to_state=target):
                assert self.lifecycle.get(m, ModelState.COLD) == source
                assert target in TRANSITIONS[source]
                self.lifecycle[m] = target
            case ModelAllocated(request_id=r, model_id=m):
                assert r in self.accepted and r not in self.granted
                self.answers[r] += 1
                self.granted.add(r)
                self.allocations[m].add(r)
            case AllocationFailed(request_id=r, model_id=m, in_flight=in_flight):
                if in_flight:
                    assert r in self.granted
                    self.endings[r] += 1
                    self.allocations[m].remove(r)
                else:
                    assert r not in self.granted
                    self.answers[r] += 1
            case ModelReleased(request_id=r, model_id=m):
                self.endings[r] += 1
                self.allocations[m].remove(r)

    def check_hosts(self) -> None:
        if self.liar:
            return  # a host that lies about memory can overfill itself; see unit tests
        for host_id, models in self.held.items():
            budget, capacity = self.budgets[host_id]
            assert sum(models.values()) <= budget, f"{host_id} over budget: {models}"
            assert len(models) <= capacity, f"{host_id} over capacity: {models}"


def recount(state: PoolState, host_id: str) -> tuple[Usage, list, list]:
    """A host's usage, eviction candidates and load queue, from scratch (what `evolve`
    maintains incrementally): the definitions in the pool module's docstring."""
    resident_mb = resident_count = committed_mb = committed_count = 0
    idle, waiting = [], []
    for model_id in state.hosts[host_id].models:
        model = state.models[model_id]
        assert model.host == host_id
        if model.state is not ModelState.COLD:  # loading, loaded or still unloading
            resident_mb += model.need_mb
            resident_count += 1
        if model.state in (ModelState.COLD, ModelState.WARMING, ModelState.HOT):  # promised
            committed_mb += model.need_mb
            committed_count += 1
        if model.state is ModelState.HOT and not model.allocations:
            idle.append((model.last_used, model_id))
        if model.state is ModelState.COLD:
            waiting.append((model.placed_at, model_id))
    usage = Usage(resident_mb, resident_count, committed_mb, committed_count)
    return usage, sorted(idle), sorted(waiting)


def check_maintained(state: PoolState) -> None:
    for host_id, host in state.hosts.items():
        assert (host.usage, list(host.idle), list(host.waiting)) == recount(state, host_id)
    placed = {m for host in state.hosts.values() for m in host.models}
    assert placed == {m for m, model in state.models.items() if model.host is not None}


@dataclass
class Run:
    state: PoolState = field(default_factory=lambda: initial_state("default"))
    log: list[tuple[Message, int]] = field(default_factory=list)
    oracle: Oracle = field(default_factory=Oracle)
    now: int = T0
    next_request: int = 0

    def send(self, command: Message) -> list[Message] | str:
        try:
            events = decide(self.state, command, self.now)
        except Rejection as rejection:
            assert rejection.reason
            try:
                decide(self.state, command, self.now)
            except Rejection as again:
                assert again.reason == rejection.reason
            else:
                raise AssertionError("decide is not deterministic") from None
            return rejection.reason
        assert decide(self.state, command, self.now) == events  # deterministic
        if isinstance(command, ReportModelLoaded):
            self.oracle.liar |= command.memory_mb > self.oracle.reservation[command.model_id]
        if isinstance(command, AllocateModel):
            self.oracle.accepted.add(command.request_id)
            answered = [e for e in events if getattr(e, "request_id", None) == command.request_id]
            assert len(answered) == 1 and isinstance(answered[0], (ModelAllocated,
                                                                   AllocationQueued))
        handed = events.state  # what a processor starts from: the decision's own copy
        for event in events[events.applied:]:
            handed = evolve(handed, event, self.now)
        for event in events:
            assert type(event) in POOL.events, f"{event.type_name} is not a declared pool event"
            self.oracle.apply(event)
            self.state = evolve(self.state, event, self.now)
            self.log.append((event, self.now))
            check_maintained(self.state)
        assert handed == self.state
        self.oracle.check_hosts()
        for model_id, model in self.state.models.items():
            assert model.state == self.oracle.lifecycle.get(model_id, ModelState.COLD)
            assert model.allocations == self.oracle.allocations[model_id]
        for host_id in self.state.hosts:
            usage, host = self.state.usage(host_id), self.state.hosts[host_id]
            assert usage.committed_mb <= host.memory_budget_mb
            assert usage.committed_count <= host.capacity
        return events


def draw_command(data: st.DataObject, run: Run) -> Message:
    state = run.state
    models = sorted(state.models.items())
    on_host = [(m, model) for m, model in models if model.host is not None]
    pick = data.draw(st.integers(0, 15))
    if pick == 14:  # an operator's lifecycle command, any target
        return TransitionModel(data.draw(st.sampled_from(MODELS)),
                               data.draw(st.sampled_from(list(ModelState))),
                               data.draw(st.sampled_from(list(TransitionReason))))
    if pick == 15:
        return RecordModelUsage(data.draw(st.sampled_from(MODELS)), data.draw(st.integers(0, 3)))
    if pick <= 3:
        active = sorted(state.requests)
        if active and data.draw(st.integers(0, 9)) == 0:
            request_id = data.draw(st.sampled_from(active))  # already active: rejected
        else:
            run.next_request += 1
            request_id = f"r{run.next_request}"
        return AllocateModel(request_id, data.draw(st.sampled_from(MODELS)), "who")
    if pick <= 5:
        active = sorted(state.requests)
        if active and data.draw(st.integers(0, 7)):
            return ReleaseModel(data.draw(st.sampled_from(active)))
        return ReleaseModel("never-seen")
    if pick == 6:  # with the predictor's scores half the time: then it may displace
        scores = data.draw(st.dictionaries(st.sampled_from(MODELS),
                                           st.sampled_from([0.0, 0.2, 0.5, 0.95]), max_size=4)
                           if data.draw(st.booleans()) else st.just({}))
        return WarmModel(data.draw(st.sampled_from(MODELS)),
                         data.draw(st.sampled_from([0.0, 0.4, 0.9, 1.0, 1.5])), "test",
                         scores=scores)
    if pick == 7:
        return CoolModel(data.draw(st.sampled_from(MODELS)),
                         data.draw(st.sampled_from(list(TransitionReason))))
    if pick == 8 and data.draw(st.integers(0, 5)) == 0:
        return ReportHostDown(data.draw(st.sampled_from(HOSTS)))
    if pick == 8:
        host_id = data.draw(st.sampled_from(HOSTS))  # comes back (or a conflicting register)
        budget, capacity = run.oracle.budgets[host_id]
        if data.draw(st.integers(0, 4)) == 0:
            budget += 1
        return RegisterHost(host_id, budget, capacity)
    # Host reports: mostly about models the host really holds.
    if on_host and data.draw(st.integers(0, 9)):
        model_id, model = data.draw(st.sampled_from(on_host))
        host_id = model.host
    else:
        model_id = data.draw(st.sampled_from(MODELS))
        host_id = data.draw(st.sampled_from(HOSTS))
    if pick <= 10:
        reserved = run.oracle.reservation.get(model_id, 100)
        memory = data.draw(st.integers(1, reserved))
        if data.draw(st.integers(0, 7)) == 0:
            memory = reserved + data.draw(st.integers(1, 500))  # the host measured more
        return ReportModelLoaded(host_id, model_id, data.draw(st.integers(0, 5_000)), memory)
    if pick == 11:
        return ReportModelLoadFailed(host_id, model_id, "boom")
    if pick == 12:
        return ReportModelUnloaded(host_id, model_id)
    return ReportHealth(host_id, model_id, data.draw(st.booleans()), 12.5, "probe")


def settle(run: Run) -> None:
    """Hosts finish their work: loads complete, unloads happen, draining allocations end."""
    for _ in range(60):
        changed = False
        for model_id, model in sorted(run.state.models.items()):
            if model.host is None:
                continue
            command: Message | None = None
            if model.state is ModelState.WARMING:
                command = ReportModelLoaded(model.host, model_id, 10,
                                            run.oracle.reservation[model_id])
            elif model.state is ModelState.FAILED or (
                    model.state is ModelState.COOLING and not model.allocations):
                command = ReportModelUnloaded(model.host, model_id)
            elif model.state is ModelState.COOLING:
                command = ReleaseModel(min(model.allocations))
            if command is not None:
                assert isinstance(run.send(command), list), command
                changed = True
        if not changed:
            return
    raise AssertionError("the pool did not settle")


def fold_through_codec(log: list[tuple[Message, int]]) -> PoolState:
    state = initial_state("default")
    for event, at_ms in log:
        record = CODEC.decode(CODEC.encode(event.avro_name, {"envelope": ENVELOPE,
                                                             **to_record(event)})).record
        decoded = from_record(POOL.event_type(event.avro_name), record)
        assert decoded == event
        state = evolve(state, decoded, at_ms)
    return state


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_sequences_keep_the_pool_invariants(data: st.DataObject) -> None:
    run = Run()
    for host_id in HOSTS:
        budget = data.draw(st.sampled_from([400, 800, 1200]))
        assert run.send(RegisterHost(host_id, budget, data.draw(st.integers(1, 3))))
    for model_id in MODELS:
        memory = data.draw(st.sampled_from([100, 200, 300, 400, 600, 1500]))
        assert run.send(RegisterModel(model_id, f"py://{model_id}", memory, 100))

    for _ in range(data.draw(st.integers(1, 80))):
        run.now += data.draw(st.integers(0, 5_000))
        command = draw_command(data, run)
        before = run.state
        outcome = run.send(command)
        if isinstance(outcome, str):
            assert run.state is before  # a rejection changes nothing

    settle(run)  # hosts now report what was reserved, and unload what overfilled them
    run.oracle.liar = False
    run.oracle.check_hosts()

    # No allocation is lost: each accepted request was answered exactly once.
    assert not [r for r in run.state.requests.values() if not r.allocated]
    assert {r: n for r, n in run.oracle.answers.items() if n != 1} == {}
    assert set(run.oracle.answers) == run.oracle.accepted
    assert all(n <= 1 for n in run.oracle.endings.values())
    assert set(run.oracle.endings) <= run.oracle.granted
    still_held = {r for r in run.oracle.granted if r not in run.oracle.endings}
    assert still_held == set(run.state.requests)

    # Replaying every event, through the codec, from scratch reproduces the state.
    assert fold_through_codec(run.log) == run.state
    stats = run.state.stats
    hits = sum(1 for e, _ in run.log if isinstance(e, ModelAllocated) and e.cache_hit)
    queued = sum(1 for e, _ in run.log if isinstance(e, AllocationQueued))
    assert (stats.hits, stats.misses) == (hits, queued)
    assert stats.evictions == sum(1 for e, _ in run.log if isinstance(e, ModelEvicted))
