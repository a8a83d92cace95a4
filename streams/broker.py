"""The embedded broker: librdkafka's mock cluster, driven through its C API with ctypes.

librdkafka ships inside the confluent-kafka wheel and exports `rd_kafka_mock_*`, so a real
Kafka-protocol broker runs in-process with no JVM. Its limits (see DESIGN.md): it keeps
only the newest ~5 MiB per partition, in memory (`pit up` trims what is archived:
streams/memory.py), has no compaction and no CreateTopics (topics are
created here, through the API), no transactional isolation, and nothing survives a
restart - durability comes from the audit archive, which `restore` replays into it.
"""

from __future__ import annotations

import ctypes
import glob
import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import confluent_kafka

from streams.errors import BrokerUnavailableError
from streams.topics import TopicSpec, load_catalog

_RD_KAFKA_PRODUCER = 0


@cache
def _librdkafka() -> ctypes.CDLL:
    package_dir = os.path.dirname(confluent_kafka.__file__)
    candidates = glob.glob(os.path.join(package_dir, "..", "confluent_kafka.libs", "librdkafka*"))
    if not candidates:
        raise BrokerUnavailableError("librdkafka not found in the confluent-kafka wheel")
    lib = ctypes.CDLL(candidates[0])
    ptr, text, integer = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    signatures = {
        "rd_kafka_conf_new": ([], ptr),
        "rd_kafka_conf_set": ([ptr, text, text, text, ctypes.c_size_t], integer),
        "rd_kafka_new": ([integer, ptr, text, ctypes.c_size_t], ptr),
        "rd_kafka_destroy": ([ptr], None),
        "rd_kafka_mock_cluster_new": ([ptr, integer], ptr),
        "rd_kafka_mock_cluster_destroy": ([ptr], None),
        "rd_kafka_mock_cluster_bootstraps": ([ptr], text),
        "rd_kafka_mock_group_initial_rebalance_delay_ms": ([ptr, ctypes.c_int32], None),
        "rd_kafka_mock_topic_create": ([ptr, text, integer, integer], integer),
        "rd_kafka_mock_broker_set_down": ([ptr, ctypes.c_int32], integer),
        "rd_kafka_mock_broker_set_up": ([ptr, ctypes.c_int32], integer),
        "rd_kafka_mock_partition_set_leader": ([ptr, text, ctypes.c_int32, ctypes.c_int32],
                                               integer),
        "rd_kafka_mock_broker_push_request_error_rtts": (
            [ptr, ctypes.c_int32, ctypes.c_int16, ctypes.c_size_t], integer),
        "rd_kafka_mock_push_request_errors_array": (
            [ptr, ctypes.c_int16, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int)], None),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype
    return lib


