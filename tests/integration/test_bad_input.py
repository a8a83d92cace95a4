"""Bad input never stops a process: a projector that cannot apply one event dead-letters it and
keeps going, with its views consistent (issue 11)."""

from __future__ import annotations

from sqlalchemy import Engine, select

from projections.models import ModelsView
from projections.runtime import Projector, live_tables
from streams.archive import AUDIT, audit_log
from streams.campaigns.fuzz import campaign
from streams.components import views
from streams.config import Settings
from streams.decider import INT64_MAX
from streams.processor import Output
from streams.topics import DEAD_LETTERS

T0 = 1_700_000_000_000


def model_row(engine: Engine, model_id: str) -> dict:
    table = live_tables(ModelsView())["models"]
    with engine.connect() as conn:
        return dict(conn.execute(select(table).where(table.c.model_id == model_id)
                                 ).mappings().one())


def test_an_event_no_view_can_hold_is_dead_lettered_and_the_rest_applied(engine: Engine,
                                                                          log) -> None:
    """The issue's case: a usage count beyond 64 bits (what the decider now refuses, as an
    older log may still hold) stops neither the batch nor the projector."""
    records = [
        log.transitioned("m", "Cold", "Warming", T0),
        log.transitioned("m", "Warming", "Hot", T0 + 1),
        log.used("m", INT64_MAX - 10, T0 + 2),
        log.used("m", INT64_MAX, T0 + 3),      # the sum no BIGINT holds
        log.transitioned("m", "Hot", "Cooling", T0 + 4),
    ]
    sent: list[Output] = []
    projector = Projector(engine, views())
    result = projector.apply_batch(records, sent.extend)

    assert [(entry.record, view) for entry, view, _ in result.failed] == [
        (records[3], "models")]  # the pool view keeps no usage count: it applied them all
    row = model_row(engine, "m")  # the failing event's rows rolled back, the next one applied
    assert (row["usage_count"], row["state"]) == (INT64_MAX - 10, "Cooling")
    with engine.connect() as conn:
        assert conn.execute(select(audit_log.c.offset)).scalars().all() == [
            r.offset for r in records]  # archived as usual
    assert projector.positions()[AUDIT][(records[0].topic, records[0].partition)] == 4
    letter, = sent
    headers = dict(letter.headers)
    assert (letter.topic, letter.value) == (DEAD_LETTERS, records[3].value)
    assert headers["pit.processor"] == b"projector"
    assert headers["pit.source.offset"] == b"3" and headers["pit.error"]

    again = projector.apply_batch(records, sent.extend)  # redelivered: nothing happens twice
    assert (again.archived, again.failed, len(sent)) == (0, [], 1)


async def test_a_short_fuzz_campaign_stops_no_process_and_changes_nothing(tmp_path) -> None:
    """`pit campaign fuzz`, short: every bad input through the broker is rejected with a
    reason or dead-lettered, no task of the Pit stops, deciding the valid commands alone gives
    the logged events, the views equal their rebuild, and a restart over the registry's
    garbage reports it and verifies."""
    report = await campaign(Settings(data_dir=tmp_path / "pit"), 2000, seed=7,
                            progress=lambda _line: None)
    assert report.ok, "\n".join(report.lines())
    assert (report.inputs, report.stopped, report.projector_dead_letters) == (2000, [], 0)
    bad = report.inputs - report.valid - report.registry
    assert report.outcomes["dead-lettered"] + report.outcomes["rejected"] == bad
    assert report.outcomes["dead-lettered"] > 0 and report.outcomes["rejected"] > 0
    assert report.registry_dead_letters >= report.registry > 0
    assert report.categories["usage overflow"] > 0 and report.valid > 0
