"""The topic catalog (`infra/topics.yaml`) and applying it to a cluster."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from streams.errors import ConfigError

# The kernel's topics; each component names its own (streams/<component>/topics.py).
RESULTS = "pit.results"
OUTCOME = "pit.Outcome"  # the record every processor answers on RESULTS
TIMERS = "pit.timers"
DEAD_LETTERS = "pit.deadletters"
SCHEMAS = "_pit.schemas"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    key: str
    retention_ms: int = -1
    cleanup_policy: str = "delete"
    # Someone reads it from Kafka alone, with no archive to fall back on: the embedded broker
    # keeps it longer (streams/memory.py, `retained_for`).
    read_from_kafka_alone: bool = False

    @property
    def compacted(self) -> bool:
        return "compact" in self.cleanup_policy

    def kafka_config(self) -> dict[str, str]:
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}


def load_catalog(text: str | None = None) -> dict[str, TopicSpec]:
    """Parse the catalog; the packaged `infra/topics.yaml` unless text is given."""
    import yaml  # here: the topic names above are wanted far more often than the catalog

    if text is None:
        text = resources.files("infra").joinpath("topics.yaml").read_text()
    try:
        entries = yaml.safe_load(text)["topics"]
        return {name: TopicSpec(name=name, **spec) for name, spec in entries.items()}
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise ConfigError(f"infra/topics.yaml is invalid: {exc}") from None


async def apply_to_cluster(client_options: dict, catalog: dict[str, TopicSpec]) -> list[str]:
    """Create the catalog's missing topics on a real cluster; returns the names created."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**client_options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for name, spec in catalog.items() if name not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(s.name, s.partitions, replication_factor=-1,
                             topic_configs=s.kafka_config())
                    for s in missing
                ]
            )
        return [s.name for s in missing]
    finally:
        await admin.close()
