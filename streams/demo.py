"""`pit demo`: a scripted scenario, end to end, printed as it happens.

It starts the whole Pit in-process on the embedded default (or uses the `pit up` already
running on this data directory), drives two models through their lifecycle - including an
invalid transition, a duplicate command, a failure and its recovery, and garbage bytes -
then shows the views, the audit trail, the hash-chain check and a point-in-time replay.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from sqlalchemy import bindparam, text

from streams.app import Stack, running_pit
from streams.client import Outcome, PitClient
from streams.config import Settings
from streams.history import read_topic
from streams.kafka import make_producer, produce_all
from streams.pool.lifecycle import ModelState, TransitionReason
from streams.processor import Output
from streams.topics import DEAD_LETTERS, POOL_COMMANDS, POOL_EVENTS


def _summary(event: dict) -> str:
    if "to_state" in event:
        return (f"{event['from_state']} -> {event['to_state']} ({event['reason']}, "
                f"{event['time_in_previous_ms']} ms in {event['from_state']})")
    return f"used: {event['invocations']} invocation(s)"


def _show(step: str, outcome: Outcome) -> None:
    verdict = "accepted" if outcome.accepted else f"REJECTED ({outcome.reason})"
    again = ", duplicate: acknowledged again, nothing changed" if outcome.duplicate else ""
    events = f" -> {len(outcome.event_ids)} event(s)" if outcome.event_ids else ""
    print(f"  {step:48s} {verdict}{events}{again}")


async def _wait_for_views(engine, model_ids: list[str], expected: int, timeout: float = 15):
    """The projector runs beside us; wait until it has caught up with our events."""
    deadline = time.monotonic() + timeout
    query = text("SELECT count(*) FROM model_transitions WHERE model_id IN :ids").bindparams(
        bindparam("ids", expanding=True))
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(query, {"ids": model_ids}).scalar_one() >= expected:
                return
        await asyncio.sleep(0.1)


async def run_demo(settings: Settings) -> None:
    from projections import audit
    from projections.db import connect

    stack = None
    if settings.embedded and not running_pit(settings):
        print(f"starting the Pit in-process (embedded broker, state in {settings.data_dir})")
        stack = await Stack(settings).start()
        settings = stack.settings
    else:
        print("using the running Pit")
    engine = stack.engine if stack else connect(settings.db_url)
    run = uuid.uuid4().hex[:6]
    llama, whisper = f"llama-7b-{run}", f"whisper-{run}"
    try:
        async with PitClient(settings, issued_by="pit-demo") as pit:
            print(f"\n1. {llama} goes through its lifecycle")
            _show("warm (Cold -> Warming)", await pit.warm_model(llama))
            hot = await pit.mark_hot(llama)
            _show("ready (Warming -> Hot)", hot)
            usage = await pit.record_usage(llama, 3, command_id=f"usage-{run}")
            _show("serve 3 invocations", usage)
            _show("the same command again (same command id)",
                  await pit.record_usage(llama, 3, command_id=f"usage-{run}"))
            _show("warm again (Hot -> Warming is not allowed)", await pit.warm_model(llama))
            await asyncio.sleep(0.05)
            _show("cool down (Hot -> Cooling)", await pit.cool_model(llama))
            _show("unload (Cooling -> Cold)", await pit.unload_model(llama))

            print(f"\n2. {whisper} fails while loading and recovers")
            _show("warm (Cold -> Warming)",
                  await pit.warm_model(whisper, TransitionReason.PREDICTIVE_PREWARM))
            _show("load fails (Warming -> Failed)", await pit.fail_model(whisper, "CUDA OOM"))
            _show("serve while Failed", await pit.record_usage(whisper))
            _show("recover (Failed -> Cold)", await pit.recover_model(whisper))

            print("\n3. garbage on the command topic goes to the dead-letter topic")
            await produce_all(make_producer(settings), [Output(
                POOL_COMMANDS, 0, b"garbage", b"\x07not avro at all", int(time.time() * 1000))])
            _show("and the processor keeps going: warm again",
                  await pit.transition(whisper, ModelState.WARMING))
            letters = await read_topic(settings, DEAD_LETTERS)
            headers = dict(letters[-1].headers)
            print(f"  dead letter kept {len(letters[-1].value)} original bytes; "
                  f"pit.error: {headers['pit.error'].decode()}")

        await _wait_for_views(engine, [llama, whisper], expected=8)
        print("\n4. the models view")
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT model_id, state, transition_count, failure_count, usage_count "
                "FROM models WHERE model_id IN (:a, :b) ORDER BY model_id"),
                {"a": llama, "b": whisper}).all()
        print(f"  {'model':22s} {'state':8s} transitions failures usage")
        for row in rows:
            print(f"  {row[0]:22s} {row[1]:8s} {row[2]:11d} {row[3]:8d} {row[4]:5d}")

        print(f"\n5. the audit trail of {llama}: its events, hash-chained "
              f"(`pit audit {llama}` shows commands and outcomes too)")
        for row in audit.history(engine, llama):
            if row["topic"] == POOL_EVENTS:
                print(f"  #{row['seq']:<4d} {row['topic']}[{row['partition']}]@{row['offset']:<3d} "
                      f"{_summary(row['payload'])}  hash {row['hash'][:12]}")

        state = audit.state_as_of(engine, llama, hot.decided_at)
        print(f"\n6. {llama} as of {hot.decided_at} (replayed from the archive): {state.state}, "
              f"{state.transition_count} transitions, {state.usage_count} invocations")

        report = audit.verify(engine)
        print("\n7. audit chain: " + "; ".join(report.lines()))
    finally:
        if stack is not None:
            await stack.close()
