"""The one exception root of the Pit, with a subclass per concern.

Anything that reaches a user is a `PitError`; the CLI prints its message as one line.
A component's own errors subclass these in `streams/<component>/errors.py`.
"""


class PitError(Exception):
    """Root of every error the Pit raises on purpose."""


class ConfigError(PitError):
    """The environment or a file configures something impossible."""


class SchemaError(PitError):
    """A schema is invalid, unknown or incompatible."""


class UnknownSchemaError(SchemaError):
    """A message names a schema id the registry does not know."""


class IncompatibleSchemaError(SchemaError):
    """A new schema version cannot read data written with an older one."""


class MalformedMessageError(SchemaError):
    """Bytes that are not a framed Avro message of a known schema."""


class InvalidRecordError(SchemaError):
    """A record does not match its schema (missing field, wrong type)."""


class BrokerUnavailableError(PitError):
    """No Kafka broker answers at the configured address."""


class DatabaseUnavailableError(PitError):
    """The projection database cannot be reached."""


class CommandTimeoutError(PitError):
    """No outcome arrived for a command within the timeout."""


class AuditChainError(PitError):
    """The audit log's hash chain does not verify."""


class BlobStoreError(PitError):
    """A blob address is malformed, or the blob store cannot be read or written."""


class BlobNotFoundError(BlobStoreError):
    """No blob is stored at that address."""


class BlobIntegrityError(BlobStoreError):
    """A stored blob's content does not hash to its address."""
