"""`pit stale ...`: the Stale Manager's command line - `status`, `policy set|show`, `plan`,
`show`, `apply` (with a progress bar), `restore`, `hold`, `release`, `explain`, `simulate`;
`--json` on each. Reads come from the views (projections/stale.py); `explain` and
`simulate` fold the recorded history. Errors are `PitError`s: streams/cli.py prints them as
one line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streams.errors import PitError
from streams.times import when

if TYPE_CHECKING:  # the rest is imported when a command runs: `pit` starts fast
    from sqlalchemy import Engine

    from streams.config import Settings


def _when(ms: int | None) -> str:
    return when(ms, never="never")


def _engine(settings: Settings) -> Engine:
    from streams.sql import connect_existing

    return connect_existing(settings.db_url)


def _print(args: argparse.Namespace, data: Any, lines: list[str]) -> None:
    print(output(data, lines, as_json=args.json))


def output(data: Any, lines: list[str], *, as_json: bool) -> str:
    """What a command prints: `data` as JSON with --json (a script reads it), else `lines`."""
    return json.dumps(data, indent=2, default=str) if as_json else "\n".join(lines)


def outcome_data(outcome: Any) -> dict[str, Any]:
    """A command's outcome as plain data, for --json (the line says the same in words)."""
    return {"command_id": outcome.command_id, "command_type": outcome.command_type,
            "entity_key": outcome.entity_key, "status": outcome.status,
            "reason": outcome.reason, "event_ids": list(outcome.event_ids),
            "decided_at": outcome.decided_at, "duplicate": outcome.duplicate}


def _run(settings: Settings, operation: Any) -> Any:
    """`operation(the Stale Manager's client operations)`, on a connected client."""
    from streams.commands import CommandClient
    from streams.stale.client import StaleOps
    from streams.stale.manager import STALE

    async def run() -> Any:
        async with CommandClient(settings, "pit-cli", deciders=(STALE,)) as client:
            return await operation(StaleOps(client))

    return asyncio.run(run())


def status_lines(found: dict[str, Any]) -> list[str]:
    from streams.stale.policy import human_bytes

    lines = [f"store {found['store_id']}: retention policy v{found['policy_version']}"]
    for tier in ("hot", "warm", "cold"):
        t = found["tiers"].get(tier, {"items": 0, "bytes": 0})
        lines.append(f"  {tier:<5} {t['items']:>8} items  {human_bytes(t['bytes']):>10}")
    trash = human_bytes(found["trash_bytes"])
    lines.append(f"  trash {found['trash_items']:>8} items  {trash:>10}")
    lines.append(f"  holds {found['holds']}")
    lines.append(f"  next run {_when(found['next_run_at'])},"
                 f" last run {_when(found['last_run_at'])}"
                 + (f", last plan {found['last_plan']}" if found.get("last_plan") else ""))
    return lines


def plan_lines(plan: dict[str, Any]) -> list[str]:
    from streams.stale.policy import human_bytes

    lines = [f"plan {plan['plan_id']} ({plan['status']}): {plan['items']} of "
             f"{plan['evaluated']} items - delete {human_bytes(plan['delete_bytes'])}, archive "
             f"{human_bytes(plan['archive_bytes'])}, warm {human_bytes(plan['warm_bytes'])};"
             f" expires {_when(plan['expires_at'])}"]
    if plan["status"] != "planned":
        lines.append(f"  applied {plan['cursor']}/{plan['items']}: {plan['trashed']} trashed,"
                     f" {plan['moved']} moved, {plan['skipped']} skipped,"
                     f" {human_bytes(plan['bytes_freed'])} freed")
    for item in plan.get("item_rows", ()):
        outcome = item.get("outcome", "")
        value = item.get("value_score")
        lines.append(f"  {item['address']}  {item['target']:<5} {human_bytes(item['size']):>10}"
                     + (f"  value {value:.3f}" if value is not None else "")
                     + f"  {item['reason']} [{item['rule']}]"
                     + (f"  -> {outcome}" if outcome and outcome != "pending" else ""))
    shown_to = plan.get("offset", 0) + len(plan.get("item_rows", ()))
    if shown_to < plan["items"]:
        lines.append(f"  ... {plan['items'] - shown_to} more (--offset {shown_to})")
    if plan["status"] == "planned":
        lines.append(f"confirm with: pit stale apply {plan['plan_id']}")
    return lines


