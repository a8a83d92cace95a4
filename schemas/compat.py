"""Backward compatibility of Avro schemas: Apache Avro's checker decides, this module says where.

`check_backward(reader, writer)` lists why data written with `writer` (an older version)
cannot be read with `reader` (the newer one); an empty list means it can. Messages speak of
evolution, old = writer, new = reader, and start with a path into the schema:

    pit.pool.ModelTransitioned.to_state: enum symbol 'Hot' removed

Paths add `.field` for record fields, `[]` for array items and `{}` for map values.

The verdict is `avro.compatibility.ReaderWriterCompatibilityChecker`'s (the one Karapace
uses). Its report cannot name a field: it gives JSON-pointer locations by field index, as a
set unpaired with the set of messages, restarted at "/" below a union of the old schema, and
once per pair of named types however many fields use them. So when it says incompatible,
`_Explainer` walks the two parsed schemas (avro resolved the names) and asks the same checker
about each part, to name the paths that cannot be read.
"""

from __future__ import annotations

from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityType,
    lookup_writer_field,
    schema_name_equals,
)
from avro.errors import AvroException
from avro.schema import (
    ArraySchema,
    EnumSchema,
    FixedSchema,
    MapSchema,
    NamedSchema,
    RecordSchema,
    Schema,
    UnionSchema,
    make_avsc_object,
)

NAMED = frozenset({"record", "error", "enum", "fixed"})


def check_backward(reader: dict, writer: dict) -> list[str]:
    """Problems reading data written with `writer` using `reader`; empty when compatible."""
    root = _fullname(reader, "") if isinstance(reader, dict) and "name" in reader else "<root>"
    parsed: list[Schema] = []
    for side, schema in (("new", reader), ("old", writer)):
        try:
            parsed.append(make_avsc_object(_qualified_aliases(schema, "")))
        except AvroException as exc:
            return [f"{root}: {side} schema is not valid: {exc}"]
    return _Explainer().explain(parsed[0], parsed[1], root)


def _fullname(schema: dict, namespace: str) -> str:
    name = schema["name"]
    space = schema.get("namespace", namespace) or ""
    return name if "." in name or not space else f"{space}.{name}"


