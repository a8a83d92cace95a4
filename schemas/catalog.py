"""The repository's schemas: every `.avsc` under `schemas/avro`, by full name."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path

from fastavro.schema import load_schema, to_parsing_canonical_form

from streams.errors import SchemaError

AVRO_DIR = Path(str(resources.files("schemas").joinpath("avro")))


def fullname(schema: dict) -> str:
    name = schema["name"]
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


@cache
def current_schemas() -> dict[str, dict]:
    """Every record schema in the repository, named types inlined, by full name."""
    records: dict[str, dict] = {}
    for path in sorted(AVRO_DIR.glob("*.avsc")):
        try:
            schema = load_schema(str(path), _write_hint=False)
        except Exception as exc:  # fastavro raises several types for a bad file
            raise SchemaError(f"{path.name}: {exc}") from None
        if isinstance(schema, dict) and schema.get("type") == "record":
            records[fullname(schema)] = schema
    return records


def canonical(schema: dict) -> str:
    """Avro's Parsing Canonical Form: equal for schemas that read and write the same bytes."""
    return to_parsing_canonical_form(schema)


def schema_json(schema: dict) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))
