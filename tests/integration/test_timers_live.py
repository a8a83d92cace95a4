"""Durable timers (streams/timers.py) through the embedded broker, with the pool processor as
the target: a timer's command is RecordModelUsage on a Hot model, so its effect is a
ModelUsageRecorded event caused by the timer id (the fired command's id), and an effect
counted twice would show as two of them.

Covered: a timer fires at (never before) its due time and a cancelled one never; a timer
scheduled before a restart of the whole Pit fires after it, once; 10,000 timers fire in
due order; a re-fire after a crash between the send and TimerFired is a duplicate with no
second effect; a decider asks for a timer with an event on its own topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from dataclasses import replace

from streams.app import Stack
from streams.client import PitClient
from streams.config import Settings
from streams.decider import Message
from streams.errors import BrokerUnavailableError
from streams.history import read_topic
from streams.kafka import ANY_PARTITION, keyed_producer, produce_all
from streams.pool.lifecycle import RecordModelUsage
from streams.pool.pool import POOL, ReportModelLoaded
from streams.pool.topics import POOL_COMMANDS, POOL_EVENTS
from streams.processor import Output, Processor, run_processor
from streams.timers import (
    TIMER_EVENTS,
    TimerCancelled,
    TimerScheduled,
    TimerService,
    schedule_timer,
    timer_output,
    wall_ms,
)
from streams.topics import RESULTS, TIMERS, TopicSpec
from streams.waiting import until

HOST = "timer-host"
MODEL = "ticker"


async def records(stack: Stack, topic: str) -> list[tuple[str, dict, int]]:
    """(Avro name, record, Kafka timestamp) of every record on `topic`, in log order per
    partition."""
    found = []
    for record in await read_topic(stack.settings, topic, stack.engine):
        if record.value is not None:
            decoded = stack.codec.decode(record.value)
            found.append((decoded.name, decoded.record, record.timestamp_ms))
    return found


async def fired(stack: Stack) -> Counter:
    """How many TimerFired each timer has."""
    return Counter(r["timer_id"] for name, r, _ in await records(stack, TIMERS)
                   if name == "pit.timer.TimerFired")


async def fired_has(stack: Stack, timer_id: str) -> bool:
    return timer_id in await fired(stack)


async def pending(service: TimerService, timer_id: str) -> bool:
    return timer_id in service.table.pending


async def effect_of(stack: Stack, timer_id: str) -> bool:
    return timer_id in await effects(stack)


async def effects_at_least(stack: Stack, count: int) -> bool:
    return len(await effects(stack)) >= count


async def effects(stack: Stack) -> dict[str, list[dict]]:
    """The ModelUsageRecorded events, by the command (timer) that caused them."""
    found: dict[str, list[dict]] = {}
    for name, record, _ in await records(stack, POOL_EVENTS):
        if name == "pit.pool.ModelUsageRecorded":
            found.setdefault(record["envelope"]["causation_id"], []).append(record)
    return found


async def sent(stack: Stack) -> list[tuple[str, int]]:
    """(command id, Kafka timestamp) of the pool's RecordModelUsage commands, in log order
    (all of them are on the pool's partition)."""
    return [(r["meta"]["command_id"], at) for name, r, at in await records(stack, POOL_COMMANDS)
            if name == RecordModelUsage.avro_name]


async def schedule(stack: Stack, *events: TimerScheduled | TimerCancelled) -> None:
    at = wall_ms()
    await produce_all(keyed_producer(stack.settings),
                      [timer_output(stack.codec, event, at) for event in events])


def tick(timer_id: str, due_at_ms: int) -> TimerScheduled:
    return schedule_timer(timer_id, due_at_ms, RecordModelUsage(MODEL, 1), POOL, owner="test")


async def hot_model(stack: Stack) -> None:
    async with PitClient(stack.settings, codec=stack.codec) as client:
        for outcome in [await client.pool.register_host(HOST, 1_000_000, 100),
                        await client.pool.register_model(MODEL, "python:m:f", 10, 10),
                        await client.pool.warm_model(MODEL),
                        await client.send(ReportModelLoaded(HOST, MODEL, 5, 10))]:
            assert outcome.accepted, outcome.reason


@contextlib.asynccontextmanager
async def running(service: TimerService):
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.ready.wait(), 30)
        yield service
    finally:
        stop.set()
        await task