def _qualified_aliases(schema: object, namespace: str) -> object:
    """A copy whose named types' aliases are full names.

    The specification lets an alias be relative to the namespace of the name it aliases;
    avro's checker compares aliases to the old type's full name only.
    """
    if isinstance(schema, list):
        return [_qualified_aliases(branch, namespace) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    copy = dict(schema)
    kind = schema.get("type")
    if isinstance(kind, (dict, list)):
        copy["type"] = _qualified_aliases(kind, namespace)
    elif kind in NAMED:
        namespace = _fullname(schema, namespace).rpartition(".")[0]
        if "aliases" in schema:
            copy["aliases"] = [alias if "." in alias or not namespace else f"{namespace}.{alias}"
                               for alias in schema["aliases"]]
        if "fields" in schema:
            copy["fields"] = [{**field, "type": _qualified_aliases(field.get("type"), namespace)}
                              for field in schema["fields"]]
    for key in ("items", "values"):
        if key in schema:
            copy[key] = _qualified_aliases(schema[key], namespace)
    return copy


def _describe(schema: Schema) -> str:
    """A short name for a type in a message: `long`, `pit.pool.ModelState`, `array<string>`."""
    if isinstance(schema, UnionSchema):
        return "union [" + ", ".join(_describe(branch) for branch in schema.schemas) + "]"
    if isinstance(schema, NamedSchema):
        return schema.fullname
    if isinstance(schema, ArraySchema):
        return f"array<{_describe(schema.items)}>"
    if isinstance(schema, MapSchema):
        return f"map<{_describe(schema.values)}>"
    return str(schema.type)


class _Explainer:
    def __init__(self) -> None:
        self._checker = ReaderWriterCompatibilityChecker()  # memoizes pairs across calls
        self._in_progress: set[tuple[int, int]] = set()

    def _compatible(self, reader: Schema, writer: Schema) -> bool:
        result = self._checker.get_compatibility(reader, writer)
        return result.compatibility is SchemaCompatibilityType.compatible

    def explain(self, r: Schema, w: Schema, path: str) -> list[str]:
        if self._compatible(r, w):
            return []
        problems = self._where(r, w, path)
        if problems:
            return problems
        # The checker refused a case the walk below does not name: its own words, at `path`.
        messages = self._checker.get_compatibility(r, w).messages
        return [f"{path}: {'; '.join(sorted(messages)) or 'incompatible'}"]

    def _where(self, r: Schema, w: Schema, path: str) -> list[str]:
        if isinstance(w, UnionSchema):
            return self._old_union(r, w, path)
        if isinstance(r, UnionSchema):
            branch = _branch_for(r, w)
            if branch is None:
                return [f"{path}: type changed from {_describe(w)} to {_describe(r)}"]
            return self.explain(branch, w, path)
        if r.type != w.type:
            return [f"{path}: type changed from {_describe(w)} to {_describe(r)}"]
        if isinstance(r, ArraySchema) and isinstance(w, ArraySchema):
            return self.explain(r.items, w.items, f"{path}[]")
        if isinstance(r, MapSchema) and isinstance(w, MapSchema):
            return self.explain(r.values, w.values, f"{path}{{}}")
        if isinstance(r, NamedSchema) and isinstance(w, NamedSchema):
            return self._named(r, w, path)
        return []

    def _old_union(self, r: Schema, w: UnionSchema, path: str) -> list[str]:
        """Every branch of the old union must be readable with the new type."""
        problems: list[str] = []
        for branch in w.schemas:
            if self._compatible(r, branch):
                continue
            label = _describe(branch)
            target = _branch_for(r, branch) if isinstance(r, UnionSchema) else r
            if target is None:
                problems.append(f"{path}: union branch '{label}' removed")
            elif target.type != branch.type:
                problems.append(f"{path}: union branch '{label}' of old type {_describe(w)}"
                                f" cannot be read as {_describe(r)}")
            else:
                problems.extend(self.explain(target, branch, path))
        return problems

    def _named(self, r: NamedSchema, w: NamedSchema, path: str) -> list[str]:
        kind = "record" if r.type == "error" else r.type
        if not schema_name_equals(r, w):
            return [f"{path}: {kind} renamed from {w.fullname} to {r.fullname}"
                    f" (add the alias '{w.fullname}' to read old data)"]
        if isinstance(r, FixedSchema) and isinstance(w, FixedSchema):
            return [f"{path}: fixed size changed from {w.size} to {r.size}"]
        if isinstance(r, EnumSchema) and isinstance(w, EnumSchema):
            return [f"{path}: enum symbol '{symbol}' removed"
                    for symbol in w.symbols if symbol not in r.symbols]
        if isinstance(r, RecordSchema) and isinstance(w, RecordSchema):
            return self._record(r, w, path)
        return []

    def _record(self, r: RecordSchema, w: RecordSchema, path: str) -> list[str]:
        key = (id(r), id(w))
        if key in self._in_progress:  # a recursive type: reported where it was first met
            return []
        self._in_progress.add(key)
        try:
            problems: list[str] = []
            for field in r.fields:
                old = lookup_writer_field(writer_schema=w, reader_field=field)
                if old is not None:
                    problems.extend(self.explain(field.type, old.type, f"{path}.{field.name}"))
                elif not field.has_default:
                    problems.append(f"{path}.{field.name}: field added without a default")
            return problems
        finally:
            self._in_progress.discard(key)


def _branch_for(union: UnionSchema, writer: Schema) -> Schema | None:
    """The new union's branch the old type would be read with: the same kind, by name for
    named types. None when no branch has that kind (a promotion would have been compatible)."""
    for branch in union.schemas:
        if branch.type != writer.type:
            continue
        if not isinstance(branch, NamedSchema) or not isinstance(writer, NamedSchema) \
                or schema_name_equals(branch, writer):
            return branch
    return None
