"""Prometheus metrics of the runtime (`pit_` prefix, units in names), served on /metrics.

The metrics the projector's observers feed live in a registry of their own, `PROJECTED`: the
projector may run in a process of its own (streams/projector.py), and then `pit up` shows that
process's figures for them, never its own untouched copies. `PROJECTED_SOURCE`, a collector
in the default registry, yields them from wherever they are (`attach`), so /metrics, the
console and `REGISTRY.get_sample_value` read one set either way.
"""

from collections.abc import Callable, Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

PROJECTED = CollectorRegistry(auto_describe=True)


class ProjectedSource:
    """The projector-fed metrics as the default registry shows them: this process's
    `PROJECTED` unless another source is attached (a projector process's scrape)."""

    def __init__(self) -> None:
        self._source: Callable[[], Iterable[Metric]] = PROJECTED.collect

    def attach(self, source: Callable[[], Iterable[Metric]] | None) -> None:
        """Yield `source`'s metrics from now on; None: this process's own again."""
        self._source = source or PROJECTED.collect

    def describe(self) -> list[Metric]:
        return []  # names vary with the source: no clash check at registration

    def collect(self) -> Iterable[Metric]:
        return self._source()


PROJECTED_SOURCE = ProjectedSource()
REGISTRY.register(PROJECTED_SOURCE)

EVENTS_IN = Counter("pit_events_in_total", "Records consumed", ["component", "topic"])
EVENTS_OUT = Counter("pit_events_out_total", "Records produced", ["component", "topic"])
COMMANDS = Counter("pit_commands_total", "Commands decided, by outcome", ["component", "status"])
DEAD_LETTERS = Counter("pit_dead_letters_total", "Records sent to the dead-letter topic",
                       ["component", "error"])
PROCESSING_SECONDS = Histogram(
    "pit_processing_seconds", "Time to decide one command, in the batch that carried it",
    ["component"],
    buckets=(0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1),
)
CONSUMER_LAG = Gauge("pit_consumer_lag_records", "Records between position and high watermark",
                     ["group", "topic", "partition"])
RESTORE_ORPHANS = Counter("pit_restore_orphans_total",
                          "Derived records a restore left out: their source was not durable",
                          ["topic"])
ARCHIVE_WAITS = Counter("pit_processor_archive_waits_total",
                        "Times a processor waited for the archive before writing more events"
                        " than the embedded broker may keep unarchived", ["component"])
ARCHIVE_WAIT_SECONDS = Counter("pit_processor_archive_wait_seconds_total",
                               "Time processors spent waiting for the archive", ["component"])
BROKER_DROPPED_UNARCHIVED = Counter("pit_broker_dropped_unarchived_total",
                                    "Records the embedded broker dropped from its ~5 MiB"
                                    " window of a partition before the archive held them",
                                    ["topic"])
PROCESSOR_RESTARTS = Counter("pit_processor_restarts_total",
                             "Times a processor started over from the log after a Kafka failure",
                             ["component"])
AUDIT_VERIFICATIONS = Counter("pit_audit_verifications_total",
                              "Audit-chain verifications through GET /audit/verify, by result"
                              " (ok, broken)", ["result"])

# --- the pool (issue 3) ----------------------------------------------------------------------
# Updated from the pool's events as the projector archives them (projections.pool_metrics),
# the prewarm ones by the prewarmer service (streams.pool.prewarmer).
_LOAD_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                 60.0, 120.0)
POOL_ALLOCATION_SECONDS = Histogram(
    "pit_pool_allocation_seconds",
    "Allocation latency: AllocationQueued to ModelAllocated for a miss, 0 for a cache hit",
    ["cache_hit"], buckets=(0.0, *_LOAD_BUCKETS), registry=PROJECTED)
POOL_LOAD_SECONDS = Histogram("pit_pool_load_seconds",
                              "Model load time measured by the host (ModelLoaded.load_ms)",
                              buckets=_LOAD_BUCKETS, registry=PROJECTED)
POOL_CACHE_HITS = Counter("pit_pool_cache_hits_total", "Allocations of a Hot model",
                          registry=PROJECTED)
POOL_CACHE_MISSES = Counter("pit_pool_cache_misses_total",
                            "Allocations that had to wait for a load (AllocationQueued)",
                            registry=PROJECTED)
POOL_EVICTIONS = Counter("pit_pool_evictions_total", "Idle Hot models evicted for room",
                         registry=PROJECTED)
POOL_TRANSITIONS = Counter("pit_pool_transitions_total", "Model lifecycle transitions",
                           ["from", "to", "reason"], registry=PROJECTED)
POOL_HOST_MEMORY_MB = Gauge("pit_pool_host_memory_mb",
                            "Memory resident on a host: its loading, loaded and unloading models",
                            ["pool", "host"], registry=PROJECTED)
