"""The Stale Manager's settings, from its `PIT_STALE_*` variables (README, Configuration)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streams.config import Settings, parse_count, parse_flag


@dataclass(frozen=True)
class StaleSettings:
    # Storage tiers (streams/stale/tiers.py): warm is a directory, cold an S3 bucket; without
    # a bucket there is no cold tier.
    warm_dir: Path = Path(".pit") / "warm"
    cold_bucket: str | None = None
    cold_endpoint_url: str | None = None  # PIT_STALE_COLD_ENDPOINT_URL, else PIT_S3_ENDPOINT_URL
    # How often the catalog observer lists the stores for blobs nothing references
    # (PIT_STALE_SCAN_S): a listing reads every object's size, a HEAD each on S3.
    scan_every_s: int = 600
    # Collect node outputs from the DAG's blob store (PIT_STALE_DAG_OUTPUTS=1): the catalog
    # observer then follows pit.dag.events, which costs a busy Pit CPU (the 10,000-node
    # workflow test missed its minute with it on), so it is asked for.
    dag_outputs: bool = False

    @classmethod
    def of(cls, settings: Settings) -> StaleSettings:
        env = settings.env
        return cls(
            warm_dir=Path(env.get("PIT_STALE_WARM_DIR") or settings.data_dir / "warm"),
            cold_bucket=env.get("PIT_STALE_COLD_BUCKET") or None,
            cold_endpoint_url=(env.get("PIT_STALE_COLD_ENDPOINT_URL")
                               or env.get("PIT_S3_ENDPOINT_URL") or None),
            scan_every_s=max(1, parse_count("PIT_STALE_SCAN_S",
                                            env.get("PIT_STALE_SCAN_S") or "600")),
            dag_outputs=parse_flag("PIT_STALE_DAG_OUTPUTS", env.get("PIT_STALE_DAG_OUTPUTS", "")),
        )
