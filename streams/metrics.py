"""Prometheus metrics of the runtime (`pit_` prefix, units in names), served on /metrics."""

from prometheus_client import Counter, Gauge, Histogram

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
PROCESSOR_RESTARTS = Counter("pit_processor_restarts_total",
                             "Times a processor started over from the log after a Kafka failure",
                             ["component"])