def stack_on(tmp_path, **options) -> Stack:
    return Stack(Settings(data_dir=tmp_path), progress=False, without={"host-monitor"}, **options)


async def test_timers_fire_at_their_due_time_and_a_cancelled_one_never(tmp_path) -> None:
    async with stack_on(tmp_path) as stack:
        await hot_model(stack)
        now = wall_ms()
        due = {"early": now + 700, "cancelled": now + 1_000, "late": now + 1_300}
        nowhere = replace(tick("nowhere", now), target_topic="pit.nowhere.commands")
        await schedule(stack, *(tick(timer_id, at) for timer_id, at in due.items()),
                       TimerCancelled("cancelled", "not needed"), nowhere)
        await until(lambda: fired_has(stack, "late"), what="the late timer")
        await asyncio.sleep(0.3)  # room for a wrongly fired "cancelled" to show up

        assert await fired(stack) == {"nowhere": 1, "early": 1, "late": 1}
        [error] = [r["error"] for name, r, _ in await records(stack, TIMERS)
                   if r["timer_id"] == "nowhere" and name == "pit.timer.TimerFired"]
        assert error == "timer nowhere: unknown target topic pit.nowhere.commands"
        commands = dict(await sent(stack))
        assert set(commands) == {"early", "late"}
        await until(lambda: effects_at_least(stack, 2), what="both timers' effects")
        done = await effects(stack)
        assert set(done) == {"early", "late"}
        for timer_id in ("early", "late"):
            assert commands[timer_id] >= due[timer_id]  # sent at, never before, its due time
            [effect] = done[timer_id]
            assert effect["envelope"]["occurred_at"] >= due[timer_id]
        assert not stack.timer_service.table.pending


async def test_a_timer_fires_when_the_injected_clock_reaches_its_due_time(tmp_path) -> None:
    clock = [wall_ms()]  # moved by hand; starts at the wall clock, as the pool sees time
    due = clock[0] + 60_000
    async with stack_on(tmp_path, timers=False) as stack:
        await hot_model(stack)
        service = TimerService(stack.settings, stack.codec, stack.engine,
                               clock=lambda: clock[0], poll_ms=20)
        async with running(service):
            await schedule(stack, tick("minute", due))
            await until(lambda: pending(service, "minute"), what="the timer read")
            clock[0] = due - 1
            await asyncio.sleep(0.5)
            assert await fired(stack) == {} and await sent(stack) == []
            clock[0] = due
            await until(lambda: fired_has(stack, "minute"), what="the timer to fire")
            assert await sent(stack) == [("minute", due)]
            # the timer's command is decided after it was sent: wait for its event
            await until(lambda: effect_of(stack, "minute"), what="the timer's effect")
            assert [e["envelope"]["occurred_at"] for e in (await effects(stack))["minute"]] == [
                due]


async def test_a_timer_scheduled_before_a_restart_fires_after_it_once(tmp_path) -> None:
    async with stack_on(tmp_path) as stack:
        await hot_model(stack)
        now = wall_ms()
        await schedule(stack, tick("before", now + 300), tick("while-down", now + 2_500))
        await until(lambda: fired_has(stack, "before"), what="the first timer")
        assert "while-down" in stack.timer_service.table.pending
    await asyncio.sleep(max(0.0, (now + 2_600 - wall_ms()) / 1000))  # due while down

    restarted_at = wall_ms()
    async with stack_on(tmp_path) as stack:
        await until(lambda: fired_has(stack, "while-down"), what="the timer due while down")
        await asyncio.sleep(0.5)
        assert await fired(stack) == {"before": 1, "while-down": 1}
        await until(lambda: effects_at_least(stack, 2), what="both timers' effects")
        done = await effects(stack)
        assert {timer_id: len(events) for timer_id, events in done.items()} == {
            "before": 1, "while-down": 1}
        assert done["while-down"][0]["envelope"]["occurred_at"] >= restarted_at  # late


