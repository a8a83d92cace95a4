"""Workflow definitions in files, by content hash (the I/O side of streams/dag/definition.py).

A definition too large for one event (`Workflow.is_large`) is put here and referenced by its
`content_hash()`. Files are content-addressed (`<root>/<first 2 hex>/<rest of hex>.json`, the
canonical JSON), written atomically (a temporary file, fsync, rename) so a reader never sees
half a definition, and checked against their hash on every read.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from streams.dag.definition import (
    Workflow,
    content_hash,
    workflow_from_json,
    workflow_from_yaml,
)
from streams.errors import DefinitionStoreError, InvalidWorkflowError

_HASH = re.compile(r"sha256:([0-9a-f]{64})")


def read_workflow_file(path: str | Path) -> Workflow:
    """A workflow from a .yaml/.yml or .json file (`InvalidWorkflowError` when malformed)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidWorkflowError(path.name, [f"cannot read {path}: {exc.strerror}"]) from None
    return workflow_from_json(text) if path.suffix == ".json" else workflow_from_yaml(text)


class FileDefinitionStore:
    """A `DefinitionStore` in a directory; safe for several processes writing the same hash."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path_of(self, definition_hash: str) -> Path:
        match = _HASH.fullmatch(definition_hash) if isinstance(definition_hash, str) else None
        if match is None:
            raise DefinitionStoreError(f"not a definition hash: {definition_hash!r} "
                                       "(expected sha256:<64 hex digits>)")
        digest = match.group(1)
        return self.root / digest[:2] / f"{digest[2:]}.json"

    def put(self, workflow: Workflow) -> str:
        data = workflow.canonical_bytes
        definition_hash = content_hash(data)
        path = self.path_of(definition_hash)
        if path.exists():
            return definition_hash
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:  # the rename itself must survive a crash too
            os.fsync(directory)
        finally:
            os.close(directory)
        return definition_hash

    def get(self, definition_hash: str) -> Workflow:
        path = self.path_of(definition_hash)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DefinitionStoreError(f"unknown definition {definition_hash}") from None
        actual = content_hash(data)
        if actual != definition_hash:
            raise DefinitionStoreError(f"definition {definition_hash} is corrupt: its file "
                                       f"hashes to {actual}")
        return workflow_from_json(data)

    def __contains__(self, definition_hash: object) -> bool:
        return (isinstance(definition_hash, str) and _HASH.fullmatch(definition_hash) is not None
                and self.path_of(definition_hash).exists())
