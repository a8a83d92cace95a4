"""Issue 11, memory: where the embedded broker may start each partition (`trim_points`), and
the broker dropping what lies below it."""

from __future__ import annotations

from confluent_kafka import Consumer, Producer, TopicPartition

from streams.app import consumer_groups
from streams.artifacts.dag_outputs import GROUP as DAG_OUTPUTS
from streams.broker import EmbeddedBroker
from streams.config import Settings
from streams.dag.runner import GROUP as RUNNERS
from streams.dag.topics import DAG_EVENTS, DAG_TASKS
from streams.memory import (
    ARCHIVED_RETAIN_S,
    BROKER_RETAIN_S,
    dropped_unarchived,
    ends_as_of,
    retained_for,
    trim_points,
)
from streams.pool.topics import POOL_EVENTS
from streams.topics import DEAD_LETTERS, RESULTS, TopicSpec, load_catalog

A, B = ("t", 0), ("t", 1)


def test_a_partition_starts_below_what_is_archived_retained_and_committed() -> None:
    archived = {A: 99, B: 9}
    retained = {A: 80, B: 50}  # the ends a minute ago
    assert trim_points(archived, retained, []) == {A: 80, B: 10}
    assert trim_points(archived, retained, [{A: 30}]) == {A: 30, B: 10}
    assert trim_points(archived, retained, [{A: -1, B: 5}]) == {A: 0, B: 5}  # none committed
    assert trim_points({}, retained, []) == {A: 0, B: 0}  # nothing archived: nothing trimmed


def test_each_partition_is_held_as_of_its_own_topics_retention() -> None:
    looks = [(0.0, {A: 10, B: 100}), (5.0, {A: 20, B: 200}), (9.0, {A: 30, B: 300})]
    # A keeps 2 s: the look at 5.0 is the newest that old at 10.0; B keeps 8 s: the one at 0.0
    assert ends_as_of(looks, 10.0, {A: 2.0, B: 8.0}) == {A: 20, B: 100}
    assert ends_as_of(looks, 7.0, {A: 2.0, B: 8.0}) == {A: 20}  # no look is 8 s old yet
    assert ends_as_of(looks, 9.0, {A: 0.0}) == {A: 30}
    assert ends_as_of(looks[:1], 10.0, {("t", 2): 1.0}) == {}  # a partition no look saw


def test_topics_read_from_kafka_alone_are_held_longer() -> None:
    catalog = load_catalog()
    longer = {name for name, spec in catalog.items()
              if retained_for(spec) == BROKER_RETAIN_S > ARCHIVED_RETAIN_S}
    # the command clients' outcome readers, `pit host`, `pit demo`'s dead letter
    assert longer == {RESULTS, POOL_EVENTS, DEAD_LETTERS}
    assert retained_for(catalog[DAG_EVENTS]) == ARCHIVED_RETAIN_S


def test_what_the_broker_dropped_above_the_archive_is_lost_and_told_once() -> None:
    archived = {A: 99, B: 9}
    # our own trims keep the beginning at most one past the archive: nothing lost
    assert dropped_unarchived(archived, {A: 100, B: 3}, {}) == {}
    assert dropped_unarchived(archived, {A: 150, B: 10}, {}) == {A: (100, 149)}
    assert dropped_unarchived({}, {A: 5}, {}) == {A: (0, 4)}  # nothing archived there
    # told up to 150 already: only what was dropped since
    assert dropped_unarchived(archived, {A: 150}, {A: 150}) == {}
    assert dropped_unarchived(archived, {A: 170}, {A: 150}) == {A: (150, 169)}


def test_the_embedded_broker_drops_records_below_an_offset() -> None:
    with EmbeddedBroker(1) as broker:
        broker.create_topic(TopicSpec("t", 2, "k"))
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
        for n in range(20):
            producer.produce("t", value=b"x", partition=n % 2)
        producer.flush(30)
        broker.delete_records("t", 0, 7)
        consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": "g"})
        try:
            assert consumer.get_watermark_offsets(TopicPartition("t", 0), timeout=30) == (7, 10)
            assert consumer.get_watermark_offsets(TopicPartition("t", 1), timeout=30) == (0, 10)
            broker.delete_records_below({("t", 0): 9, ("t", 1): 4})  # several at once
            assert consumer.get_watermark_offsets(TopicPartition("t", 0), timeout=30) == (9, 10)
            assert consumer.get_watermark_offsets(TopicPartition("t", 1), timeout=30) == (4, 10)
        finally:
            consumer.close()


def test_the_output_catalogers_group_holds_dag_events_only_when_it_runs() -> None:
    """A group that never commits holds its topic in the broker's memory for good: the
    cataloger's counts only when PIT_DAG_OUTPUT_ARTIFACTS turns it on."""
    off = consumer_groups(Settings())
    on = consumer_groups(Settings(env={"PIT_DAG_OUTPUT_ARTIFACTS": "1"}))
    assert DAG_OUTPUTS not in off and on[DAG_OUTPUTS] == (DAG_EVENTS,)
    assert off[RUNNERS] == on[RUNNERS] == (DAG_TASKS,)
