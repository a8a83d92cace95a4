"""Configuration from `PIT_*` environment variables; every default is the embedded setup."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streams.errors import BrokerUnavailableError, ConfigError

# Passed straight through to the Kafka clients (aiokafka names), so any cluster works.
_KAFKA_SECURITY_VARS = {
    "PIT_KAFKA_SECURITY_PROTOCOL": "security_protocol",
    "PIT_KAFKA_SASL_MECHANISM": "sasl_mechanism",
    "PIT_KAFKA_SASL_USERNAME": "sasl_plain_username",
    "PIT_KAFKA_SASL_PASSWORD": "sasl_plain_password",
}
_KAFKA_TLS_VARS = {
    "PIT_KAFKA_SSL_CAFILE": "cafile",
    "PIT_KAFKA_SSL_CERTFILE": "certfile",
    "PIT_KAFKA_SSL_KEYFILE": "keyfile",
}

# Passed to confluent-kafka's SchemaRegistryClient with PIT_SCHEMA_REGISTRY_URL (its names).
_SCHEMA_REGISTRY_VARS = {
    "PIT_SCHEMA_REGISTRY_BASIC_AUTH": "basic.auth.user.info",
    "PIT_SCHEMA_REGISTRY_BEARER_TOKEN": "bearer.auth.token",
    "PIT_SCHEMA_REGISTRY_LOGICAL_CLUSTER": "bearer.auth.logical.cluster",
    "PIT_SCHEMA_REGISTRY_IDENTITY_POOL": "bearer.auth.identity.pool.id",
    "PIT_SCHEMA_REGISTRY_SSL_CAFILE": "ssl.ca.location",
    "PIT_SCHEMA_REGISTRY_SSL_CERTFILE": "ssl.certificate.location",
    "PIT_SCHEMA_REGISTRY_SSL_KEYFILE": "ssl.key.location",
}

BROKER_FILE = "broker.json"


# For the components' settings (streams/<component>/settings.py): one wording for a bad value.
def parse_count(name: str, text: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"{name} must be a whole number of 0 or more, got {text!r}")
    return int(text)


def parse_flag(name: str, text: str) -> bool:
    if text.lower() not in ("", "0", "1", "false", "true", "no", "yes"):
        raise ConfigError(f"{name} must be 1 or 0 (true or false), got {text!r}")
    return text.lower() in ("1", "true", "yes")


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"PIT_HTTP_PORT must be a TCP port number, got {text!r}")
    return int(text)


def _projector_process(text: str) -> bool:
    if text not in ("process", "inline"):
        raise ConfigError(f"PIT_PROJECTOR must be process or inline, got {text!r}")
    return text == "process"


def _schema_registry(env: dict[str, str]) -> dict[str, str]:
    options = {v: env[k] for k, v in _SCHEMA_REGISTRY_VARS.items() if env.get(k)}
    if ":" not in options.get("basic.auth.user.info", ":"):
        raise ConfigError("PIT_SCHEMA_REGISTRY_BASIC_AUTH must be user:password")
    if "bearer.auth.token" in options:
        if "bearer.auth.logical.cluster" not in options:  # the client sends it with a token
            raise ConfigError("PIT_SCHEMA_REGISTRY_BEARER_TOKEN needs"
                              " PIT_SCHEMA_REGISTRY_LOGICAL_CLUSTER, the registry's cluster id")
        options["bearer.auth.credentials.source"] = "STATIC_TOKEN"
    return options


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(".pit")
    bootstrap_servers: str | None = None
    database_url: str | None = None
    schema_registry_url: str | None = None
    # Auth and TLS of that registry, in SchemaRegistryClient's names; holds secrets: never shown
    schema_registry_options: dict[str, str] = field(default_factory=dict, repr=False)
    http_port: int = 8642
    # `pit up` runs its projector in a process of its own (PIT_PROJECTOR=process, the
    # default) or on its own event loop (inline): streams/projector.py.
    projector_process: bool = True
    kafka_security: dict[str, str] = field(default_factory=dict)
    kafka_tls: dict[str, str] = field(default_factory=dict)
    # The `PIT_*` variables these settings came from: each component parses its own from
    # them (its `settings.py`), so the kernel knows none. May hold secrets: never shown.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        return cls(
            data_dir=Path(env.get("PIT_DATA_DIR", ".pit")),
            bootstrap_servers=env.get("PIT_KAFKA_BOOTSTRAP_SERVERS") or None,
            database_url=env.get("PIT_DATABASE_URL") or None,
            schema_registry_url=env.get("PIT_SCHEMA_REGISTRY_URL") or None,
            schema_registry_options=_schema_registry(env),
            http_port=_port(env.get("PIT_HTTP_PORT", "8642")),
            projector_process=_projector_process(env.get("PIT_PROJECTOR", "process")),
            kafka_security={v: env[k] for k, v in _KAFKA_SECURITY_VARS.items() if env.get(k)},
            kafka_tls={v: env[k] for k, v in _KAFKA_TLS_VARS.items() if env.get(k)},
            env={name: value for name, value in env.items() if name.startswith("PIT_")},
        )

    @property
    def embedded(self) -> bool:
        """True when no external cluster is configured: `pit up` runs the broker in-process."""
        return self.bootstrap_servers is None

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'pit.db'}"

    def bootstrap(self) -> str:
        """Where Kafka is: the configured cluster, or the embedded broker `pit up` published."""
        if self.bootstrap_servers:
            return self.bootstrap_servers
        broker_file = self.data_dir / BROKER_FILE
        try:
            return json.loads(broker_file.read_text())["bootstrap_servers"]
        except (OSError, ValueError, KeyError):
            raise BrokerUnavailableError(
                f"no broker: start one with `pit up` (looked for {broker_file}) "
                "or set PIT_KAFKA_BOOTSTRAP_SERVERS"
            ) from None

    def librdkafka_config(self) -> dict[str, str]:
        """The same connection for confluent-kafka (librdkafka) clients."""
        names = {"security_protocol": "security.protocol", "sasl_mechanism": "sasl.mechanism",
                 "sasl_plain_username": "sasl.username", "sasl_plain_password": "sasl.password",
                 "cafile": "ssl.ca.location", "certfile": "ssl.certificate.location",
                 "keyfile": "ssl.key.location"}
        config = {"bootstrap.servers": self.bootstrap()}
        for option, value in {**self.kafka_security, **self.kafka_tls}.items():
            config[names[option]] = value
        return config

    def kafka_client_options(self) -> dict:
        """Keyword arguments for aiokafka clients: bootstrap plus SASL/TLS pass-through."""
        options: dict = {"bootstrap_servers": self.bootstrap(), **self.kafka_security}
        if self.kafka_tls:
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(**self.kafka_tls)
        return options
