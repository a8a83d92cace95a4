"""The Arbitration Engine's views (issue 12), from pit.arbitration.events alone, and the
readers of them (`pit arbitration ...`, the API and the client query these).

`arbitration` (tables `arbitration_requests`, `arbitration_decisions`,
`arbitration_policies`):
* arbitration_requests: one row per request and pool - its state (waiting, deferred,
  granted, denied, cancelled, timed_out, released), position and wait estimate while it
  waits, the model granted, the last decision's strategy, reason, rationale and
  counterfactual, and its times;
* arbitration_decisions: every decision, immutable, keyed by the pool's event sequence: the
  audit of arbitration, queried by request, tenant, outcome and time;
* arbitration_policies: the policy in force per pool.

Fairness windows are read from the decisions (grants per tenant over the policy's window),
so they need no table of their own. Every event applies idempotently (decisions are keyed
by sequence; a request row is overwritten with what the event says).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    func,
    inspect,
    select,
)

from projections.runtime import View, constraint_name, index_name, live_tables
from schemas.codec import Decoded
from streams.arbitration import fairness
from streams.arbitration.policy import DEFAULT_POLICY, Priority, policy_from, policy_json
from streams.arbitration.topics import ARBITRATION_EVENTS
from streams.log import LogRecord
from streams.pool.lifecycle import DEFAULT_POOL
from streams.sql import Long

_ID = String(255)
_ENDED = {"pit.arbitration.RequestCancelled": "cancelled",
          "pit.arbitration.RequestTimedOut": "timed_out",
          "pit.arbitration.GrantReleased": "released"}
_STATE_OF = {"granted": "granted", "queued": "waiting", "deferred": "deferred",
             "denied": "denied"}


class ArbitrationView(View):
    name = "arbitration"
    topics = (ARBITRATION_EVENTS,)
    table_names = ("arbitration_requests", "arbitration_decisions", "arbitration_policies")

    def define(self, metadata: MetaData, suffix: str = "", token: str = "") -> dict[str, Table]:
        requests = Table(
            "arbitration_requests" + suffix, metadata,
            Column("pool_id", _ID, nullable=False),
            Column("request_id", _ID, nullable=False),
            Column("model_id", _ID, nullable=False),
            Column("tenant", _ID, nullable=False),
            Column("priority", Integer, nullable=False),
            Column("score", Float, nullable=False),
            Column("state", String(16), nullable=False),
            Column("granted_model", _ID, nullable=False),
            Column("position", Integer, nullable=False),
            Column("wait_estimate_ms", Long, nullable=False),
            Column("strategy", String(32), nullable=False),
            Column("reason", String(32), nullable=False),
            Column("rationale", Text, nullable=False),
            Column("counterfactual", Text, nullable=False),
            Column("requester", _ID, nullable=False),
            Column("workflow_id", _ID, nullable=False),
            Column("submitted_at_ms", Long, nullable=False),
            Column("decided_at_ms", Long, nullable=False),
            Column("ended_at_ms", Long, nullable=False),   # 0 while live
            Column("waited_ms", Long, nullable=False),
            Column("held_ms", Long, nullable=False),
            Column("cost", Float, nullable=False),
            PrimaryKeyConstraint("pool_id", "request_id",
                                 name=constraint_name("pk", "arbitration_requests", token)),
            Index(index_name("arbitration_requests", "state", token), "pool_id", "state"),
        )
        decisions = Table(
            "arbitration_decisions" + suffix, metadata,
            Column("pool_id", _ID, nullable=False),
            Column("sequence", Long, nullable=False),
            Column("request_id", _ID, nullable=False),
            Column("tenant", _ID, nullable=False),
            Column("outcome", String(16), nullable=False),
            Column("model_id", _ID, nullable=False),
            Column("granted_model", _ID, nullable=False),
            Column("strategy", String(32), nullable=False),
            Column("conflict_kinds", Text, nullable=False),   # JSON list
            Column("conflicts", Text, nullable=False),        # JSON list, described
            Column("reason", String(32), nullable=False),
            Column("rationale", Text, nullable=False),
            Column("counterfactual", Text, nullable=False),
            Column("priority", Integer, nullable=False),
            Column("effective_priority", Float, nullable=False),
            Column("score", Float, nullable=False),
            Column("score_breakdown", Text, nullable=False),  # JSON object
            Column("correction", Float, nullable=False),
            Column("position", Integer, nullable=False),
            Column("wait_estimate_ms", Long, nullable=False),
            Column("delay_ms", Long, nullable=False),
            Column("waited_ms", Long, nullable=False),
            Column("decided_at_ms", Long, nullable=False),
            PrimaryKeyConstraint("pool_id", "sequence",
                                 name=constraint_name("pk", "arbitration_decisions", token)),
            Index(index_name("arbitration_decisions", "request", token), "request_id"),
            Index(index_name("arbitration_decisions", "tenant", token), "tenant",
                  "decided_at_ms"),
            Index(index_name("arbitration_decisions", "time", token), "pool_id",
                  "decided_at_ms"),
        )
        policies = Table(
            "arbitration_policies" + suffix, metadata,
            Column("pool_id", _ID, nullable=False),
            Column("policy_json", Text, nullable=False),
            Column("set_at_ms", Long, nullable=False),
            PrimaryKeyConstraint("pool_id",
                                 name=constraint_name("pk", "arbitration_policies", token)),
        )
        return {"arbitration_requests": requests, "arbitration_decisions": decisions,
                "arbitration_policies": policies}

    def apply(self, conn: Connection, tables: dict[str, Table], decoded: Decoded,
              record: LogRecord) -> None:
        event, name = decoded.record, decoded.name
        envelope = event["envelope"]
        pool_id, at = envelope["entity_key"], envelope["occurred_at"]
        requests = tables["arbitration_requests"]
        if name == "pit.arbitration.RequestSubmitted":
            row = {"model_id": event["model_id"], "tenant": event["tenant"],
                   "priority": event["priority"], "score": event["score"], "state": "submitted",
                   "granted_model": "", "position": -1, "wait_estimate_ms": -1, "strategy": "",
                   "reason": "", "rationale": "", "counterfactual": "",
                   "requester": event["requester"], "workflow_id": event["workflow_id"],
                   "submitted_at_ms": at, "decided_at_ms": 0, "ended_at_ms": 0,
                   "waited_ms": 0, "held_ms": 0, "cost": 0.0}
            _upsert(conn, requests, pool_id, event["request_id"], row)
        elif name == "pit.arbitration.RequestDecided":
            decisions = tables["arbitration_decisions"]
            if conn.execute(select(decisions.c.sequence).where(
                    decisions.c.pool_id == pool_id,
                    decisions.c.sequence == envelope["sequence"])).first() is None:
                conn.execute(decisions.insert().values(
                    pool_id=pool_id, sequence=envelope["sequence"],
                    request_id=event["request_id"], tenant=event["tenant"],
                    outcome=event["outcome"], model_id=event["model_id"],
                    granted_model=event["granted_model"], strategy=event["strategy"],
                    conflict_kinds=json.dumps(event["conflict_kinds"]),
                    conflicts=json.dumps(event["conflicts"]), reason=event["reason"],
                    rationale=event["rationale"], counterfactual=event["counterfactual"],
                    priority=event["priority"], effective_priority=event["effective_priority"],
                    score=event["score"],
                    score_breakdown=json.dumps(event["score_breakdown"], sort_keys=True),
                    correction=event["correction"], position=event["position"],
                    wait_estimate_ms=event["wait_estimate_ms"], delay_ms=event["delay_ms"],
                    waited_ms=event["waited_ms"], decided_at_ms=at))
            state = _STATE_OF[event["outcome"]]
            conn.execute(requests.update().where(
                requests.c.pool_id == pool_id, requests.c.request_id == event["request_id"])
                .values(state=state, granted_model=event["granted_model"],
                        position=event["position"], wait_estimate_ms=event["wait_estimate_ms"],
                        strategy=event["strategy"], reason=event["reason"],
                        rationale=event["rationale"], counterfactual=event["counterfactual"],
                        decided_at_ms=at, waited_ms=event["waited_ms"],
                        ended_at_ms=at if state == "denied" else 0))
        elif name in _ENDED:
            values: dict[str, Any] = {"state": _ENDED[name], "ended_at_ms": at, "position": -1}
            if name == "pit.arbitration.GrantReleased":
                values.update(held_ms=event["held_ms"], cost=event["cost"])
            else:
                values["waited_ms"] = event["waited_ms"]
            conn.execute(requests.update().where(
                requests.c.pool_id == pool_id, requests.c.request_id == event["request_id"])
                .values(**values))
        elif name == "pit.arbitration.ArbitrationPolicySet":
            policies = tables["arbitration_policies"]
            conn.execute(policies.delete().where(policies.c.pool_id == pool_id))
            conn.execute(policies.insert().values(pool_id=pool_id,
                                                  policy_json=event["policy_json"],
                                                  set_at_ms=at))


def _upsert(conn: Connection, table: Table, pool_id: str, request_id: str,
            row: dict[str, Any]) -> None:
    where = (table.c.pool_id == pool_id, table.c.request_id == request_id)
    if conn.execute(select(table.c.request_id).where(*where)).first() is None:
        conn.execute(table.insert().values(pool_id=pool_id, request_id=request_id, **row))
    else:
        conn.execute(table.update().where(*where).values(**row))


# --- readers --------------------------------------------------------------------------------

def _tables() -> dict[str, Table]:
    return live_tables(ArbitrationView())


def projected(engine: Engine) -> bool:
    return inspect(engine).has_table("arbitration_requests")


def _decision_row(row: Any) -> dict[str, Any]:
    found = dict(row)
    for name in ("conflict_kinds", "conflicts", "score_breakdown"):
        found[name] = json.loads(found[name])
    return found


def policy_of(engine: Engine, pool_id: str = DEFAULT_POOL) -> tuple[str, int]:
    """(the canonical JSON of the policy in force, when it was set; 0: the default)."""
    if not projected(engine):
        return policy_json(DEFAULT_POLICY), 0
    table = _tables()["arbitration_policies"]
    with engine.connect() as conn:
        row = conn.execute(select(table).where(table.c.pool_id == pool_id)).mappings().first()
    return (row["policy_json"], row["set_at_ms"]) if row else (policy_json(DEFAULT_POLICY), 0)


def request(engine: Engine, request_id: str, pool_id: str = DEFAULT_POOL
            ) -> dict[str, Any] | None:
    """A request's row and every decision on it (oldest first); None if unknown."""
    if not projected(engine):
        return None
    tables = _tables()
    requests, decisions = tables["arbitration_requests"], tables["arbitration_decisions"]
    with engine.connect() as conn:
        row = conn.execute(select(requests).where(
            requests.c.pool_id == pool_id, requests.c.request_id == request_id)
        ).mappings().first()
        if row is None:
            return None
        found = dict(row)
        found["decisions"] = [_decision_row(d) for d in conn.execute(
            select(decisions).where(decisions.c.pool_id == pool_id,
                                    decisions.c.request_id == request_id)
            .order_by(decisions.c.sequence)).mappings()]
    return found


