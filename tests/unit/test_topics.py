"""The topic catalog fits the processors that use it."""

from streams.components import DECIDERS
from streams.topics import RESULTS, load_catalog


def test_every_command_partition_has_its_partition_of_the_results_topic():
    # A processor answers a command on the same partition of pit.results (and restores its
    # ledger from there): a command topic with more partitions could not be answered.
    catalog = load_catalog()
    for decider in DECIDERS:
        assert catalog[decider.command_topic].partitions <= catalog[RESULTS].partitions, (
            decider.name)


def test_a_checkpoint_topic_is_compacted_and_partitioned_as_its_event_topic():
    # partition p of the checkpoint topic describes partition p of the event topic
    catalog = load_catalog()
    for decider in DECIDERS:
        if decider.checkpoint_topic is not None:
            spec = catalog[decider.checkpoint_topic.topic]
            assert spec.compacted and spec.retention_ms == -1, decider.name
            assert spec.partitions == catalog[decider.event_topic].partitions, decider.name
