"""The DAG's errors."""

from streams.errors import PitError


class InvalidWorkflowError(PitError):
    """A workflow definition is malformed or invalid; `problems` lists every reason."""

    def __init__(self, name: str, problems: list[str]) -> None:
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"invalid workflow {name!r} ({count}): " + "; ".join(problems))
        self.problems = problems


class DefinitionStoreError(PitError):
    """A stored workflow definition is missing, or its content does not match its hash."""


class WorkflowError(PitError):
    """A workflow execution was refused, is unknown, or did not end in time."""