def decisions(engine: Engine, pool_id: str = DEFAULT_POOL, *, request_id: str | None = None,
              tenant: str | None = None, outcome: str | None = None,
              since_ms: int | None = None, until_ms: int | None = None,
              limit: int = 100) -> list[dict[str, Any]]:
    """The audit of decisions, newest first, filtered by request, tenant, outcome and time."""
    if not projected(engine):
        return []
    table = _tables()["arbitration_decisions"]
    stmt = select(table).where(table.c.pool_id == pool_id)
    for column, value in (("request_id", request_id), ("tenant", tenant),
                          ("outcome", outcome)):
        if value:
            stmt = stmt.where(table.c[column] == value)
    if since_ms is not None:
        stmt = stmt.where(table.c.decided_at_ms >= since_ms)
    if until_ms is not None:
        stmt = stmt.where(table.c.decided_at_ms <= until_ms)
    stmt = stmt.order_by(table.c.sequence.desc()).limit(limit)
    with engine.connect() as conn:
        return [_decision_row(row) for row in conn.execute(stmt).mappings()]


def _level(priority: int) -> str:
    """The seed level a priority belongs to (the highest at or below it)."""
    for level in sorted(Priority, reverse=True):
        if priority >= level:
            return level.name
    return Priority.BACKGROUND.name


