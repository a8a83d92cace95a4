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

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from streams.blobs import FileBlobStore
from streams.config import Settings
from streams.dag.definition import Workflow, workflow_from_json, workflow_from_yaml
from streams.dag.errors import DefinitionStoreError, InvalidWorkflowError
from streams.errors import BlobNotFoundError, BlobStoreError

PARSED = 8  # definitions kept parsed, most recently read first


class _Parsed:
    """Workflows by store directory and content hash, shared by the threads of a process (a
    processor's restore runs on a worker thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._workflows: OrderedDict[tuple[Path, str], Workflow] = OrderedDict()

    def get(self, key: tuple[Path, str]) -> Workflow | None:
        with self._lock:
            workflow = self._workflows.get(key)
            if workflow is not None:
                self._workflows.move_to_end(key)
            return workflow

    def put(self, key: tuple[Path, str], workflow: Workflow) -> None:
        with self._lock:
            self._workflows[key] = workflow
            while len(self._workflows) > PARSED:
                self._workflows.popitem(last=False)


_PARSED = _Parsed()


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
        parsed = _PARSED.get((self.root, definition_hash))
        if parsed is not None:
            return parsed
        try:
            data = self.blobs.get(definition_hash)
        except BlobNotFoundError as exc:
            raise DefinitionStoreError(
                f"{exc}: it is not in the definition store at {self.root} (whoever starts a"
                " workflow by hash puts it there first: on one machine the same PIT_DATA_DIR,"
                " across machines a shared store)") from None
        except BlobStoreError as exc:
            raise DefinitionStoreError(str(exc)) from None
        workflow = workflow_from_json(data)
        _PARSED.put((self.root, definition_hash), workflow)
        return workflow

    def __contains__(self, definition_hash: object) -> bool:
        return definition_hash in self.blobs


@contextmanager
def _as_definition_error() -> Iterator[None]:
    try:
        yield
    except BlobStoreError as exc:
        raise DefinitionStoreError(str(exc)) from None
