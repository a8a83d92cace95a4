"""The DAG component's settings, from its `PIT_DAG_*` variables."""

from __future__ import annotations

from dataclasses import dataclass

from streams.config import Settings, parse_count


@dataclass(frozen=True)
class DagSettings:
    # Nodes running at once across all workflow executions (0: no limit); the task
    # dispatcher in `pit up` holds the rest back (streams/dag/dispatch.py).
    max_running: int = 4096

    @classmethod
    def of(cls, settings: Settings) -> DagSettings:
        env = settings.env
        return cls(max_running=parse_count("PIT_DAG_MAX_RUNNING",
                                           env.get("PIT_DAG_MAX_RUNNING", "4096")))
