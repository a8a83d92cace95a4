"""`pit stale ...` (streams/stale/cli.py) without a broker: what each command prints - the
pure wording functions (progress bar, status, plan, explain) and `--json` on every command,
the client call stubbed where one is made."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import pytest

from streams.commands import Outcome
from streams.stale import cli
from streams.stale.manager import (
    STALE,
    ObserveArtifacts,
    PlaceHold,
    SetRetentionPolicy,
    item_record,
)
from streams.stale.policy import DAY_MS, Item

NOW = 1_800_000_000_000
ADDRESS = f"sha256:{1:064x}"


def plan_row(**changes) -> dict:
    row = {"plan_id": "p1", "status": "planned", "items": 3, "evaluated": 10,
           "delete_bytes": 2048, "archive_bytes": 0, "warm_bytes": 1024, "expires_at": None,
           "cursor": 0, "trashed": 0, "moved": 0, "skipped": 0, "bytes_freed": 0,
           "item_rows": [{"address": ADDRESS, "target": "trash", "size": 2048,
                          "reason": "idle 40.0 days > 30", "rule": "age/MaxAge",
                          "outcome": "pending", "value_score": 0.125}]}
    return {**row, **changes}


# --- the wording ------------------------------------------------------------------------------

def test_the_progress_bar_fills_with_the_cursor_and_ends_its_line_when_applied(capsys):
    assert cli.bar_text(plan_row(cursor=0), width=10) == "[..........] 0/3 items, 0 B freed"
    assert cli.bar_text(plan_row(cursor=2, bytes_freed=1536), width=9) == \
        "[######...] 2/3 items, 1.5 KiB freed"
    assert cli.bar_text(plan_row(cursor=3), width=4).startswith("[####] 3/3")
    assert cli.bar_text(plan_row(items=0, cursor=0), width=4).startswith("[....] 0/0")
    cli._bar(plan_row(status="applying", cursor=1))
    cli._bar(plan_row(status="applied", cursor=3))
    err = capsys.readouterr()
    assert err.out == ""                      # stdout keeps the result alone
    assert err.err.startswith("\r[") and err.err.endswith("3/3 items, 0 B freed\n")
    assert err.err.count("\n") == 1


def test_status_lines_show_every_tier_the_trash_holds_and_runs():
    found = {"store_id": "default", "policy_version": 2, "holds": 1, "trash_items": 4,
             "trash_bytes": 4096, "next_run_at": None, "last_run_at": None, "last_plan": "p9",
             "tiers": {"hot": {"items": 5, "bytes": 5 * 2 ** 20}, "cold": {"items": 1,
                                                                         "bytes": 10}}}
    lines = cli.status_lines(found)
    assert lines[0] == "store default: retention policy v2"
    assert lines[1].split() == ["hot", "5", "items", "5.0", "MiB"]
    assert lines[2].split() == ["warm", "0", "items", "0", "B"]   # a tier with nothing yet
    assert lines[4].split() == ["trash", "4", "items", "4.0", "KiB"]
    assert lines[5] == "  holds 1"
    assert lines[6] == "  next run never, last run never, last plan p9"


def test_plan_lines_list_items_progress_the_rest_and_how_to_confirm():
    lines = cli.plan_lines(plan_row())
    assert lines[0].startswith("plan p1 (planned): 3 of 10 items - delete 2.0 KiB, archive 0 B,"
                               " warm 1.0 KiB;")
    assert lines[1].split()[:3] == [ADDRESS, "trash", "2.0"]
    assert lines[1].endswith("value 0.125  idle 40.0 days > 30 [age/MaxAge]")  # pending
    assert lines[2] == "  ... 2 more (--offset 1)"
    assert lines[3] == "confirm with: pit stale apply p1"
    applying = plan_row(status="applying", cursor=1, trashed=1, bytes_freed=2048,
                        item_rows=[{**plan_row()["item_rows"][0], "outcome": "trashed"}])
    lines = cli.plan_lines(applying)
    assert lines[1] == "  applied 1/3: 1 trashed, 0 moved, 0 skipped, 2.0 KiB freed"
    assert lines[2].endswith("-> trashed")
    assert not any(line.startswith("confirm") for line in lines)


def test_apply_lines_say_what_happened_or_where_to_follow_it():
    assert cli.apply_lines({}, "p1", waited=False) == [
        "plan p1 confirmed: pit stale show p1 follows it"]
    assert cli.apply_lines(plan_row(status="applied", cursor=3, trashed=3), "p1",
                           waited=True) == ["applied 3/3: 3 trashed, 0 moved, 0 skipped,"
                                            " 0 B freed"]
    assert cli.apply_lines({"plan_id": "p1"}, "p1", waited=True) == ["plan p1 applied"]


# --- explain ----------------------------------------------------------------------------------

def explained_state():
    state = STALE.initial_state("default")
    for command in (
            SetRetentionPolicy(json.dumps({"policies": [{"name": "age", "priority": 10, "rules": [
                {"type": "MaxAge", "days": 30, "action": "archive"}]}]})),
            ObserveArtifacts([item_record(Item(ADDRESS, 2048, NOW - 18 * DAY_MS,
                                               NOW - 18 * DAY_MS, accesses=3, quality=0.5))]),
            PlaceHold(f"sha256:{2:064x}", "case 42"),
            ObserveArtifacts([item_record(Item(f"sha256:{2:064x}", 10, NOW - 90 * DAY_MS,
                                               NOW - 90 * DAY_MS))])):
        for event in STALE.decide(state, command, NOW):
            state = STALE.evolve(state, event, NOW)
    return state


def test_explain_gives_the_decision_rule_value_breakdown_and_next_change():
    found = cli.explanation(explained_state(), ADDRESS, NOW)
    lines = cli.explain_lines(found)
    assert lines[0] == f"{ADDRESS}: keep -> hot (live, hot, 2.0 KiB)"
    assert lines[1] == "  deciding rule: default"
    assert lines[2] == "  reason: no policy applies"
    assert lines[3].startswith("  value 0.")
    for component in ("recency", "frequency", "quality 0.50", "training 0.00", "uniqueness"):
        assert component in lines[3]
    assert lines[4] == "  next: eligible for archive in 12 days"
    assert not any("legal hold" in line for line in lines)


def test_explain_shows_a_legal_hold_as_the_deciding_rule_and_its_own_line():
    lines = cli.explain_lines(cli.explanation(explained_state(), f"sha256:{2:064x}", NOW))
    assert lines[1] == "  deciding rule: hold"
    assert lines[2] == "  reason: legal hold: case 42"
    assert "  legal hold: case 42" in lines
    assert not any(line.startswith("  next:") for line in lines)


def test_cmd_explain_prints_the_lines_or_the_json(monkeypatch, capsys):
    import streams.stale.client as client

    monkeypatch.setattr(client, "replayed_state", lambda settings, engine, store: (
        explained_state()))
    monkeypatch.setattr(cli, "_engine", lambda settings: None)
    monkeypatch.setattr(cli, "time", SimpleNamespace(time=lambda: NOW / 1000))
    args = argparse.Namespace(store="default", address=ADDRESS, json=False)
    assert cli.cmd_explain(args, None) == 0
    assert "  next: eligible for archive in 12 days" in capsys.readouterr().out.splitlines()
    assert cli.cmd_explain(argparse.Namespace(**{**vars(args), "json": True}), None) == 0
    found = json.loads(capsys.readouterr().out)
    assert (found["rule"], found["next_change"], found["tier"]) == (
        "default", "eligible for archive in 12 days", "hot")
    assert set(found["value"]["components"]) == {"recency", "frequency", "quality",
                                                 "training", "uniqueness"}
    with pytest.raises(cli.PitError, match="knows no item"):
        cli.cmd_explain(argparse.Namespace(**{**vars(args), "address": "sha256:nope"}), None)


# --- --json on every command ------------------------------------------------------------------

OUTCOME = Outcome("c1", "PlaceHold", "stale:" + ADDRESS, "ACCEPTED", None, ("e1",), NOW, "p")


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["stale", *argv])


@pytest.mark.parametrize("argv", [
    ("hold", ADDRESS, "--reason", "case 1"), ("release", ADDRESS), ("restore", ADDRESS),
    ("restore", "p1")])
def test_every_command_answering_with_an_outcome_honours_json(argv, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_run", lambda settings, operation: OUTCOME)
    assert parsed(*argv).run(parsed(*argv), None) == 0
    assert capsys.readouterr().out.strip() == OUTCOME.line()
    args = parsed(*argv, "--json")
    assert args.run(args, None) == 0
    found = json.loads(capsys.readouterr().out)
    assert found == cli.outcome_data(OUTCOME)
    assert (found["status"], found["event_ids"]) == ("ACCEPTED", ["e1"])


def test_policy_set_honours_json(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "_run", lambda settings, operation: OUTCOME)
    document = tmp_path / "policy.yaml"
    document.write_text("policies: [{name: p, rules: [{type: MaxAge, days: 9}]}]\n")
    args = parsed("policy", "set", str(document), "--json")
    assert args.run(args, None) == 0
    assert json.loads(capsys.readouterr().out)["command_id"] == "c1"


def test_plan_honours_json_when_the_views_lag_and_when_they_show_it(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_run", lambda settings, operation: {"plan_id": "p7"})
    args = parsed("plan", "--json")
    assert args.run(args, None) == 0
    assert json.loads(capsys.readouterr().out) == {"plan_id": "p7", "status": "requested"}
    args = parsed("plan")
    args.run(args, None)
    assert "the views do not show it yet: pit stale show p7" in capsys.readouterr().out
    monkeypatch.setattr(cli, "_run", lambda settings, operation: plan_row())
    args = parsed("plan", "--json")
    args.run(args, None)
    assert json.loads(capsys.readouterr().out)["item_rows"][0]["value_score"] == 0.125


def test_apply_honours_json_and_draws_no_bar_then(monkeypatch, capsys):
    seen = {}

    def run(settings, operation):
        class Ops:
            async def apply(self, plan_id, *, store_id, progress):
                seen["progress"] = progress
                return plan_row(status="applied", cursor=3)
        import asyncio
        return asyncio.run(operation(Ops()))

    monkeypatch.setattr(cli, "_run", run)
    args = parsed("apply", "p1", "--json")
    assert args.run(args, None) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "applied"
    assert seen["progress"] is None


def test_output_is_json_or_the_lines():
    assert cli.output({"a": 1}, ["one", "two"], as_json=False) == "one\ntwo"
    assert json.loads(cli.output({"a": 1}, ["one"], as_json=True)) == {"a": 1}


def test_cmd_simulate_replays_the_last_days_of_history(monkeypatch, capsys, tmp_path):
    import streams.stale.client as client

    asked = {}

    def history(settings, engine, store, since):
        asked["since"] = since
        return explained_state(), []

    monkeypatch.setattr(client, "replayed_history", history)
    monkeypatch.setattr(cli, "_engine", lambda settings: None)
    monkeypatch.setattr(cli, "time", SimpleNamespace(time=lambda: NOW / 1000))
    candidate = tmp_path / "new.yaml"
    candidate.write_text("policies: [{name: p, rules: [{type: MaxAge, days: 1}]}]\n")
    args = parsed("simulate", "--policy", str(candidate), "--days", "3", "--json")
    assert args.run(args, None) == 0
    found = json.loads(capsys.readouterr().out)
    assert asked["since"] == found["start"] == NOW - 3 * DAY_MS
    assert [d["deleted"] for d in found["candidate"]] == [1, 0, 0]   # the held one stays
    args = parsed("simulate", "--policy", str(candidate), "--days", "0")
    with pytest.raises(cli.PitError, match="--days must be within 1 and 3650"):
        args.run(args, None)
