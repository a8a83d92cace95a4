"""The prewarmer (issue 3, seed M3.1.4): the prewarm engine run on the pool's event log.

`pit up` runs it next to the processors. On start it reads the whole history of
pit.pool.events (the audit archive, then Kafka: `streams.follower`), so the predictors relearn
everything the log shows and its statistics are recounted from it; then it follows the log.
It holds no state the log does not give back. Its decisions are WarmModel commands, sent like
any client's, with the engine's probabilities for the warm models: the pool records them
(eviction ranks idle models by them) and places the model where there is room, or
displaces the least likely idle model when the prewarm's probability beats that model's,
or declines (the log says why: PredictionsRecorded).

`PoolPrewarmer` is the pure part, one per pool: pool events in log order in, decisions out.
What it learns from, by event:
* AllocationQueued (a request that found its model not Hot: a miss) and ModelAllocated with
  `cache_hit` (a hit): a request, at its own time, with its workflow run. A ModelAllocated
  without `cache_hit` completes a queued request, already counted. ModelUsageRecorded: use
  of a Hot model.
* ModelTransitioned (and ModelPlaced, HostDown): which models are Cold and unplaced, the
  only ones it prewarms.
* ModelEvicted, UnloadRequested, ModelUnloaded: a prewarmed model that leaves before its
  request was a wrong prediction.
* ModelPlaced with reason PredictivePrewarm: a decision was acted on. One that is not within
  `confirm_ms` (rejected, or never sent) counts as a prediction, not a prewarm.

Time is the events' `occurred_at`, and ticks: the engine decides after every request (a
workflow's next step is due now) and at every multiple of `tick_ms` (of `idle_tick_ms` once
no request came for a horizon). Between requests only the time-of-day and periodic
predictors raise their answers, minutes ahead, so 5 s ticks lose nothing against 1 s ones and
replay history about 3.5 times faster (measured on a day of the seeded trace: 5,000 against
1,450 requests/s), and a quiet stretch replays in a few steps. The service adds the wall
clock once the history is read. Decisions remade while replaying history are not sent again:
they were sent (or not) back then, and the log says what came of them.

Lookahead (issue 4): the service also reads pit.dag.events, history then live, into a
`LookaheadPredictor` (streams/pool/lookahead.py) that names the models of instrument nodes
about to become ready; `PoolPrewarmer.lookahead` turns those of registered, Cold, unplaced
models into decisions for the pool the runners allocate from, sent the same way (once caught
up; the history only rebuilds the executions). Only executions with instrument nodes are
decoded past their start: the others' records are passed over by key and record name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import Engine

from schemas.codec import Codec
from streams import metrics
from streams.commands import CommandClient
from streams.config import Settings
from streams.dag.definition_store import definition_store
from streams.dag.execution import DAG, CheckpointTaken, Definitions, ExecutionStarted
from streams.dag.topics import DAG_EVENTS
from streams.decider import Message, from_record
from streams.errors import PitError, SchemaError
from streams.follower import Follower
from streams.history import HistoryError
from streams.kafka import keep_running
from streams.log import LogRecord
from streams.pool.lifecycle import (
    DEFAULT_POOL,
    ModelState,
    ModelTransitioned,
    ModelUsageRecorded,
)
from streams.pool.lifecycle import TransitionReason as R
from streams.pool.lookahead import Lookahead, LookaheadPredictor
from streams.pool.pool import (
    POOL,
    AllocationQueued,
    HostDown,
    ModelAllocated,
    ModelEvicted,
    ModelPlaced,
    ModelRegistered,
    ModelUnloaded,
    UnloadRequested,
    WarmModel,
)
from streams.pool.prewarm import PrewarmEngine, PrewarmStats
from streams.pool.topics import POOL_EVENTS
from streams.timers import TIMER_EVENTS

log = logging.getLogger(__name__)

_NODE_EVENTS = frozenset(cls.avro_name for cls in DAG.events) - {
    cls.avro_name for cls in TIMER_EVENTS}
_STARTS = frozenset({ExecutionStarted.avro_name, CheckpointTaken.avro_name})


@dataclass(frozen=True)
class Decision:
    """Prewarm `model_id` in `pool_id`: decided at `at_ms` (event time)."""
    pool_id: str
    model_id: str
    probability: float
    reason: str          # the predictor that contributed most
    at_ms: int
    # the engine's probabilities for the warm models: what the pool weighs a displacement
    # and ranks evictions by (empty: the pool never displaces for it)
    scores: dict[str, float] = field(default_factory=dict)


class PoolPrewarmer:
    """One pool's prewarming, pure: `apply` its events in log order, `advance` its clock."""

    def __init__(self, pool_id: str, engine: PrewarmEngine | None = None, *,
                 tick_ms: int = 5_000, idle_tick_ms: int = 60_000,
                 confirm_ms: int = 30_000) -> None:
        self.pool_id = pool_id
        self.engine = engine if engine is not None else PrewarmEngine()
        self.tick_ms, self.idle_tick_ms, self.confirm_ms = tick_ms, idle_tick_ms, confirm_ms
        self.now_ms: int | None = None
        self.warm: set[str] = set()      # not Cold, or placed and waiting: never prewarmed
        self.known: set[str] = set()     # registered: a WarmModel for another is rejected
        self._placed: set[str] = set()   # Cold but placed on a host, its load on the way
        self._not_cold: set[str] = set()  # by its last transition
        self._unconfirmed: dict[str, int] = {}  # model -> decided at, until ModelPlaced
        self._next_tick: int | None = None
        self._last_request_ms = 0

    def _step(self, at_ms: int) -> int:
        idle = at_ms - self._last_request_ms >= self.engine.horizon_ms
        return self.idle_tick_ms if idle else self.tick_ms

    def advance(self, now_ms: int) -> list[Decision]:
        """Move the clock to `now_ms` (never back), deciding at every tick on the way."""
        if self.now_ms is None:
            self.now_ms = now_ms
            self._next_tick = (now_ms // self.tick_ms + 1) * self.tick_ms
            return []
        decisions: list[Decision] = []
        assert self._next_tick is not None  # set with now_ms, above
        while self._next_tick <= now_ms:
            tick = self._next_tick
            decisions += self._decide(tick)
            step = self._step(tick)
            self._next_tick = (tick // step + 1) * step
        self.now_ms = max(self.now_ms, now_ms)
        return decisions

    def apply(self, event: Message, at_ms: int) -> list[Decision]:
        """Fold one pool event at its `occurred_at`; decisions due by then, and after it."""
        decisions = self.advance(at_ms)
        at = self.now_ms
        assert at is not None  # advance set the clock
        match event:
            case ModelRegistered(model_id=m):
                self.known.add(m)
            case AllocationQueued(model_id=m, workflow_id=run):
                return decisions + self._request(m, at, run, ready=False)
            case ModelAllocated(model_id=m, workflow_id=run, cache_hit=True):
                return decisions + self._request(m, at, run, ready=True)
            case ModelUsageRecorded(model_id=m):
                return decisions + self._request(m, at, "", ready=True)
            case ModelTransitioned(model_id=m, to_state=state):
                self._placed.discard(m)  # placed models leave Cold by loading (or fail)
                if state is ModelState.COLD:
                    self._not_cold.discard(m)
                else:
                    self._not_cold.add(m)
                self._reclassify(m)
            case ModelPlaced(model_id=m, reason=reason):
                self._placed.add(m)
                self._reclassify(m)
                if reason is R.PREDICTIVE_PREWARM:
                    self._unconfirmed.pop(m, None)
            case HostDown(models=models):
                for m in models:
                    self._placed.discard(m)
                    self._reclassify(m)
            case ModelEvicted(model_id=m) | UnloadRequested(model_id=m) | ModelUnloaded(
                    model_id=m):
                self.engine.evicted(m, at)
        return decisions

    def lookahead(self, hints: Iterable[Lookahead], at_ms: int) -> list[Decision]:
        """Decisions for the models a workflow is about to call (streams/pool/lookahead.py):
        registered, Cold and unplaced, with no decision already on the way. The engine
        neither made nor scores them; a placement confirms them like its own."""
        decisions = []
        for hint in hints:
            m = hint.model_id
            if m in self.known and m not in self.warm and m not in self._unconfirmed:
                self._unconfirmed[m] = at_ms
                decisions.append(Decision(self.pool_id, m, hint.probability, hint.reason,
                                          at_ms))
        return decisions

    def _reclassify(self, model_id: str) -> None:
        if model_id in self._not_cold or model_id in self._placed:
            self.warm.add(model_id)
        else:
            self.warm.discard(model_id)

    def _request(self, model_id: str, at_ms: int, workflow_id: str, *,
                 ready: bool) -> list[Decision]:
        if self._unconfirmed.pop(model_id, None) is not None:
            self.engine.skipped(model_id)  # requested before any prewarm load started
        self._last_request_ms = at_ms
        if self._next_tick is not None and self._next_tick - at_ms > self.tick_ms:
            self._next_tick = (at_ms // self.tick_ms + 1) * self.tick_ms  # busy again
        self.engine.observe(model_id, at_ms, workflow_id or None, ready=ready)
        return self._decide(at_ms)

    def _decide(self, at_ms: int) -> list[Decision]:
        for model_id, decided in list(self._unconfirmed.items()):
            if at_ms - decided > self.confirm_ms:
                del self._unconfirmed[model_id]
                self.engine.skipped(model_id)
        made = self.engine.decide(at_ms, self.warm)
        if not made:
            return []
        for decision in made:
            self._unconfirmed[decision.model_id] = at_ms
        scores = {m: round(p, 4) for m, p in self.engine.probabilities(at_ms).items()
                  if m in self.warm}
        return [Decision(self.pool_id, d.model_id, d.probability, d.reason, at_ms, scores)
                for d in made]

    def stats(self) -> PrewarmStats:
        return self.engine.stats()


def stats_dict(stats: list[PrewarmStats]) -> dict[str, float]:
    """The engines' statistics summed over pools; accuracy is correct over made."""
    made = sum(s.predictions_made for s in stats)
    correct = sum(s.correct_predictions for s in stats)
    return {
        "predictions_made": made,
        "correct_predictions": correct,
        "wrong_predictions": sum(s.wrong_predictions for s in stats),
        "pending": sum(s.pending for s in stats),
        "models_prewarmed": sum(s.models_prewarmed for s in stats),
        "cold_starts_avoided": sum(s.cold_starts_avoided for s in stats),
        "accuracy": correct / made if made else 0.0,
    }


# --- the service ------------------------------------------------------------------------------

class Prewarmer:
    """Runs a `PoolPrewarmer` per pool on the log and sends their fresh decisions."""

    def __init__(self, settings: Settings, codec: Codec, db: Engine | None = None, *,
                 make_engine: Callable[[], PrewarmEngine] = PrewarmEngine,
                 lookahead: bool = True, definitions: Definitions | None = None,
                 poll_ms: int = 200, stale_ms: int = 10_000, retry_s: float = 1.0,
                 send_timeout_s: float = 10.0) -> None:
        self.settings, self.codec, self.db = settings, codec, db
        self.make_engine = make_engine
        self.poll_ms, self.stale_ms, self.retry_s = poll_ms, stale_ms, retry_s
        self.send_timeout_s = send_timeout_s
        self.pools: dict[str, PoolPrewarmer] = {}
        self.with_lookahead = lookahead
        self.definitions = definitions or Definitions(definition_store(settings))
        self.lookahead = LookaheadPredictor(self.definitions)
        self.caught_up = asyncio.Event()  # set once the history is read
        self._sends: set[asyncio.Task] = set()
        self._exported: dict[str, float] = {}

    @property
    def topics(self) -> list[str]:
        return [POOL_EVENTS, DAG_EVENTS] if self.with_lookahead else [POOL_EVENTS]

    def stats(self) -> dict[str, float]:
        return stats_dict([pool.stats() for pool in self.pools.values()])

    def fold(self, value: bytes | None) -> list[Decision]:
        """One pit.pool.events record into its pool's prewarmer."""
        if value is None:
            return []  # a tombstone: a restored placeholder
        try:
            decoded = self.codec.decode(value)
        except SchemaError:
            return []  # the pool never writes one; nothing to learn from it
        event_type = POOL.event_type(decoded.name)
        if event_type is None:
            return []
        envelope = decoded.record["envelope"]
        event = from_record(event_type, decoded.record)
        return self._pool(envelope["entity_key"]).apply(event, envelope["occurred_at"])

    def _pool(self, pool_id: str) -> PoolPrewarmer:
        pool = self.pools.get(pool_id)
        if pool is None:
            pool = self.pools[pool_id] = PoolPrewarmer(pool_id, self.make_engine())
        return pool

    def fold_dag(self, key: bytes | None, value: bytes | None, *,
                 live: bool = True) -> list[Decision]:
        """One pit.dag.events record into the lookahead predictor; while replaying history
        (`live` false) it only rebuilds the executions."""
        if not value:
            return []
        try:
            name = self.codec.name_of(value)
            execution_id = None if key is None else key.decode()
            if execution_id is not None and self.lookahead.passes(execution_id):
                return []  # nothing of it to warm, not even a checkpoint to decode
            followed = execution_id is None or self.lookahead.wants(execution_id)
            if name not in _STARTS and not (followed and name in _NODE_EVENTS):
                return []
            decoded = self.codec.decode(value)
        except (SchemaError, KeyError, UnicodeDecodeError):
            return []  # not a record the decider writes; nothing to learn from it
        at_ms = decoded.record["envelope"]["occurred_at"]
        event_type = DAG.event_type(name)
        assert event_type is not None  # one of DAG.events, by the names let through above
        event = from_record(event_type, decoded.record)
        try:
            hints = self.lookahead.apply(event, at_ms)
        except Exception:  # a predictor bug must not stop prewarming: drop that execution
            execution_id = event.entity_key  # every event let through is keyed by execution
            log.exception("lookahead failed on %s of %s", name, execution_id)
            self.lookahead.runs.pop(execution_id, None)
            return []
        if not live or not hints:
            return []
        return self._pool(DEFAULT_POOL).lookahead(hints, at_ms)  # where runners allocate

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: read the history, then follow the log. When Kafka fails under it,
        it forgets everything and starts over from the log, as the processors do."""
        def forget() -> None:
            self.pools.clear()
            self.lookahead = LookaheadPredictor(self.definitions)
            self.caught_up.clear()

        await keep_running("prewarmer", lambda: self._run(stop), stop, self.retry_s,
                           retry_on=(HistoryError,), on_restart=forget)

    def _fold_record(self, record: LogRecord, *, live: bool) -> list[Decision]:
        if record.topic == DAG_EVENTS:
            return self.fold_dag(record.key, record.value, live=live)
        return self.fold(record.value)  # history's decisions were sent (or not) back then

    async def _run(self, stop: asyncio.Event) -> None:
        follower = Follower(self.settings, self.topics, self.db, fetch_max_wait_ms=50)
        await follower.restore(lambda record: self._fold_record(record, live=False), stop)
        if stop.is_set():
            return
        self._export()
        client = CommandClient(self.settings, "prewarmer", self.codec, deciders=(POOL,))
        try:
            await follower.start()
            await client.start()
            self.caught_up.set()
            log.info("prewarmer caught up with the log: %s", self.stats())
            async for records in follower.batches(stop, wait_ms=self.poll_ms):
                decisions = [decision for record in records
                             for decision in self._fold_record(record, live=True)]
                now_ms = int(time.time() * 1000)
                for pool in list(self.pools.values()):
                    decisions += pool.advance(now_ms)
                for decision in decisions:
                    if decision.at_ms >= now_ms - self.stale_ms:
                        self._send(client, decision)
                self._export()
        finally:
            for task in list(self._sends):
                task.cancel()
            await asyncio.gather(*self._sends, return_exceptions=True)
            await client.close()
            await follower.stop()

    def _send(self, client: CommandClient, decision: Decision) -> None:
        task = asyncio.create_task(self._warm(client, decision))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _warm(self, client: CommandClient, decision: Decision) -> None:
        command = WarmModel(decision.model_id, decision.probability, decision.reason,
                            decision.pool_id, decision.scores)
        try:
            outcome = await client.send(command, timeout=self.send_timeout_s)
        except PitError as exc:
            log.warning("prewarm of %s not sent: %s", decision.model_id, exc)
            return
        # A rejection is normal (nowhere to place it); a declined displacement is accepted
        # with its reason in PredictionsRecorded. The log shows every outcome.
        log.debug("prewarm %s (p=%.2f, %s): %s", decision.model_id, decision.probability,
                  decision.reason, "accepted" if outcome.accepted else outcome.reason)

    def _export(self) -> None:
        """The statistics to Prometheus. Counters only grow: after starting over from the
        log they resume once the recount passes what was exported."""
        stats = self.stats()
        metrics.PREWARM_ACCURACY.set(stats["accuracy"])
        for name, counter in metrics.PREWARM_COUNTERS.items():
            grown = stats[name] - self._exported.get(name, 0)
            if grown > 0:
                counter.inc(grown)
                self._exported[name] = stats[name]
