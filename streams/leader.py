"""Leader election: the services that must run once per cluster (the task dispatcher, the
timer service, the prewarmer, the host monitor) run on one elected `pit up` and move to
another when it dies.

How: every `pit up` joins the consumer group `pit.leader` on the one-partition topic
`_pit.leader`; the member assigned partition 0 leads. Why a consumer group and not a lease
row in the SQL database: it works wherever the rest of the Pit works - the embedded broker
and any real cluster - with nothing more to run or configure, and also for instances that
share no database; membership and failure detection (the session timeout) are Kafka's,
tested at scale, where a lease would need its own expiry clock. The services write to Kafka, not
to the database, so a database lease would fence nothing more.

* Sticky: `LeaderAssignor` gives partition 0 to the member that already leads (its claim,
  the term it was elected in, travels in its join metadata; the highest term wins), else to
  the lowest member id. A `pit up` joining or leaving never moves leadership by itself.
* Term: on election the leader commits `term = last committed + 1` as the group's offset of
  partition 0. Kafka accepts a commit only from a member of the current generation, so each
  term is taken by one member, and terms only grow (`Leadership.term`, logged).
* Renewal and self-fencing: the leader commits its term again every heartbeat interval. A
  commit refused because the group moved on (unknown member, old generation) deposes it at
  once; no successful commit for half a session timeout deposes it too - before the broker
  can have expired it and elected another, so a leader cut off from the broker stops its
  services before a successor starts them.
* Deposed or stopping: the services stop (`stop` set, then awaited; cancelled after
  `drain_s`) before the member leaves the group, so a graceful handover never overlaps.
* Fail-over after a crash (`kill -9`): the broker notices when the session expires; the
  next member leads one rebalance later and starts the services, which rebuild their state
  from the log as they do on every start (`streams.follower`): what the dead leader wrote is
  in the log, and what it did not write is redone. Fail-over time is about the session
  timeout plus a heartbeat interval plus that rebuild (README, "Scale-out and fail-over").
* What is not fenced: a leader frozen (not dead) past its session may, once it runs again,
  write before it notices it was deposed. Kafka offers no write fence without transactions
  (which the embedded broker cannot do); such a late write is a repeat the others absorb -
  a timer's command carries the timer id as its command id, a host reported down twice is
  down once - except a task relayed twice, which a runner would run again.

`PIT_LEADER_SESSION_TIMEOUT_MS` sets the session timeout (default 6000: a real broker's
`group.min.session.timeout.ms`); the heartbeat interval is a third of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    UnknownMemberIdError,
)

from streams.component import Service
from streams.config import Settings, parse_count
from streams.errors import BrokerUnavailableError
from streams.kafka import start_consumer, stop_consumer

if TYPE_CHECKING:
    from aiokafka.cluster import ClusterMetadata

log = logging.getLogger(__name__)

LEADER_TOPIC = "_pit.leader"
GROUP = "pit.leader"
SESSION_TIMEOUT_MS = 6_000
POLL_MS = 100  # how often the election looks at the group (and at `stop`)


def leader_session_ms(settings: Settings) -> int:
    text = settings.env.get("PIT_LEADER_SESSION_TIMEOUT_MS", "")
    return parse_count("PIT_LEADER_SESSION_TIMEOUT_MS", text) if text else SESSION_TIMEOUT_MS


# --- the assignment (pure) --------------------------------------------------------------------

def choose_leader(claims: Mapping[str, int]) -> str:
    """The member to lead, from each member's claim (the term it leads in; 0: none): the
    highest claim, ties and no claims going to the lowest member id."""
    return min(claims, key=lambda member: (-claims[member], member))


class LeaderAssignor(AbstractPartitionAssignor):
    """Partition 0 of `_pit.leader` to `choose_leader` of the members' claims."""

    name = "pit-leader"
    version = 0

    def __init__(self) -> None:
        self.claim = 0  # the term this member leads in, told to the group when it rejoins

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics),
                                              self.claim.to_bytes(8, "big"))

    def assign(self, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
               ) -> dict[str, ConsumerProtocolMemberAssignment]:
        leader = choose_leader({member: int.from_bytes(meta.user_data or b"", "big")
                                for member, meta in members.items()})
        return {member: ConsumerProtocolMemberAssignment(
                    self.version, [(LEADER_TOPIC, [0])] if member == leader else [], b"")
                for member in members}

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        pass


# --- the election -----------------------------------------------------------------------------

