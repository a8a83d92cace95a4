"""`pit demo`: a scripted scenario, end to end, printed as it happens.

It starts the whole Pit in-process on the embedded default (or uses the `pit up` already
running on this data directory) and a real model host beside it, then drives the Pool
Manager: models are registered, allocated (a cold start, then cache hits), called on their
host, evicted under memory pressure, failed and recovered; an invalid command, a duplicate
and garbage bytes show the error paths. It ends with the pool at a glance, a model's audit
trail, a point-in-time replay and the hash-chain check.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from streams.app import Stack, running_pit
from streams.client import PitClient
from streams.commands import Outcome
from streams.component import audit_deciders
from streams.components import COMPONENTS
from streams.config import Settings
from streams.errors import PitError
from streams.history import read_topic
from streams.kafka import make_producer, produce_all
from streams.pool.errors import AllocationError
from streams.pool.host import ModelHost
from streams.pool.loaders import write_mlp
from streams.pool.topics import POOL_COMMANDS, POOL_EVENTS
from streams.processor import Output
from streams.topics import DEAD_LETTERS

if TYPE_CHECKING:
    from sqlalchemy import Engine

SENTIMENT = "python:streams.pool.examples:sentiment"
TOKENIZER = "python:streams.pool.examples:tokenizer"


def _show(step: str, outcome: Outcome) -> None:
    verdict = "accepted" if outcome.accepted else f"REJECTED ({outcome.reason})"
    again = ", duplicate: acknowledged again, nothing changed" if outcome.duplicate else ""
    events = f" -> {len(outcome.event_ids)} event(s)" if outcome.event_ids else ""
    print(f"  {step:46s} {verdict}{events}{again}")


def _summary(event: dict) -> str:
    if "to_state" in event:
        return f"{event['from_state']} -> {event['to_state']} ({event['reason']})"
    details = {k: v for k, v in event.items() if k not in ("model_id", "envelope")}
    return ", ".join(f"{k}={v}" for k, v in details.items())


async def _wait_for_views(engine: Engine, until_ms: int, timeout: float = 15) -> None:
    """The projector runs beside us; wait until it has archived our last event."""
    from projections import audit

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = audit.history(engine, "default")
        if rows and rows[-1]["timestamp_ms"] >= until_ms:
            return
        await asyncio.sleep(0.1)


async def _artifacts(pit: PitClient, run: str) -> None:
    name = f"demo-report-{run}"
    print(f"\n6. artifacts: {name}, stored, deduplicated, versioned, traced")
    first = await pit.artifacts.store(b'{"revenue": 10, "region": "north"}\n', name=name,
                                     content_type="application/json", tags=["finance"],
                                     message="first draft")
    print(f"  stored {first.address[:19]}... newly_stored={first.newly_stored}")
    again = await pit.artifacts.store(b'{"revenue": 10, "region": "north"}\n',
                                     content_type="application/json", tags=["q3"],
                                     creator="someone-else")
    print(f"  the same bytes again: newly_stored={again.newly_stored}, tags and creators"
          " merged")
    second = await pit.artifacts.store(b'{"revenue": 12, "region": "north"}\n', name=name,
                                      content_type="application/json", message="corrected")
    summary = await pit.artifacts.store(b"revenue grew to 12 in the north\n",
                                       derived_from=[name], content_type="text/plain",
                                       tags=["finance", "summary"])
    versions = await pit.artifacts.versions(name)
    print(f"  {name}: versions {[v['version'] for v in versions]}; diff v1 -> v2:")
    for line in (await pit.artifacts.diff(f"{name}@1", f"{name}@2")).splitlines()[2:]:
        print(f"    {line}")
    graph = await pit.artifacts.lineage(summary.address, "up")
    print(f"  lineage of the summary: derived from {second.address[:19]}..."
          f" ({len(graph['edges'])} link)")
    entry = await pit.artifacts.info(first.address)
    print(f"  catalog entry: tags {entry['tags']}, creators {entry['creators']},"
          f" quality {entry['quality']}")


async def run_demo(settings: Settings) -> None:
    from projections import audit
    from projections.pool import pool_status, status_lines
    from streams.sql import connect

    stack = None
    if settings.embedded and not running_pit(settings):
        print(f"starting the Pit in-process (embedded broker, state in {settings.data_dir})")
        stack = await Stack(settings, projector_process=settings.projector_process).start()
        settings = stack.settings
    else:
        print("using the running Pit")
    engine = stack.engine if stack else connect(settings.db_url)
    run = uuid.uuid4().hex[:6]
    host_id, mlp, sentiment, tokenizer = (f"demo-host-{run}", f"mlp-{run}",
                                          f"sentiment-{run}", f"tokenizer-{run}")
    weights = Path(settings.data_dir) / f"demo-mlp-{run}.npz"
    write_mlp(weights, inputs=4, hidden=64, outputs=2, seed=1)
    host = await ModelHost(settings, host_id, memory_mb=300, capacity=2,
                           say=lambda line: print(f"  [host] {line}")).start()
    try:
        async with PitClient(settings, issued_by="pit-demo") as pit:
            print("\n1. a host with room for 2 models (300 MB), and three models")
            for model_id, uri in ((mlp, f"npz:{weights}"), (sentiment, SENTIMENT),
                                  (tokenizer, TOKENIZER)):
                _show(f"register {model_id}",
                      await pit.pool.register_model(model_id, uri, 100, 50))

            print("\n2. allocate: a cold start, then cache hits")
            started = time.perf_counter()
            first = await pit.pool.allocate_model(mlp, "demo")
            print(f"  {mlp}: cache_hit={first.cache_hit}, loaded on {first.host_id} in"
                  f" {(time.perf_counter() - started) * 1000:.0f} ms (placed, loaded, Hot)")
            outputs = await pit.pool.infer(first, [[0.5, -1.0, 2.0, 0.1]])
            print(f"  infer on the host: {outputs}")
            await pit.pool.release_model(first.request_id)
            started = time.perf_counter()
            again = await pit.pool.allocate_model(mlp, "demo")
            print(f"  again: cache_hit={again.cache_hit} in"
                  f" {(time.perf_counter() - started) * 1000:.1f} ms")
            await pit.pool.release_model(again.request_id)
            words = await pit.pool.allocate_model(sentiment, "demo")
            print(f"  {sentiment}: {await pit.pool.infer(words, 'a great and fast service')}")
            await pit.pool.release_model(words.request_id)

            print("\n3. the host holds 2 models: a third evicts the least recently used")
            third = await pit.pool.allocate_model(tokenizer, "demo")
            print(f"  {tokenizer} allocated (cache_hit={third.cache_hit}, {mlp} evicted);"
                  f" {await pit.pool.infer(third, 'Hello, Pit')}")
            busy = await pit.pool.allocate_model(sentiment, "demo")
            try:  # both models on the host are allocated now: neither may be evicted
                await pit.pool.allocate_model(mlp, "demo")
            except AllocationError as refused:
                print(f"  {mlp} while both are in use: {refused}")
            for allocation in (third, busy):
                await pit.pool.release_model(allocation.request_id)

            print("\n4. failure and recovery")
            _show(f"fail {sentiment} (operator, HealthCheckFailure)",
                  await pit.pool.fail_model(sentiment, "demo: bad weights"))
            await asyncio.sleep(0.3)  # the host unloads it
            _show(f"recover {sentiment} (Failed -> Cold)", await pit.pool.recover_model(sentiment))
            back = await pit.pool.allocate_model(sentiment, "demo")
            print(f"  allocated again: loaded on {back.host_id} (cache_hit={back.cache_hit})")
            await pit.pool.release_model(back.request_id)

            print("\n5. bad input: rejected with a reason, acknowledged once, dead-lettered")
            _show("usage of an unknown model", await pit.pool.record_usage(f"nope-{run}"))
            usage_id = f"usage-{run}"
            _show("usage of a Hot model", await pit.pool.record_usage(sentiment, 3,
                                                                 command_id=usage_id))
            _show("the same command again (same command id)",
                  await pit.pool.record_usage(sentiment, 3, command_id=usage_id))
            await produce_all(make_producer(settings), [Output(
                POOL_COMMANDS, 0, b"garbage", b"\x07not avro at all", int(time.time() * 1000))])
            letters = await read_topic(settings, DEAD_LETTERS)
            while not letters:
                await asyncio.sleep(0.05)
                letters = await read_topic(settings, DEAD_LETTERS)
            headers = dict(letters[-1].headers)
            print(f"  garbage bytes: the dead letter kept {len(letters[-1].value or b'')} original"
                  f" bytes; pit.error: {headers['pit.error'].decode()}")

            await _artifacts(pit, run)
            last = await pit.pool.record_usage(sentiment)
        await _wait_for_views(engine, last.decided_at)

        print("\n7. the pool at a glance (`pit pool status`)")
        status = pool_status(engine)
        if status is None:
            raise PitError("the pool view is empty after the demo's allocations")
        print("\n".join("  " + line for line in status_lines(status)))

        print(f"\n8. the audit trail of {mlp} (`pit audit {mlp}`), hash-chained")
        hot_at = None
        for row in audit.history(engine, mlp):
            if row["topic"] == POOL_EVENTS:
                payload = row["payload"]
                if payload.get("to_state") == "Hot" and hot_at is None:
                    hot_at = row["timestamp_ms"]
                print(f"  #{row['seq']:<4d} {row['event_type']:18s} {_summary(payload)}"
                      f"  hash {row['hash'][:12]}")
        if hot_at is not None:
            state = audit.state_as_of(engine, mlp, hot_at, audit_deciders(COMPONENTS))
            print(f"\n9. {mlp} as of {hot_at} (replayed from the archive): {state.state},"
                  f" {state.transition_count} transitions")
        report = audit.verify(engine)
        print("\n10. audit chain: " + "; ".join(report.lines()))
    finally:
        await host.drain()
        await host.close()
        if stack is not None:
            await stack.close()
