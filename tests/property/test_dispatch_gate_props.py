"""The task dispatcher's gate (streams/dag/dispatch.py): the overall limit on running nodes
across executions, checked over random streams of scheduling, endings and admissions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.dag.dispatch import Gate, Task

EXECUTIONS = ("ex-a", "ex-b", "ex-c")
operations = st.lists(st.one_of(
    st.tuples(st.just("schedule"), st.integers(0, 30), st.sampled_from(EXECUTIONS),
              st.integers(-2, 2), st.integers(0, 3)),
    st.tuples(st.just("end"), st.integers(0, 30)),
    st.tuples(st.just("moved_on"), st.sampled_from(EXECUTIONS)),
    st.tuples(st.just("admit"),),
), max_size=80)


@given(operations, st.integers(1, 6))
def test_the_gate_keeps_the_limit_admits_each_task_once_and_best_first(ops, limit):
    gate = Gate(limit)
    scheduled: dict[str, Task] = {}
    gone: set[str] = set()      # ended, or its execution moved on, before admission
    admitted: list[str] = []
    for op in ops:
        if op[0] == "schedule":
            _, n, execution, priority, rank = op
            task = Task(f"{execution}/n{n}/1", execution, priority, rank)
            if task.task_id not in scheduled:
                scheduled[task.task_id] = task
                gate.scheduled(task)
        elif op[0] == "end":
            task_id = next((t for t in scheduled if t.endswith(f"/n{op[1]}/1")), None)
            if task_id is not None:
                gate.attempt_ended(task_id)
                gone.add(task_id)
        elif op[0] == "moved_on":
            gone.update(t for t, task in scheduled.items() if task.execution_id == op[1])
            gate.execution_moved_on(op[1])
        else:
            batch = gate.admit()
            for task in batch:
                assert task.task_id not in gone, "a task that ended or was cancelled ran"
                assert task.task_id not in admitted, "a task relayed twice"
                admitted.append(task.task_id)
            keys = [-t.priority for t in batch]
            assert keys == sorted(keys), "admitted out of priority order"
            # a higher priority waiting task never loses to an admitted lower one
            if batch and gate.waiting:
                best_left = min(-t.priority for t in gate.waiting.values())
                assert best_left >= keys[-1]
            # within one execution (its share), rank goes first
            for execution in EXECUTIONS:
                mine = [(-t.priority, -t.rank) for t in batch if t.execution_id == execution]
                assert mine == sorted(mine), "an execution's tasks admitted out of rank order"
            assert len(gate.running) <= limit
            assert not gate.waiting or len(gate.running) == limit  # no idle slot left
        assert set(gate.waiting).isdisjoint(gate.running)


@given(st.integers(1, 5), st.integers(0, 12))
def test_every_waiting_task_runs_once_the_running_ones_end(limit, count):
    gate = Gate(limit)
    for n in range(count):
        gate.scheduled(Task(f"ex/n{n}/1", "ex"))
    ran = []
    while batch := gate.admit():
        ran += [task.task_id for task in batch]
        assert len(batch) <= limit
        for task in batch:
            gate.attempt_ended(task.task_id)
    assert sorted(ran) == sorted(f"ex/n{n}/1" for n in range(count))


def test_the_limit_is_shared_between_executions_and_tenants_at_equal_priority():
    gate = Gate(4)
    for n in range(100):  # a big workflow scheduled first, with a better rank
        gate.scheduled(Task(f"big/n{n}/1", "big", rank=10))
    for n in range(3):
        gate.scheduled(Task(f"small/n{n}/1", "small"))
    first = gate.admit()
    assert sorted(t.execution_id for t in first) == ["big", "big", "small", "small"]
    for task in first:
        if task.execution_id == "small":
            gate.attempt_ended(task.task_id)
    assert [t.task_id for t in gate.admit()] in (["small/n2/1", "big/n2/1"],
                                                 ["big/n2/1", "small/n2/1"])
    # a tenant's executions share one part of the limit; higher priority still goes first
    tenants = Gate(3)
    for execution in ("t1-a", "t1-b"):
        for n in range(5):
            tenants.scheduled(Task(f"{execution}/n{n}/1", execution, tenant="t1"))
    tenants.scheduled(Task("t2-a/n0/1", "t2-a", tenant="t2"))
    tenants.scheduled(Task("t2-a/n1/1", "t2-a", tenant="t2"))
    tenants.scheduled(Task("urgent/n0/1", "urgent", priority=5, tenant="t1"))
    # urgent first; then t2 (running none), then t1 and t2 level, t1's scheduled first
    assert [t.task_id for t in tenants.admit()] == ["urgent/n0/1", "t2-a/n0/1", "t1-a/n0/1"]


def test_no_limit_admits_everything_and_a_relayed_task_counts_as_running():
    gate = Gate(0)
    for n in range(100):
        gate.scheduled(Task(f"ex/n{n}/1", "ex"))
    assert len(gate.admit()) == 100
    rebuilt = Gate(1)
    rebuilt.scheduled(Task("ex/n0/1", "ex"), relayed=True)
    rebuilt.scheduled(Task("ex/n1/1", "ex"))
    assert rebuilt.admit() == [] and list(rebuilt.waiting) == ["ex/n1/1"]


@given(st.integers(1, 40), st.lists(st.floats(0.1, 10), min_size=1, max_size=5),
       st.floats(0.1, 10))
def test_backlogged_tenants_share_the_limit_by_their_weights(limit, weights, default):
    """Sainte-Lague's divisor, checked pairwise: no tenant holds a slot that another,
    by its weight, had the better claim to ((r_i - 1/2) / w_i <= (r_j + 1/2) / w_j)."""
    tenants = {f"t{n}": w for n, w in enumerate(weights)}
    gate = Gate(limit, weights=tenants, default_weight=default)
    shares = [*tenants, "unlisted"]
    for tenant in shares:
        for n in range(limit):  # each could take the whole limit alone
            gate.scheduled(Task(f"{tenant}/n{n}/1", f"ex-{tenant}", tenant=tenant))
    admitted = gate.admit()
    assert len(admitted) == limit
    running = {t: sum(task.tenant == t for task in admitted) for t in shares}
    weight = {**tenants, "unlisted": default}
    for i in shares:
        for j in shares:
            if running[i]:
                assert (running[i] - 0.5) / weight[i] <= (running[j] + 0.5) / weight[j] + 1e-9


def test_tenants_of_weights_1_and_3_run_1_to_3():
    gate = Gate(8, weights={"light": 1.0, "heavy": 3.0})
    for tenant in ("light", "heavy"):
        for n in range(20):
            gate.scheduled(Task(f"{tenant}/n{n}/1", f"ex-{tenant}", tenant=tenant))
    first = gate.admit()
    assert sorted(t.tenant for t in first) == ["heavy"] * 6 + ["light"] * 2
    light = next(t for t in first if t.tenant == "light")
    gate.attempt_ended(light.task_id)  # the light tenant's slot comes back to it
    assert [t.tenant for t in gate.admit()] == ["light"]
