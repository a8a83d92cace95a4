"""`pit arbitration ...`: the Arbitration Engine's command line - `status`, `log`,
`explain`, `policy set|show`, `simulate` (over the archive), and `submit`, `release`,
`cancel`, `describe` to drive it by hand. Reads come from the views
(projections/arbitration.py); `--json` on each. Errors are `PitError`s: streams/cli.py
prints them as one line."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streams.errors import PitError
from streams.times import parse_time_ms, when

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from streams.config import Settings

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def since_ms(text: str, now_ms: int) -> int:
    """`--since`: a duration ago (30s, 10m, 2h, 1d), epoch ms, or an ISO time (UTC unless
    it says otherwise)."""
    ago = _AGO.match(text)
    if ago:
        return now_ms - int(float(ago[1]) * _UNIT_S[ago[2]] * 1000)
    return parse_time_ms(text, "--since (a duration like 10m or 2h, epoch ms, an ISO time)")


def _decision_line(d: dict[str, Any]) -> str:
    what = d["outcome"] + (f" ({d['reason']})" if d["reason"] else "")
    model = d["granted_model"] if d["granted_model"] not in ("", d["model_id"]) else ""
    return (f"{when(d['decided_at_ms'])}  {d['request_id']}  {d['tenant']}  {d['model_id']}"
            f"{f' -> {model}' if model else ''}  {what}  [{d['strategy'] or '-'}]"
            f"  {d['rationale']}")


def explain_lines(found: dict[str, Any]) -> list[str]:
    """A request's story: what it asked, each decision with its rationale, the
    counterfactual of the last one."""
    lines = [f"request {found['request_id']}: {found['state']} - tenant {found['tenant']},"
             f" model {found['model_id']}, priority {found['priority']},"
             f" score {found['score']:.2f}"]
    for d in found["decisions"]:
        lines.append(f"  {when(d['decided_at_ms'])} {d['outcome']}"
                     + (f" ({d['reason']})" if d["reason"] else "")
                     + (f" by {d['strategy']}" if d["strategy"] else "")
                     + f": {d['rationale']}")
        if d["conflicts"]:
            lines.append(f"    conflicts: {'; '.join(d['conflicts'])}")
        breakdown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(d["score_breakdown"].items()))
        lines.append(f"    effective priority {d['effective_priority']:g}, fairness correction"
                     f" {d['correction']:.2f}, score {d['score']:.2f} ({breakdown})")
    last = found["decisions"][-1] if found["decisions"] else None
    if last and last["counterfactual"]:
        lines.append(f"  would have changed it: {last['counterfactual']}")
    if found["state"] == "released":
        lines.append(f"  held {found['held_ms'] / 1000:.1f} s, cost {found['cost']:g}")
    return lines


def _engine(settings: Settings) -> Engine:
    from streams.sql import connect_existing

    return connect_existing(settings.db_url)


def _print(args: argparse.Namespace, data: Any, lines: list[str]) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else "\n".join(lines))


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from projections.arbitration import status, status_lines

    found = status(_engine(settings), args.pool, int(time.time() * 1000))
    if found is None:
        print(f"arbitration of pool {args.pool}: no requests yet")
        return 0
    _print(args, found, status_lines(found))
    return 0


def cmd_log(args: argparse.Namespace, settings: Settings) -> int:
    from projections.arbitration import decisions

    now = int(time.time() * 1000)
    rows = decisions(_engine(settings), args.pool, request_id=args.request, tenant=args.tenant,
                     outcome=args.outcome,
                     since_ms=since_ms(args.since, now) if args.since else None,
                     limit=args.limit)
    _print(args, rows, [_decision_line(r) for r in reversed(rows)] or ["no decisions"])
    return 0


def cmd_explain(args: argparse.Namespace, settings: Settings) -> int:
    from projections.arbitration import request

    found = request(_engine(settings), args.request, args.pool)
    if found is None:
        raise PitError(f"unknown request {args.request!r} in pool {args.pool}")
    _print(args, found, explain_lines(found))
    return 0


def cmd_policy(args: argparse.Namespace, settings: Settings) -> int:
    if args.policy_action == "show":
        from projections.arbitration import policy_of

        text, set_at = policy_of(_engine(settings), args.pool)
        policy = json.loads(text)
        if args.json:
            print(json.dumps({"policy": policy, "set_at_ms": set_at}, indent=2))
        else:
            import yaml

            print(f"# pool {args.pool}: "
                  + (f"set {when(set_at)}" if set_at else "the default policy"))
            print(yaml.safe_dump(policy, sort_keys=True).rstrip())
        return 0
    from streams.arbitration.policy import parse_policy

    path = Path(args.file)
    if not path.is_file():
        raise PitError(f"no such file: {args.file}")
    policy = parse_policy(path.read_text())  # every problem, before anything is sent
    outcome = _run(settings, lambda ops: ops.set_policy(policy, pool_id=args.pool))
    print(outcome.line())
    return 0 if outcome.accepted else 1


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from schemas.codec import Codec
    from streams.arbitration.arbiter import ARBITER
    from streams.arbitration.policy import parse_policy
    from streams.arbitration.simulate import simulate, simulation_lines
    from streams.arbitration.topics import ARBITRATION_EVENTS
    from streams.commands import registry_for
    from streams.decider import from_record
    from streams.history import history_source

    path = Path(args.policy)
    if not path.is_file():
        raise PitError(f"no such file: {args.policy}")
    policy = parse_policy(path.read_text())
    codec = Codec(registry_for(settings))
    recorded = []
    for record in history_source(_engine(settings), [ARBITRATION_EVENTS]):
        if record.value is None:
            continue
        decoded = codec.decode(record.value)
        envelope = decoded.record["envelope"]
        event_type = ARBITER.event_type(decoded.name)
        if event_type is not None and envelope["entity_key"] == args.pool:
            recorded.append((from_record(event_type, decoded.record), envelope["occurred_at"]))
    now = int(time.time() * 1000)
    found = simulate(recorded, policy, args.pool,
                     since_ms(args.since, now) if args.since else 0)
    _print(args, found, simulation_lines(found))
    return 0


def _run(settings: Settings, operation: Any) -> Any:
    """`operation(arbitration's client operations)`, on a connected client."""
    from streams.arbitration.arbiter import ARBITER
    from streams.arbitration.client import allocation_ops
    from streams.commands import CommandClient
    from streams.pool.pool import POOL

    async def run() -> Any:
        async with CommandClient(settings, "pit-cli", deciders=(ARBITER, POOL)) as client:
            return await operation(allocation_ops(client)[1])

    return asyncio.run(run())


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    scores = {}
    for pair in args.score or ():
        name, sep, value = pair.partition("=")
        try:
            scores[name] = float(value)
        except ValueError:
            raise PitError(f"--score {pair!r}: expected name=number") from None
        if not sep:
            raise PitError(f"--score {pair!r}: expected name=number")
    decision = _run(settings, lambda ops: ops.submit(
        args.model, tenant=args.tenant, priority=args.priority, scores=scores,
        request_id=args.request_id, timeout=args.timeout, pool_id=args.pool))
    if args.json:
        print(json.dumps(decision.__dict__, indent=2))
    else:
        print(f"{decision.request_id}: {decision.outcome}"
              + (f" ({decision.reason})" if decision.reason else "")
              + f" - {decision.rationale}")
    return 0 if decision.outcome != "denied" else 1


def _command(send: Any) -> Any:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        outcome = _run(settings, lambda ops: send(ops, args))
        print(outcome.line())
        return 0 if outcome.accepted else 1
    return run


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`pit arbitration ...` on the `pit` parser's subcommands."""
    arb = sub.add_parser("arbitration", help="the Arbitration Engine: queues, fairness,"
                                             " decisions and their explanations, the policy")
    actions = arb.add_subparsers(dest="action", required=True)

    def action(name: str, help_text: str, run: Any) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text)
        parser.add_argument("--pool", default="default", help="pool id")
        parser.add_argument("--json", action="store_true", help="JSON instead of text")
        parser.set_defaults(run=run)
        return parser

    action("status", "queues by priority, tenants' shares against their entitlement, the"
                     " Gini", cmd_status)
    log = action("log", "decisions, newest last", cmd_log)
    log.add_argument("--request", help="only this request's")
    log.add_argument("--tenant", help="only this tenant's")
    log.add_argument("--outcome", choices=["granted", "queued", "deferred", "denied"])
    log.add_argument("--since", help="from this time: 10m, 2h, epoch ms or ISO")
    log.add_argument("--limit", type=int, default=50)
    explain = action("explain", "a request's decisions, rationale and what would have"
                                " changed them", cmd_explain)
    explain.add_argument("request")
    policy = action("policy", "set the policy from a YAML/JSON file, or show it", cmd_policy)
    policy.add_argument("policy_action", choices=["set", "show"])
    policy.add_argument("file", nargs="?", default="", help="the policy file (set)")
    simulate = action("simulate", "re-decide the recorded requests under another policy;"
                                  " writes nothing", cmd_simulate)
    simulate.add_argument("--policy", required=True, help="the policy file (YAML or JSON)")
    simulate.add_argument("--since", help="only requests from this time: 10m, 2h, epoch ms or"
                                          " ISO")
    submit = action("submit", "ask for a model; prints the decision", cmd_submit)
    submit.add_argument("model")
    submit.add_argument("--tenant", default="default")
    submit.add_argument("--priority", type=int, default=0,
                        help="CRITICAL 1000, HIGH 100, NORMAL 0, LOW -100, BACKGROUND -1000")
    submit.add_argument("--score", action="append", metavar="NAME=VALUE",
                        help="business_value, user_impact, cost_efficiency, learning_value")
    submit.add_argument("--request-id")
    submit.add_argument("--timeout", type=float, help="seconds it may wait (0: forever)")
    release = action("release", "give back a granted request", _command(
        lambda ops, a: ops.release(a.request, pool_id=a.pool)))
    release.add_argument("request")
    cancel = action("cancel", "withdraw a waiting request", _command(
        lambda ops, a: ops.cancel(a.request, pool_id=a.pool)))
    cancel.add_argument("request")
    describe = action("describe", "a model's slots, costs and equivalents", _command(
        lambda ops, a: ops.describe_model(
            a.model, slots=a.slots, cost_per_second=a.cost_per_second,
            cost_per_call=a.cost_per_call, equivalents=a.equivalent or [], pool_id=a.pool)))
    describe.add_argument("model")
    describe.add_argument("--slots", type=int, default=0, help="concurrent grants (0: any)")
    describe.add_argument("--cost-per-second", type=float, default=0.0)
    describe.add_argument("--cost-per-call", type=float, default=0.0)
    describe.add_argument("--equivalent", action="append", help="a model that serves as well")
