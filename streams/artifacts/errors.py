"""The Artifact Store's errors (content, catalog, encryption, search)."""

from streams.errors import BlobStoreError, PitError


class ArtifactError(PitError):
    """An artifact operation cannot apply: a diff of content that is not text, a JSON schema
    that is not one."""


class ArtifactNotFoundError(ArtifactError):
    """No artifact by that address, name or version."""


class DecryptionError(BlobStoreError):
    """Encrypted content does not open: a wrong or missing key, or an altered object."""


class SearchError(PitError):
    """A search query is malformed, or the search index cannot be read or written."""