class EmbeddedBroker:
    """An in-process Kafka cluster of `brokers` brokers. Use as a context manager."""

    def __init__(self, brokers: int = 1) -> None:
        lib = _librdkafka()
        error = ctypes.create_string_buffer(512)
        conf = lib.rd_kafka_conf_new()
        lib.rd_kafka_conf_set(conf, b"log_level", b"0", error, len(error))
        # The mock cluster lives inside a client handle; this one only hosts it.
        self._handle = lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, error, len(error))
        if not self._handle:
            raise BrokerUnavailableError(f"cannot start the embedded broker: {error.value!r}")
        self._cluster = lib.rd_kafka_mock_cluster_new(self._handle, brokers)
        if not self._cluster:
            lib.rd_kafka_destroy(self._handle)
            raise BrokerUnavailableError("cannot start the embedded broker's mock cluster")
        # The mock holds a group's first join for 3 s by default, like a real broker's
        # group.initial.rebalance.delay.ms; an in-process broker has no one to wait for.
        lib.rd_kafka_mock_group_initial_rebalance_delay_ms(self._cluster, 0)
        self.brokers = brokers
        self.bootstrap_servers = lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()

    def create_topic(self, spec: TopicSpec) -> None:
        code = _librdkafka().rd_kafka_mock_topic_create(
            self._cluster, spec.name.encode(), spec.partitions, min(3, self.brokers))
        if code:
            raise BrokerUnavailableError(f"cannot create topic {spec.name}: error {code}")

    def apply(self, catalog: dict[str, TopicSpec]) -> None:
        """Create every topic of `catalog`, one after another. On a fresh cluster each call
        is answered in about 0.1 ms; calls made at once from several threads took a second
        together (librdkafka 2.16: the mock's thread then sleeps out its 1 s poll)."""
        for spec in catalog.values():
            self.create_topic(spec)

    # Fault injection, for tests.
    def broker_down(self, broker_id: int) -> None:
        _librdkafka().rd_kafka_mock_broker_set_down(self._cluster, broker_id)

    def broker_up(self, broker_id: int) -> None:
        _librdkafka().rd_kafka_mock_broker_set_up(self._cluster, broker_id)

    def set_leader(self, topic: str, partition: int, broker_id: int) -> None:
        _librdkafka().rd_kafka_mock_partition_set_leader(
            self._cluster, topic.encode(), partition, broker_id)

    def delete_records_below(self, points: dict[tuple[str, int], int]) -> None:
        """`delete_records` for each (topic, partition) -> offset, all at once (each call
        waits for the mock's thread, as in `apply`)."""
        if points:
            with ThreadPoolExecutor(min(32, len(points)), thread_name_prefix="pit-trim") as pool:
                list(pool.map(lambda item: self.delete_records(item[0][0], item[0][1], item[1]),
                              points.items()))

    def delete_records(self, topic: str, partition: int, before: int) -> None:
        """Drop the partition's records below offset `before` (the mock holds every record in
        memory; Kafka's DeleteRecords, which the mock does not serve over the wire)."""
        function = getattr(_librdkafka(), "rd_kafka_mock_partition_delete_records", None)
        if function is None:
            raise BrokerUnavailableError("this librdkafka cannot delete the embedded broker's"
                                         " records")
        function.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_int64]
        function.restype = ctypes.c_int
        code = function(self._cluster, topic.encode(), partition, before)
        if code:
            raise BrokerUnavailableError(f"cannot delete records of {topic}[{partition}] below"
                                         f" {before}: error {code}")

    def push_request_errors(self, api_key: int, errors: list[int]) -> None:
        """The next requests of `api_key` (e.g. 0 = Produce) fail with these error codes."""
        array = (ctypes.c_int * len(errors))(*errors)
        _librdkafka().rd_kafka_mock_push_request_errors_array(
            self._cluster, api_key, len(errors), array)

    def push_broker_request_errors(self, broker_id: int, api_key: int,
                                   errors: list[int], *, rtt_ms: int = 0) -> None:
        """Like `push_request_errors`, but only requests sent to this one broker fail, each
        answered `rtt_ms` late (error 0 and an rtt: a slow answer, e.g. to hold a request
        in flight)."""
        pairs = [value for error in errors
                 for value in (ctypes.c_int(error), ctypes.c_int(rtt_ms))]
        _librdkafka().rd_kafka_mock_broker_push_request_error_rtts(  # variadic (error, rtt)
            self._cluster, broker_id, api_key, len(errors), *pairs)

    def close(self) -> None:
        if self._cluster:
            lib = _librdkafka()
            lib.rd_kafka_mock_cluster_destroy(self._cluster)
            lib.rd_kafka_destroy(self._handle)
            self._cluster = self._handle = None

    def __enter__(self) -> EmbeddedBroker:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def catalog_broker(brokers: int = 1) -> EmbeddedBroker:
    """An embedded cluster with the catalog's topics: what the benchmarks and the
    integration tests run on. Use as a context manager."""
    broker = EmbeddedBroker(brokers)
    try:
        broker.apply(load_catalog())
    except BaseException:
        broker.close()
        raise
    return broker
