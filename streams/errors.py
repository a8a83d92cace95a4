"""The one exception root of the Pit, with a subclass per concern.

Anything that reaches a user is a `PitError`; the CLI prints its message as one line.
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


class AllocationError(PitError):
    """A model allocation was rejected, or failed before or after it was granted."""


class InferenceError(PitError):
    """A host could not answer an inference call."""


class AuditChainError(PitError):
    """The audit log's hash chain does not verify."""


class InvalidWorkflowError(PitError):
    """A workflow definition is malformed or invalid; `problems` lists every reason."""

    def __init__(self, name: str, problems: list[str]) -> None:
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"invalid workflow {name!r} ({count}): " + "; ".join(problems))
        self.problems = problems


class DefinitionStoreError(PitError):
    """A stored workflow definition is missing, or its content does not match its hash."""


class BlobStoreError(PitError):
    """A blob address is malformed, or the blob store cannot be read or written."""


class BlobNotFoundError(BlobStoreError):
    """No blob is stored at that address."""


class BlobIntegrityError(BlobStoreError):
    """A stored blob's content does not hash to its address."""


class DecryptionError(BlobStoreError):
    """Encrypted content does not open: a wrong or missing key, or an altered object."""


class WorkflowError(PitError):
    """A workflow execution was refused, is unknown, or did not end in time."""


class ArtifactError(PitError):
    """An artifact operation cannot apply: a diff of content that is not text, a JSON schema
    that is not one."""


class ArtifactNotFoundError(ArtifactError):
    """No artifact by that address, name or version."""


class SearchError(PitError):
    """A search query is malformed, or the search index cannot be read or written."""
