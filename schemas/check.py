"""The CI check that refuses incompatible schema changes, and the recording of new versions.

`schemas/versions.json` is the lockfile of released versions, `{fullname: [schema JSON of
each version, oldest first]}`. The check is backward *transitive*: the current schema of a
record must read data written with every recorded version of it, not just the latest.
A record whose wire form (Parsing Canonical Form) differs from its latest recorded version is
pending: compatible, but not released until `record_versions()` (`pit schemas check --record`)
appends it. Doc-only and default-only edits do not change the wire form and need no version.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from schemas.catalog import canonical, current_schemas, schema_json
from schemas.compat import check_backward
from schemas.registry import VERSIONS_FILE, parse_recorded, recorded_versions, schema_id_for
from streams.errors import IncompatibleSchemaError, SchemaError

RECORD_HINT = "`pit schemas check --record`"


@dataclass
class CheckReport:
    """What `check_repository` found; `ok` is False when anything incompatible was found."""

    problems: list[str] = field(default_factory=list)  # incompatible changes: fail
    incompatible: list[str] = field(default_factory=list)  # records with problems
    errors: list[str] = field(default_factory=list)  # broken lockfile, id collisions: fail
    new: list[str] = field(default_factory=list)  # records without a recorded version
    pending: dict[str, int] = field(default_factory=dict)  # changed compatibly: next version
    unchanged: dict[str, int] = field(default_factory=dict)  # latest recorded version
    removed: list[str] = field(default_factory=list)  # recorded, but no schema anymore
    _to_record: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.errors

    def lines(self) -> list[str]:
        """One line per finding, failures first, and a summary line last."""
        lines = [f"error: {error}" for error in self.errors]
        lines += [f"incompatible: {problem}" for problem in self.problems]
        lines += [f"new: {name} has no recorded version (record it as v1 with {RECORD_HINT})"
                  for name in self.new]
        lines += [f"pending: {name} changed compatibly since v{version - 1}"
                  f" (record it as v{version} with {RECORD_HINT})"
                  for name, version in self.pending.items()]
        lines += [f"removed: {name} has recorded versions but no schema; its old events"
                  " still decode with their own schema" for name in self.removed]
        lines += [f"ok: {name} v{version}" for name, version in self.unchanged.items()]
        total = len(self.new) + len(self.pending) + len(self.unchanged) + len(self.incompatible)
        summary = (f"{total} records: {len(self.unchanged)} unchanged, {len(self.new)} new,"
                   f" {len(self.pending)} pending, {len(self.incompatible)} incompatible")
        if self.ok:
            lines.append(f"{summary}: OK")
        else:
            lines.append(f"{summary}: FAILED (old events must stay readable: give new fields"
                         " defaults, keep enum symbols and union branches, only promote types)")
        return lines


def check_repository(schemas: dict[str, dict] | None = None,
                     versions: Mapping[str, Sequence[str | dict]] | None = None) -> CheckReport:
    """Compare the current record schemas to every recorded version of them."""
    schemas = current_schemas() if schemas is None else schemas
    if versions is None:
        versions = recorded_versions()
    report = CheckReport()
    ids: dict[int, tuple[str, str]] = {}  # schema id -> (label, canonical form)

    def claim_id(label: str, schema: dict) -> None:
        try:
            schema_id, form = schema_id_for(schema), canonical(schema)
        except Exception as exc:  # fastavro rejects the schema itself
            report.errors.append(f"{label} is not a valid schema: {exc}")
            return
        other = ids.setdefault(schema_id, (label, form))
        if other[1] != form:
            report.errors.append(f"{label} and {other[0]} have the same schema id {schema_id}:"
                                 " rename or reorder a field")

    recorded: dict[str, list[tuple[int, dict]]] = {}  # name -> (version number, schema)
    for name in sorted(versions):
        recorded[name] = []
        for number, entry in enumerate(versions[name], 1):
            try:
                schema = parse_recorded(name, number, entry) if isinstance(entry, str) else entry
            except SchemaError as exc:
                report.errors.append(str(exc))
                continue
            recorded[name].append((number, schema))
            claim_id(f"{name} v{number}", schema)
        if name not in schemas:
            report.removed.append(name)

    for name in sorted(schemas):
        schema = schemas[name]
        claim_id(f"{name} (current)", schema)
        old = recorded.get(name, [])
        if not old:
            report.new.append(name)
            report._to_record[name] = schema_json(schema)
            continue
        problems = [f"{name} cannot read its v{number}: {problem}"
                    for number, writer in old
                    for problem in check_backward(schema, writer)]
        if problems:
            report.problems += problems
            report.incompatible.append(name)
        elif _wire_form(schema) == _wire_form(old[-1][1]):
            report.unchanged[name] = len(versions[name])
        else:
            report.pending[name] = len(versions[name]) + 1
            report._to_record[name] = schema_json(schema)
    return report


def record_versions(schemas: dict[str, dict] | None = None,
                    path: Path | None = None) -> list[str]:
    """Append every new and pending version to the lockfile; one line per version recorded.

    Refuses (`IncompatibleSchemaError`) when the check fails: nothing is recorded then.
    """
    path = VERSIONS_FILE if path is None else path
    versions = recorded_versions(path)
    report = check_repository(schemas, versions)
    if not report.ok:
        first = (report.errors + report.problems)[0]
        count = len(report.errors) + len(report.problems)
        raise IncompatibleSchemaError(f"nothing recorded, {count} problem(s), first: {first}")
    lines = []
    for name, text in report._to_record.items():
        versions.setdefault(name, []).append(text)
        lines.append(f"recorded: {name} v{len(versions[name])}")
    if lines:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(versions, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, path)
    return lines


def _wire_form(schema: dict) -> str:
    try:
        return canonical(schema)
    except Exception:  # reported by the id check already
        return schema_json(schema)
