"""Workflow definitions in files, by content hash (the I/O side of streams/dag/definition.py).

A definition too large for one event (`Workflow.is_large`) is put here and referenced by its
`content_hash()`. Files are content-addressed (`<root>/<first 2 hex>/<rest of hex>.json`, the
canonical JSON) in a blob store (streams/blobs.py): written atomically (a temporary file,
fsync, rename) so a reader never sees half a definition, and checked against their hash on
every read from disk. The workflows last read are kept parsed, by directory and hash, for
every store of the process: in `pit up` the DAG processor and the workflow lookahead both
read each large definition (a 10,000-node one takes 0.15 s to parse, and its graph as long).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from streams.blobs import FileBlobStore
from streams.config import Settings
from streams.dag.definition import Workflow, workflow_from_json, workflow_from_yaml
from streams.dag.errors import DefinitionStoreError, InvalidWorkflowError
from streams.errors import BlobNotFoundError, BlobStoreError

PARSED = 8  # definitions kept parsed (`_parsed`), most recently read first


def read_workflow_file(path: str | Path) -> Workflow:
    """A workflow from a .yaml/.yml or .json file (`InvalidWorkflowError` when malformed)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidWorkflowError(path.name, [f"cannot read {path}: {exc.strerror}"]) from None
    return workflow_from_json(text) if path.suffix == ".json" else workflow_from_yaml(text)


def definition_store(settings: Settings) -> FileDefinitionStore:
    """The Pit's definition store: `definitions/` in the data directory, where clients put
    large definitions and `pit up`'s DAG processor reads them. One machine shares it through
    the data directory; a deployment over several machines needs it on shared storage (the
    Artifact Store's job once it exists)."""
    return FileDefinitionStore(settings.data_dir / "definitions")


class FileDefinitionStore:
    """A `DefinitionStore` in a directory: a blob store of canonical JSON files (atomic
    writes, verified reads; safe for several processes writing the same hash)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.blobs = FileBlobStore(self.root, suffix=".json", kind="definition")

    def path_of(self, definition_hash: str) -> Path:
        with _as_definition_error():
            return self.blobs.path_of(definition_hash)

    def put(self, workflow: Workflow) -> str:
        with _as_definition_error():
            return self.blobs.put(workflow.canonical_bytes)

    def get(self, definition_hash: str) -> Workflow:
        return _parsed(self.root, definition_hash)

    def read(self, definition_hash: str) -> Workflow:
        """The definition read from disk, checked against its hash, parsed (uncached)."""
        try:
            data = self.blobs.get(definition_hash)
        except BlobNotFoundError as exc:
            raise DefinitionStoreError(
                f"{exc}: it is not in the definition store at {self.root} (whoever starts a"
                " workflow by hash puts it there first: on one machine the same PIT_DATA_DIR,"
                " across machines a shared store)") from None
        except BlobStoreError as exc:
            raise DefinitionStoreError(str(exc)) from None
        return workflow_from_json(data)

    def __contains__(self, definition_hash: object) -> bool:
        return definition_hash in self.blobs


@lru_cache(maxsize=PARSED)
def _parsed(root: Path, definition_hash: str) -> Workflow:
    """The workflows last read, by directory and hash, for every store of the process (and
    its threads: a processor's restore runs on a worker thread). A failed read is not kept."""
    return FileDefinitionStore(root).read(definition_hash)


@contextmanager
def _as_definition_error() -> Iterator[None]:
    try:
        yield
    except BlobStoreError as exc:
        raise DefinitionStoreError(str(exc)) from None