def status(engine: Engine, pool_id: str = DEFAULT_POOL, now_ms: int = 0
           ) -> dict[str, Any] | None:
    """Queues by priority, each tenant's share against its entitlement over the fairness
    window, the Gini, and counts by state; None before any arbitration event."""
    if not projected(engine):
        return None
    tables = _tables()
    requests, table = tables["arbitration_requests"], tables["arbitration_decisions"]
    policy_text, set_at = policy_of(engine, pool_id)
    policy = policy_from(json.loads(policy_text))
    window_ms = int(policy.fairness_window_s * 1000)
    with engine.connect() as conn:
        by_state: dict[str, int] = dict(conn.execute(select(requests.c.state, func.count()).where(
            requests.c.pool_id == pool_id).group_by(requests.c.state)).all())
        if not by_state:
            return None
        waiting = [dict(row) for row in conn.execute(
            select(requests.c.request_id, requests.c.model_id, requests.c.tenant,
                   requests.c.priority, requests.c.position, requests.c.wait_estimate_ms,
                   requests.c.submitted_at_ms)
            .where(requests.c.pool_id == pool_id, requests.c.state == "waiting")
            .order_by(requests.c.priority.desc(), requests.c.position)).mappings()]
        granted: dict[str, int] = dict(conn.execute(
            select(table.c.tenant, func.count()).where(
                table.c.pool_id == pool_id, table.c.outcome == "granted",
                table.c.decided_at_ms > now_ms - window_ms).group_by(table.c.tenant)).all())
        outcomes: dict[str, int] = dict(conn.execute(select(table.c.outcome, func.count()).where(
            table.c.pool_id == pool_id).group_by(table.c.outcome)).all())
    tenants = set(policy.tenants) | set(granted) | {w["tenant"] for w in waiting}
    weights = {t: policy.weight(t) for t in sorted(tenants)}
    queues: dict[str, list[dict[str, Any]]] = {}
    for row in waiting:
        queues.setdefault(_level(row["priority"]), []).append(row)
    waiting_by_tenant = Counter(w["tenant"] for w in waiting)
    shares = [{"tenant": t, "weight": weights[t], "granted": granted.get(t, 0),
               "share": share, "entitled": entitled, "waiting": waiting_by_tenant[t]}
              for t, (share, entitled) in fairness.shares(granted, weights).items()]
    return {"pool_id": pool_id, "policy_set_at_ms": set_at,
            "requests": {state: by_state.get(state, 0) for state in (
                "waiting", "deferred", "granted", "released", "denied", "cancelled",
                "timed_out")},
            "decisions": outcomes,
            "queues": {level: queues[level] for level in sorted(
                queues, key=lambda name: -Priority[name].value)},
            "window_s": policy.fairness_window_s,
            "tenants": shares,
            "gini": fairness.normalised_gini(granted, weights),
            "deviation": fairness.deviation(granted, weights)}


def status_lines(found: dict[str, Any]) -> list[str]:
    counts = ", ".join(f"{n} {state}" for state, n in found["requests"].items() if n)
    lines = [f"arbitration of pool {found['pool_id']}: {counts or 'no requests'}"]
    for level, rows in found["queues"].items():
        lines.append(f"  queue {level}: {len(rows)} waiting")
        for row in rows[:5]:
            lines.append(f"    {row['request_id']} ({row['tenant']}, model {row['model_id']},"
                         f" priority {row['priority']}): position {row['position'] + 1},"
                         f" ~{row['wait_estimate_ms'] / 1000:.1f} s")
        if len(rows) > 5:
            lines.append(f"    ... and {len(rows) - 5} more")
    lines.append(f"  shares over the last {found['window_s']:g} s (granted / entitled):")
    for t in found["tenants"]:
        lines.append(f"    {t['tenant']}: {t['share']:.1%} of grants / {t['entitled']:.1%}"
                     f" entitled (weight {t['weight']:g}; {t['granted']} granted,"
                     f" {t['waiting']} waiting)")
    lines.append(f"  Gini {found['gini']:.3f}, fairness deviation {found['deviation']:.1%}")
    return lines

