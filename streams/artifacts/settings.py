"""The Artifact Store's settings, from its `PIT_*` variables (README, Configuration)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streams.config import Settings, parse_flag
from streams.errors import ConfigError


@dataclass(frozen=True)
class ArtifactSettings:
    # Content (streams/artifacts/storage.py): "file" (<data_dir>/artifacts) or "s3",
    # encrypted when a keyring is configured (streams/artifacts/crypto.py).
    backend: str = "file"
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    # Search on OpenSearch (mirrored from the embedded index) when set.
    opensearch_url: str | None = None
    opensearch_index: str = "pit-artifacts"
    keyring_file: Path | None = None
    keyring_keys: str | None = field(default=None, repr=False)  # key material: never shown
    keyring_active: str | None = None
    # `pit up` catalogs every completed DAG node's output as an artifact (dag_outputs.py):
    # a blob write and a catalog command per node, so it is asked for (PIT_DAG_OUTPUT_ARTIFACTS).
    dag_output_artifacts: bool = False

    @classmethod
    def of(cls, settings: Settings) -> ArtifactSettings:
        env = settings.env
        return cls(
            backend=_backend(env),
            s3_bucket=env.get("PIT_S3_BUCKET") or None,
            s3_endpoint_url=env.get("PIT_S3_ENDPOINT_URL") or None,
            opensearch_url=env.get("PIT_OPENSEARCH_URL") or None,
            opensearch_index=env.get("PIT_OPENSEARCH_INDEX") or "pit-artifacts",
            keyring_file=_keyring_file(env),
            keyring_keys=env.get("PIT_KEYRING_KEYS") or None,
            keyring_active=env.get("PIT_KEYRING_ACTIVE") or None,
            dag_output_artifacts=parse_flag("PIT_DAG_OUTPUT_ARTIFACTS",
                                            env.get("PIT_DAG_OUTPUT_ARTIFACTS", "")),
        )


def _backend(env: Mapping[str, str]) -> str:
    backend = env.get("PIT_ARTIFACT_BACKEND") or "file"
    if backend not in ("file", "s3"):
        raise ConfigError(f"PIT_ARTIFACT_BACKEND must be file or s3, got {backend!r}")
    if backend == "s3" and not env.get("PIT_S3_BUCKET"):
        raise ConfigError("PIT_ARTIFACT_BACKEND=s3 needs PIT_S3_BUCKET, the bucket's name")
    return backend


def _keyring_file(env: Mapping[str, str]) -> Path | None:
    if env.get("PIT_KEYRING") and env.get("PIT_KEYRING_KEYS"):
        raise ConfigError("PIT_KEYRING (a keyring file) and PIT_KEYRING_KEYS are both set: "
                          "set one")
    return Path(env["PIT_KEYRING"]) if env.get("PIT_KEYRING") else None