POOL_HOST_BUDGET_MB = Gauge("pit_pool_host_memory_budget_mb", "A host's memory budget",
                            ["pool", "host"], registry=PROJECTED)
PREWARM_ACCURACY = Gauge("pit_pool_prewarm_accuracy",
                         "Share of prewarm predictions that came true (0..1)")
PREWARM_PREDICTIONS = Counter("pit_pool_prewarm_predictions_total", "Prewarm predictions made")
PREWARM_CORRECT = Counter("pit_pool_prewarm_correct_total",
                          "Prewarm predictions followed by a use of the model in time")
PREWARM_MODELS = Counter("pit_pool_prewarm_models_total", "Models prewarmed")
PREWARM_COLD_STARTS_AVOIDED = Counter("pit_pool_prewarm_cold_starts_avoided_total",
                                      "Allocations that found a prewarmed model Hot")
# The prewarmer's statistics (prewarmer.stats_dict keys) -> the counters that export them.
PREWARM_COUNTERS = {"predictions_made": PREWARM_PREDICTIONS,
                    "correct_predictions": PREWARM_CORRECT,
                    "models_prewarmed": PREWARM_MODELS,
                    "cold_starts_avoided": PREWARM_COLD_STARTS_AVOIDED}

# --- durable timers (issue 4, streams.timers) ------------------------------------------------
TIMERS_PENDING = Gauge("pit_timers_pending", "Timers scheduled and not yet fired or cancelled")
TIMERS_FIRED = Counter("pit_timers_fired_total", "Timer commands sent (a re-fire after a crash"
                       " counts again; its processor answers it as a duplicate)")
TIMER_LATENESS_SECONDS = Histogram(
    "pit_timer_lateness_seconds", "Time from a timer's due time to its firing",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0))

# --- workflows (issue 4) ---------------------------------------------------------------------
# Updated from the DAG events as the projector archives them (projections.dag_metrics).
DAG_NODE_SECONDS = Histogram(
    "pit_dag_node_seconds", "Node attempt duration reported by the runner, by node kind and"
    " outcome (completed, failed)", ["kind", "outcome"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
             300.0, 1800.0), registry=PROJECTED)
DAG_NODES_COMPLETED = Counter("pit_dag_nodes_completed_total",
                              "Node attempts completed, by node kind (throughput)", ["kind"],
                              registry=PROJECTED)
DAG_NODE_FAILURES = Counter("pit_dag_node_failures_total",
                            "Node attempts failed, by node kind and error type (error rates)",
                            ["kind", "error_type"], registry=PROJECTED)
DAG_EXECUTIONS_STARTED = Counter("pit_dag_executions_started_total", "Executions started",
                                 registry=PROJECTED)
DAG_EXECUTIONS_ENDED = Counter("pit_dag_executions_ended_total",
                               "Executions ended, by final status", ["status"], registry=PROJECTED)
DAG_TASKS_RUNNING = Gauge("pit_dag_tasks_running",
                          "Node tasks relayed to runners and not yet ended, all executions")
DAG_TASKS_WAITING = Gauge("pit_dag_tasks_waiting",
                          "Node tasks held back by the overall limit (PIT_DAG_MAX_RUNNING)")
DAG_TASKS_REDISPATCHED = Counter(
    "pit_dag_tasks_redispatched_total",
    "Tasks relayed again on start: the earlier relay came from a NodeScheduled the log lost")

# --- the processors' memory (issue 11) -------------------------------------------------------
PROCESSOR_ENTITIES = Gauge("pit_processor_entities",
                           "Entities a processor holds in memory: live ones, and ended ones kept"
                           " (compact) until evicted", ["component", "kind"])
PROCESSOR_LEDGER = Gauge("pit_processor_ledger_commands",
                         "Command ids a processor remembers to answer duplicates from memory",
                         ["component"])

# Updated from arbitration's events as the projector archives them
# (projections.arbitration_metrics); the gauges are read from the arbitration view.
ARBITRATION_DECISIONS = Counter(
    "pit_arbitration_decisions_total", "Arbitration decisions, by outcome, strategy and the"
    " first conflict met (none: granted at once)", ["outcome", "strategy", "conflict"],
    registry=PROJECTED)
ARBITRATION_WAIT_SECONDS = Histogram(
    "pit_arbitration_wait_seconds", "How long a granted request waited for its grant",
    buckets=(0.0, *_LOAD_BUCKETS, 300.0, 900.0), registry=PROJECTED)
ARBITRATION_QUEUE = Gauge("pit_arbitration_queue_length",
                          "Requests waiting, by pool and priority level", ["pool", "priority"],
                          registry=PROJECTED)
ARBITRATION_GINI = Gauge("pit_arbitration_gini",
                         "Gini of weight-normalised grants over the fairness window", ["pool"],
                         registry=PROJECTED)
