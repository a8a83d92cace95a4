"""Artifact quality (issue 5): a score in [0, 1] that shows its components. Pure.

    score     = 0.6 * structure + 0.4 * utility            (each rounded to 4 places)
    structure = how well the content fits its content type (below), 0.5 when unknown
    utility   = uses / (uses + 10),  uses = accesses + 5 * derivations

Structure, by content type (parameters such as "; charset=utf-8" are ignored):
* JSON (application/json, text/json, */*+json): 1.0 if it parses (strict JSON: no NaN or
  Infinity) and matches the JSON schema when one is given; 0.25 if it parses but breaks the
  schema; 0.0 if it does not parse.
* CSV (text/csv, application/csv): the share of rows with the header's number of fields (1.0
  when rectangular); 0.0 if it is not UTF-8 or not CSV; 0.5 when it has no rows.
* Text (text/*, XML, YAML, JavaScript, NDJSON): 1.0 if valid UTF-8, else 0.0.
* Anything else: 0.5, neutral - nothing is known for or against it.

Structure needs the bytes, so whoever has them (the client storing an artifact) computes it
with `structure` and sends the result with the StoreArtifact command; the catalog decider
computes utility from the usage it records and combines both with `quality`. Utility
saturates: the first uses matter most, ten uses give 0.5, a hundred about 0.91; one
derivation (another artifact derived from this one) weighs like five reads. A rational
function rather than an exponential, so every machine computes the same bits.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from streams.artifacts.errors import ArtifactError

NEUTRAL = 0.5
STRUCTURE_WEIGHT = 0.6
UTILITY_WEIGHT = 0.4
DERIVATION_WEIGHT = 5   # one derivation counts like this many reads
UTILITY_HALF = 10       # uses at which utility is 0.5
SCHEMA_MISMATCH = 0.25  # JSON that parses but breaks its schema
PLACES = 4
MAX_ISSUES = 10         # issues listed at most (the score counts them all)

_TEXT_TYPES = frozenset({"application/xml", "application/yaml", "application/x-yaml",
                         "application/javascript", "application/x-ndjson"})


@dataclass(frozen=True)
class Structure:
    """How well content fits its content type: a score in [0, 1] and why it is not 1."""

    score: float
    kind: str  # "json" | "csv" | "text" | "unknown"
    issues: tuple[str, ...] = ()


@dataclass(frozen=True)
class Quality:
    score: float
    structure: float
    utility: float


def content_kind(content_type: str) -> str:
    """The structure check a content type gets: "json", "csv", "text" or "unknown"."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("application/json", "text/json") or media.endswith("+json"):
        return "json"
    if media in ("text/csv", "application/csv"):
        return "csv"
    if media.startswith("text/") or media in _TEXT_TYPES or media.endswith("+xml"):
        return "text"
    return "unknown"


def utf8_error(content: bytes) -> str | None:
    """Why `content` is not valid UTF-8 (naming the byte offset), or None when it is."""
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start}"
    return None


def structure(content: bytes, content_type: str,
              schema: dict[str, Any] | None = None) -> Structure:
    """Check `content` against its content type (and JSON content against `schema`).

    Raises ArtifactError when `schema` is not a valid JSON schema."""
    kind = content_kind(content_type)
    if kind == "unknown":
        return Structure(NEUTRAL, kind)
    problem = utf8_error(content)
    if problem is not None:
        return Structure(0.0, kind, (problem,))
    text = content.decode("utf-8")
    if kind == "json":
        return _json_structure(text, schema)
    if kind == "csv":
        return _csv_structure(text.removeprefix("\ufeff"))
    return Structure(1.0, kind)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(text: str) -> Any:
    """`json.loads` refusing NaN and Infinity, which Python accepts and JSON does not."""
    return json.loads(text, parse_constant=_reject_constant)


def _json_structure(text: str, schema: dict[str, Any] | None) -> Structure:
    try:
        document = strict_json(text)
    except ValueError as exc:
        return Structure(0.0, "json", (f"not JSON: {exc}",))
    if schema is None:
        return Structure(1.0, "json")
    errors = sorted(_validator(schema).iter_errors(document),
                    key=lambda error: [str(part) for part in error.absolute_path])
    if not errors:
        return Structure(1.0, "json")
    issues = tuple(f"at {error.json_path}: {error.message}" for error in errors[:MAX_ISSUES])
    return Structure(SCHEMA_MISMATCH, "json", issues)


def _validator(schema: dict[str, Any]) -> Any:
    # Imported here: jsonschema takes ~0.1 s to import, and the decider importing this
    # module never validates a schema (the client does).
    from jsonschema import exceptions, validators

    cls = validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "its root"
        raise ArtifactError(f"invalid JSON schema at {where}: {exc.message}") from None
    return cls(schema)


def _csv_structure(text: str) -> Structure:
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline=""), strict=True) if row]
    except csv.Error as exc:
        return Structure(0.0, "csv", (f"not CSV: {exc}",))
    if not rows:
        return Structure(NEUTRAL, "csv", ("no rows",))
    width = len(rows[0])
    ragged = [(number, len(row)) for number, row in enumerate(rows, 1) if len(row) != width]
    issues = tuple(f"row {number} has {fields} fields, the header has {width}"
                   for number, fields in ragged[:MAX_ISSUES])
    return Structure(round(1 - len(ragged) / len(rows), PLACES), "csv", issues)


def utility(accesses: int, derivations: int) -> float:
    """Usefulness from use, in [0, 1): saturating in accesses and derivations."""
    uses = max(0, accesses) + DERIVATION_WEIGHT * max(0, derivations)
    return round(uses / (uses + UTILITY_HALF), PLACES)


def quality(structure_score: float | None, accesses: int, derivations: int) -> Quality:
    """The score and its components; `structure_score` None (not checked) counts as neutral."""
    shape = NEUTRAL if structure_score is None else round(min(1.0, max(0.0, structure_score)),
                                                          PLACES)
    use = utility(accesses, derivations)
    score = round(STRUCTURE_WEIGHT * shape + UTILITY_WEIGHT * use, PLACES)
    return Quality(min(1.0, max(0.0, score)), shape, use)