class LeaderGate:
    """A `pit up` service that runs `make()`'s services while this instance leads.

    `make` is called at the start of every term: a term's services are fresh objects, each
    rebuilt from the log. They are also put in `services` (the Stack's, by name) while they
    run. A service failing ends the gate with its error, as it would end `pit up`."""

    def __init__(self, settings: Settings, make: Callable[[], Mapping[str, Service]], *,
                 services: MutableMapping[str, Service] | None = None,
                 session_timeout_ms: int | None = None, drain_s: float = 30.0,
                 group: str = GROUP, say: Callable[[str], None] | None = None) -> None:
        self.settings, self.make, self.group = settings, make, group
        self.say = say or log.info  # where leadership changes are told
        self.services: MutableMapping[str, Service] = {} if services is None else services
        self.session_ms = (leader_session_ms(settings) if session_timeout_ms is None
                           else session_timeout_ms)
        self.heartbeat_s = self.session_ms / 3000
        self.drain_s = drain_s
        self.term = 0  # the term led now; 0: not leading
        self.terms = 0  # how many terms this instance has led
        self.decided = asyncio.Event()  # the first election's outcome is known
        self.leading = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None
        self._assignor = LeaderAssignor()
        self._assigned: bool | None = None  # partition 0 held, as the last rebalance said
        self._running: dict[str, asyncio.Task] = {}
        self._term_stop = asyncio.Event()
        self._pending: tuple[int, asyncio.Future] | None = None  # a commit still unanswered

    async def run(self, stop: asyncio.Event) -> None:
        tp = TopicPartition(LEADER_TOPIC, 0)
        gate = self

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: AbstractSet[TopicPartition]) -> None:
                pass  # sticky: this member keeps leading unless the assignment says otherwise

            async def on_partitions_assigned(self, assigned: AbstractSet[TopicPartition]
                                             ) -> None:
                gate._assigned = tp in assigned

        while not stop.is_set():
            try:
                consumer = await start_consumer(
                    self.settings, group_id=self.group, auto_offset_reset="latest",
                    session_timeout_ms=self.session_ms,
                    heartbeat_interval_ms=int(self.heartbeat_s * 1000),
                    partition_assignment_strategy=(self._assignor,))
            except BrokerUnavailableError as exc:
                log.warning("leader election: %s; trying again", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.heartbeat_s)
                continue
            self.consumer = consumer
            consumer.subscribe([LEADER_TOPIC], listener=Listener())
            try:
                await self._elect(consumer, tp, stop)
            except (KafkaError, BrokerUnavailableError) as exc:
                log.warning("leader election: %s; joining again", exc)
            finally:
                await self._depose("stopping" if stop.is_set() else "the election failed")
                self._assigned = None
                await stop_consumer(consumer)  # leaves the group: the next member leads at once
                if self._pending is not None:  # failed with the consumer: nothing to learn
                    await asyncio.gather(self._pending[1], return_exceptions=True)
                    self._pending = None

    async def _elect(self, consumer: AIOKafkaConsumer, tp: TopicPartition,
                     stop: asyncio.Event) -> None:
        last_ok = renew_at = time.monotonic()
        while not stop.is_set():
            if tp in consumer.assignment():
                consumer.pause(tp)  # never read: its committed offset is the term
            # Also keeps the member active (aiokafka leaves the group of an idle consumer).
            await consumer.getmany(timeout_ms=POLL_MS)
            self._check_services()
            if self._assigned is None:
                continue  # not through the first rebalance yet
            if not self._assigned:
                await self._depose("another member was elected")
                self.decided.set()
                continue
            if not self.term:
                term = (await consumer.committed(tp) or 0) + 1
                if await self._commit(consumer, tp, term):
                    last_ok = renew_at = time.monotonic()
                    await self._elected(term)
                self.decided.set()
                continue
            if time.monotonic() < renew_at + self.heartbeat_s:
                continue
            renew_at = time.monotonic()
            renewed = await self._commit(consumer, tp, self.term)
            if renewed:
                last_ok = time.monotonic()
            elif renewed is None or time.monotonic() - last_ok > self.session_ms / 2000:
                await self._depose("its term could not be renewed")

    async def _commit(self, consumer: AIOKafkaConsumer, tp: TopicPartition,
                      term: int) -> bool | None:
        """Commit `term` for the group: True if accepted, None if the group has moved on
        without this member, False if unknown (no answer in time, a rebalance going on). A
        commit not answered in time is left to finish (cancelling it would leave aiokafka's
        own request task unanswered), and waited for again next time."""
        if self._pending is None:
            self._pending = (term, asyncio.ensure_future(consumer.commit({tp: term})))
        pending_term, pending = self._pending
        done, _ = await asyncio.wait({pending}, timeout=self.heartbeat_s)
        if not done:
            return False
        self._pending = None
        try:
            pending.result()
        except CommitFailedError as exc:
            gone = isinstance(exc.__cause__, UnknownMemberIdError | IllegalGenerationError)
            return None if gone else False
        except KafkaError:
            return False
        return pending_term == term or False

    async def _elected(self, term: int) -> None:
        self.term, self._assignor.claim = term, term
        self.terms += 1
        self._term_stop = asyncio.Event()
        made = self.make()
        self.say(f"leader: this process leads (term {term}): {', '.join(made) or 'nothing'}")
        for name, service in made.items():
            self.services[name] = service
            self._running[name] = asyncio.create_task(service.run(self._term_stop), name=name)
        self.leading.set()

    async def _depose(self, why: str) -> None:
        """Stop this term's services (gracefully, up to `drain_s`)."""
        if not self.term:
            return
        self.say(f"leader: term {self.term} ends ({why}): stopping "
                 f"{', '.join(self._running) or 'nothing'}")
        self.leading.clear()
        self.term, self._assignor.claim = 0, 0
        self._term_stop.set()
        running, self._running = self._running, {}
        if running:
            _, late = await asyncio.wait(running.values(), timeout=self.drain_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)
        for name in running:
            self.services.pop(name, None)

    def _check_services(self) -> None:
        """A service that failed ends the gate with its error (as it would end `pit up`)."""
        for task in self._running.values():
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
