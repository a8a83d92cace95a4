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