async def test_ten_thousand_timers_fire_in_due_order(tmp_path) -> None:
    count = 10_000
    async with stack_on(tmp_path, projector_process=True) as stack:  # as `pit up` runs it
        await hot_model(stack)
        start = wall_ms() + 5_000  # every timer scheduled before the first is due
        due = {f"bulk/{i:05d}": start + random.Random(i).randrange(2_000) for i in range(count)}
        ids = list(due)
        random.Random(7).shuffle(ids)  # scheduled in no particular order
        await schedule(stack, *(tick(timer_id, due[timer_id]) for timer_id in ids))

        async def all_fired() -> bool:
            return sum((await fired(stack)).values()) >= count

        await until(all_fired, timeout_s=40, what="10,000 timers")
        commands = await sent(stack)
        assert [timer_id for timer_id, _ in commands] == sorted(due, key=lambda i: (due[i], i))
        assert all(at >= due[timer_id] for timer_id, at in commands)
        await until(lambda: effects_at_least(stack, count), what="10,000 effects")
        assert all(len(events) == 1 for events in (await effects(stack)).values())


class CrashBeforeRecording(TimerService):
    """Crashes once after the commands were acknowledged and before TimerFired is written,
    then starts over from the log as after a real Kafka failure."""

    crashes = 0

    async def _record_fired(self, producer, fired: list[Output]) -> None:
        if not self.crashes:
            self.crashes += 1
            raise BrokerUnavailableError("crashed between the send and TimerFired")
        await super()._record_fired(producer, fired)


async def test_a_refire_after_a_crash_before_timer_fired_has_no_second_effect(
        tmp_path) -> None:
    async with stack_on(tmp_path, timers=False) as stack:
        await hot_model(stack)
        service = CrashBeforeRecording(stack.settings, stack.codec, stack.engine,
                                       retry_s=0.1)
        async with running(service):
            await schedule(stack, tick("crashy", wall_ms()))
            await until(lambda: fired_has(stack, "crashy"), what="the timer to fire")
        assert service.crashes == 1
        assert [timer_id for timer_id, _ in await sent(stack)] == ["crashy", "crashy"]

        async def answers() -> list[bool]:
            found = [r["duplicate"] for name, r, _ in await records(stack, RESULTS)
                     if r["command_id"] == "crashy"]
            return found if len(found) == 2 else []

        assert await until(answers, what="both answers") == [False, True]
        assert len((await effects(stack))["crashy"]) == 1
        assert await fired(stack) == {"crashy": 1}


def alarm(delay_ms: int):
    """A decider on its own topics that answers RecordModelUsage by asking for it to reach
    the pool `delay_ms` later, numbering its timers in its state."""
    def decide(count: int, command: Message, now_ms: int) -> list[Message]:
        return [schedule_timer(f"alarm/{count}", now_ms + delay_ms, command, POOL, "alarm")]

    def evolve(count: int, event: Message, _at_ms: int) -> int:
        return count + isinstance(event, TimerScheduled)

    return replace(POOL, name="alarm", command_topic="test.alarm.commands",
                   event_topic="test.alarm.events", events=TIMER_EVENTS,
                   initial_state=lambda _key: 0, decide=decide, evolve=evolve)


async def test_a_decider_asks_for_a_timer_with_an_event_on_its_own_topic(tmp_path) -> None:
    decider = alarm(800)
    async with stack_on(tmp_path, timers=False) as stack:
        for topic in (decider.command_topic, decider.event_topic):
            stack.broker.create_topic(TopicSpec(topic, 2, "pool_id"))
        await hot_model(stack)
        stop, ready = asyncio.Event(), asyncio.Event()
        processing = asyncio.create_task(run_processor(Processor(decider, stack.codec),
                                                       stack.settings, stack.engine, stop,
                                                       ready))
        try:
            service = TimerService(stack.settings, stack.codec, stack.engine,
                                   topics=[TIMERS, decider.event_topic])
            async with running(service):
                await asyncio.wait_for(ready.wait(), 30)
                client = PitClient(stack.settings, codec=stack.codec)
                asked_at = wall_ms()
                value = client.encode_command(RecordModelUsage(MODEL, 4), "ask-1", "run-1")
                await produce_all(keyed_producer(stack.settings), [
                    Output(decider.command_topic, ANY_PARTITION, b"default", value,
                           asked_at)])
                await until(lambda: fired_has(stack, "alarm/0"), what="the alarm")
                # the pool's processor decides the fired command a moment later
                await until(lambda: effect_of(stack, "alarm/0"), what="the alarm's effect")
        finally:
            stop.set()
            await processing
        [effect] = (await effects(stack))["alarm/0"]
        assert effect["invocations"] == 4
        assert effect["envelope"]["occurred_at"] >= asked_at + 800
        assert effect["envelope"]["correlation_id"] == "run-1"  # carried through the timer
