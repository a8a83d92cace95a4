"""The pool's errors."""

from streams.errors import PitError


class AllocationError(PitError):
    """A model allocation was rejected, or failed before or after it was granted."""


class InferenceError(PitError):
    """A host could not answer an inference call."""