def bar_text(plan: dict[str, Any], width: int = 30) -> str:
    """An apply's progress as one line: `[###.....] 10/30 items, 1.0 KiB freed`."""
    from streams.stale.policy import human_bytes

    filled = min(width, int(width * plan["cursor"] / max(1, plan["items"])))
    return (f"[{'#' * filled}{'.' * (width - filled)}] {plan['cursor']}/{plan['items']} items,"
            f" {human_bytes(plan['bytes_freed'])} freed")


def _bar(plan: dict[str, Any]) -> None:
    """The progress bar on stderr, redrawn in place (stdout keeps the result alone)."""
    sys.stderr.write("\r" + bar_text(plan) + ("\n" if plan["status"] == "applied" else ""))
    sys.stderr.flush()


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from projections.stale import status

    found = status(_engine(settings), args.store)
    _print(args, found, status_lines(found))
    return 0


def cmd_policy(args: argparse.Namespace, settings: Settings) -> int:
    if args.policy_action == "show":
        from projections.stale import status

        document = status(_engine(settings), args.store).get("document") or ""
        from streams.stale.manager import retention_from_json
        from streams.stale.policy import retention_json

        plain = json.loads(retention_json(retention_from_json(document)))
        if args.json:
            print(json.dumps(plain, indent=2))
        else:
            import yaml

            print(f"# store {args.store}: " + ("as set" if document else "the default"))
            print(yaml.safe_dump(plain, sort_keys=True).rstrip())
        return 0
    from streams.stale.policy import parse_retention

    path = Path(args.file)
    if not args.file or not path.is_file():
        raise PitError(f"no such file: {args.file!r}")
    retention = parse_retention(path.read_text())  # every problem, before anything is sent
    outcome = _run(settings, lambda ops: ops.set_policy(retention, store_id=args.store))
    _print(args, outcome_data(outcome), [outcome.line()])
    return 0


def cmd_plan(args: argparse.Namespace, settings: Settings) -> int:
    async def plan(ops: Any) -> dict[str, Any]:
        made = await ops.plan(store_id=args.store)
        if "status" not in made:
            return made
        return await ops.show(made["plan_id"], store_id=args.store, limit=args.limit)

    found = _run(settings, plan)
    if "status" not in found:  # the views lag: the id, to read it later
        _print(args, {**found, "status": "requested"},
               [f"plan {found['plan_id']} requested; the views do not show it yet:"
                f" pit stale show {found['plan_id']}"])
        return 0
    _print(args, found, plan_lines(found))
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    found = _run(settings, lambda ops: ops.show(args.plan, store_id=args.store,
                                                limit=args.limit, offset=args.offset))
    _print(args, found, plan_lines(found))
    return 0


def cmd_apply(args: argparse.Namespace, settings: Settings) -> int:
    progress = None if args.no_wait or args.json else _bar
    found = _run(settings, lambda ops: ops.apply(args.plan, store_id=args.store,
                                                 progress=progress))
    _print(args, found, apply_lines(found, args.plan, waited=not args.no_wait))
    return 0


def apply_lines(found: dict[str, Any], plan_id: str, *, waited: bool) -> list[str]:
    """What `apply` says: where to follow it (--no-wait), else how far it got - the views'
    counters, or just "applied" when they had not shown the plan by the time it ended."""
    if not waited:
        return [f"plan {plan_id} confirmed: pit stale show {plan_id} follows it"]
    if "status" in found and found["status"] != "planned":
        return [plan_lines(found)[1].strip()]
    return [f"plan {plan_id} applied"]


def _simple(send: Any) -> Any:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        outcome = _run(settings, lambda ops: send(ops, args))
        _print(args, outcome_data(outcome), [outcome.line()])
        return 0
    return run


def explain_lines(found: dict[str, Any]) -> list[str]:
    from streams.stale.policy import human_bytes

    lines = [f"{found['address']}: {found['action']}"
             + (f" -> {found['target']}" if found["target"] else "")
             + f" ({found['state']}, {found['tier']}, {human_bytes(found['size'])})",
             f"  deciding rule: {found['rule']}",
             f"  reason: {found['reason']}"]
    value = found["value"]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in value["components"].items())
    lines.append(f"  value {value['total']:.3f} ({parts})")
    if found["hold"] is not None:
        lines.append(f"  legal hold: {found['hold'] or 'no reason given'}")
    if found["next_change"]:
        lines.append(f"  next: {found['next_change']}")
    return lines


def explanation(state: Any, address: str, now_ms: int) -> dict[str, Any]:
    """What `explain` says of one item of a folded state (pure: `explain_lines` words it)."""
    if address not in state.items:
        raise PitError(f"the Stale Manager knows no item {address!r}")
    state_name = ("trashed" if address in state.trash else "purged"
                  if address in state.purged else "moving" if address in state.moving
                  else "live")
    evaluator = state.evaluator(now_ms)
    item = state.items[address]
    if address in evaluator.items:
        e = evaluator.evaluate(address)
        action, target, reason, rule = (e.action.value, e.target.value if e.target else "",
                                        e.reason, e.rule)
        value, next_change = e.value, e.next_change
    else:
        from streams.stale.policy import value_of

        action, target, reason, rule, next_change = state_name, "", state_name, "-", ""
        value = value_of(item, state.retention, now_ms, training=False, derivable=False)
    return {"address": address, "state": state_name, "action": action, "target": target,
            "reason": reason, "rule": rule, "size": item.size, "next_change": next_change,
            "tier": str(state.tiers.get(address, "hot")), "hold": state.holds.get(address),
            "value": {"total": value.total, "components": value.components()}}


def cmd_explain(args: argparse.Namespace, settings: Settings) -> int:
    from streams.stale.client import replayed_state

    state = replayed_state(settings, _engine(settings), args.store)
    found = explanation(state, args.address, int(time.time() * 1000))
    _print(args, found, explain_lines(found))
    return 0


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from streams.stale.client import replayed_history
    from streams.stale.policy import parse_retention
    from streams.stale.simulate import simulate, simulation_lines

    path = Path(args.policy)
    if not path.is_file():
        raise PitError(f"no such file: {args.policy}")
    if args.days < 1 or args.days > 3650:
        raise PitError(f"--days must be within 1 and 3650, got {args.days}")
    candidate = parse_retention(path.read_text())
    now = int(time.time() * 1000)
    start = now - args.days * 86_400_000  # the last --days days of recorded history
    state, recorded = replayed_history(settings, _engine(settings), args.store, start)
    found = simulate(state, candidate, args.days, start, recorded)
    _print(args, found, simulation_lines(found))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`pit stale ...` on the `pit` parser's subcommands."""
    stale = sub.add_parser("stale", help="the Stale Manager: retention policy, plans, trash,"
                                         " tiers, explanations")
    actions = stale.add_subparsers(dest="action", required=True)

    def action(name: str, help_text: str, run: Any) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text)
        parser.add_argument("--store", default="default", help="store id")
        parser.add_argument("--json", action="store_true", help="JSON instead of text")
        parser.set_defaults(run=run)
        return parser

    action("status", "bytes per tier, trash, holds, next and last run", cmd_status)
    policy = action("policy", "set the retention policy from a YAML/JSON file, or show it",
                    cmd_policy)
    policy.add_argument("policy_action", choices=["set", "show"])
    policy.add_argument("file", nargs="?", default="", help="the policy file (set)")
    plan = action("plan", "evaluate every item and list what would change; changes nothing",
                  cmd_plan)
    plan.add_argument("--limit", type=int, default=50, help="items to list")
    show = action("show", "a plan, its items and its progress", cmd_show)
    show.add_argument("plan")
    show.add_argument("--limit", type=int, default=50)
    show.add_argument("--offset", type=int, default=0)
    apply = action("apply", "confirm a plan by its id and carry it out", cmd_apply)
    apply.add_argument("plan")
    apply.add_argument("--no-wait", action="store_true", help="confirm and return")
    restore = action("restore", "bring back a trashed item, or every trashed item of a plan",
                     _simple(lambda ops, a: ops.restore(a.target, store_id=a.store)))
    restore.add_argument("target", help="an artifact address or a plan id")
    hold = action("hold", "a legal hold: no delete or archive until released",
                  _simple(lambda ops, a: ops.hold(a.address, a.reason, store_id=a.store)))
    hold.add_argument("address")
    hold.add_argument("--reason", default="")
    release = action("release", "lift a legal hold",
                     _simple(lambda ops, a: ops.release_hold(a.address, store_id=a.store)))
    release.add_argument("address")
    explain = action("explain", "an item's decision, deciding rule, value breakdown and"
                                " when it will next change", cmd_explain)
    explain.add_argument("address")
    simulate = action("simulate", "replay the recorded history day by day under a candidate"
                                  " policy, next to the current one; writes nothing",
                      cmd_simulate)
    simulate.add_argument("--policy", required=True, help="the candidate (YAML or JSON)")
    simulate.add_argument("--days", type=int, default=30, help="the last this many days")
