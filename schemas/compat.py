"""Backward compatibility of Avro schemas, by the Avro specification's schema resolution rules.

`check_backward(reader, writer)` lists why data written with `writer` (an older version)
cannot be read with `reader` (the newer one); an empty list means it can. Messages speak of
evolution, old = writer, new = reader, and start with a path into the schema:

    pit.pool.ModelTransitioned.to_state: enum symbol 'Hot' removed

Paths add `.field` for record fields, `[]` for array items and `{}` for map values.
Logical types are ignored: only the underlying Avro type decides how bytes are read.
Named types are matched by unqualified name (as the specification says, and as fastavro
resolves), or by one of the reader's aliases.
"""

from __future__ import annotations

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED = frozenset({"record", "error", "enum", "fixed"})
PROMOTIONS = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}


def check_backward(reader: dict, writer: dict) -> list[str]:
    """Problems reading data written with `writer` using `reader`; empty when compatible."""
    checker = _Checker(_Side(reader), _Side(writer))
    root = _fullname(reader, "") if isinstance(reader, dict) and "name" in reader else ""
    checker.check(reader, "", writer, "", root or "<root>")
    return checker.problems


def _qualify(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _fullname(schema: dict, namespace: str) -> str:
    return _qualify(schema["name"], schema.get("namespace", namespace) or "")


def _short(name: str) -> str:
    return name.rpartition(".")[2]


def _space(fullname: str) -> str:
    return fullname.rpartition(".")[0]


class _Unknown:
    """A reference to a named type the schema does not define."""

    def __init__(self, name: str) -> None:
        self.name = name


class _Side:
    """One schema with every named type it defines, so references can be resolved.

    The names are collected from the whole schema first: a field the other side ignores
    may hold the definition that a later field refers to.
    """

    def __init__(self, schema: object) -> None:
        self.names: dict[str, dict] = {}
        self._collect(schema, "")

    def _collect(self, schema: object, namespace: str) -> None:
        if isinstance(schema, list):
            for branch in schema:
                self._collect(branch, namespace)
            return
        if not isinstance(schema, dict):
            return
        kind = schema.get("type")
        if isinstance(kind, (dict, list)):
            self._collect(kind, namespace)
        elif kind in NAMED:
            name = _fullname(schema, namespace)
            self.names.setdefault(name, schema)
            for field in schema.get("fields", ()):
                self._collect(field.get("type"), _space(name))
        elif kind == "array":
            self._collect(schema.get("items"), namespace)
        elif kind == "map":
            self._collect(schema.get("values"), namespace)

    def resolve(self, schema: object, namespace: str) -> tuple[object, str]:
        """The schema with name references replaced by their definitions, and its namespace."""
        while True:
            if isinstance(schema, dict):
                kind = schema.get("type")
                if isinstance(kind, (dict, list)) or (
                    isinstance(kind, str) and kind not in PRIMITIVES and kind not in NAMED
                    and kind not in ("array", "map")
                ):
                    schema = kind  # {"type": {...}} or {"type": "some.Name"}
                    continue
                if kind in NAMED:
                    return schema, _space(_fullname(schema, namespace))
                return schema, namespace
            if isinstance(schema, str) and schema not in PRIMITIVES:
                for candidate in (_qualify(schema, namespace), schema):
                    if candidate in self.names:
                        definition = self.names[candidate]
                        return definition, _space(_fullname(definition, _space(candidate)))
                return _Unknown(_qualify(schema, namespace)), namespace
            return schema, namespace


def _kind(schema: object) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        kind = schema.get("type")
        return "record" if kind == "error" else str(kind)
    if isinstance(schema, _Unknown):
        return "unknown"
    return str(schema)


def _describe(schema: object, namespace: str = "") -> str:
    """A short name for a type in a message: `long`, `pit.pool.ModelState`, `array<string>`."""
    if isinstance(schema, list):
        return "union [" + ", ".join(_describe(branch, namespace) for branch in schema) + "]"
    if isinstance(schema, _Unknown):
        return schema.name
    if isinstance(schema, str):
        return schema if schema in PRIMITIVES else _qualify(schema, namespace)
    if isinstance(schema, dict):
        kind = schema.get("type")
        if isinstance(kind, (dict, list)):
            return _describe(kind, namespace)
        if kind in NAMED:
            return _fullname(schema, namespace)
        if kind == "array":
            return f"array<{_describe(schema.get('items'), namespace)}>"
        if kind == "map":
            return f"map<{_describe(schema.get('values'), namespace)}>"
        return _describe(kind, namespace)
    return repr(schema)


class _Checker:
    def __init__(self, reader: _Side, writer: _Side) -> None:
        self.reader = reader
        self.writer = writer
        self.problems: list[str] = []
        self._in_progress: set[tuple[str, str]] = set()

    def check(self, r: object, r_ns: str, w: object, w_ns: str, path: str) -> None:
        self.problems.extend(self._check(r, r_ns, w, w_ns, path))

    def _check(self, r: object, r_ns: str, w: object, w_ns: str, path: str) -> list[str]:
        r, r_ns = self.reader.resolve(r, r_ns)
        w, w_ns = self.writer.resolve(w, w_ns)
        r_kind, w_kind = _kind(r), _kind(w)
        if r_kind == "unknown":
            return [f"{path}: new schema refers to undefined type {r.name}"]
        if w_kind == "unknown":
            return [f"{path}: old schema refers to undefined type {w.name}"]
        if w_kind == "union":
            return self._writer_union(r, r_ns, w, w_ns, path)
        if r_kind == "union":
            return self._reader_union(r, r_ns, w, w_ns, path)
        if w_kind in PRIMITIVES and r_kind in PRIMITIVES:
            if w_kind == r_kind or r_kind in PROMOTIONS.get(w_kind, ()):
                return []
            return [f"{path}: type changed from {w_kind} to {r_kind}"]
        if w_kind != r_kind:
            return [f"{path}: type changed from {_describe(w, w_ns)} to {_describe(r, r_ns)}"]
        if w_kind == "array":
            return self._check(r["items"], r_ns, w["items"], w_ns, f"{path}[]")
        if w_kind == "map":
            return self._check(r["values"], r_ns, w["values"], w_ns, f"{path}{{}}")
        return self._named(r, r_ns, w, w_ns, path)

    def _matches(self, r: object, r_ns: str, w: object, w_ns: str) -> bool:
        """The specification's shallow match, used to pick a reader union branch."""
        r, r_ns = self.reader.resolve(r, r_ns)
        w, w_ns = self.writer.resolve(w, w_ns)
        r_kind, w_kind = _kind(r), _kind(w)
        if w_kind in PRIMITIVES and r_kind in PRIMITIVES:
            return w_kind == r_kind or r_kind in PROMOTIONS.get(w_kind, ())
        if w_kind != r_kind:
            return False
        if w_kind in ("array", "map"):
            return True
        if w_kind in ("record", "enum", "fixed"):
            return _name_matches(r, r_ns, _fullname(w, w_ns))
        return False

    def _reader_union(self, r: list, r_ns: str, w: object, w_ns: str, path: str) -> list[str]:
        """A non-union old type must be readable by some branch of the new union."""
        first_match: list[str] | None = None
        for branch in r:
            problems = self._check(branch, r_ns, w, w_ns, path)
            if not problems:
                return []
            if first_match is None and self._matches(branch, r_ns, w, w_ns):
                first_match = problems
        if first_match is not None:
            return first_match
        return [f"{path}: type changed from {_describe(w, w_ns)} to {_describe(r, r_ns)}"]

    def _writer_union(self, r: object, r_ns: str, w: list, w_ns: str, path: str) -> list[str]:
        """Every branch of the old union must be readable with the new type."""
        problems: list[str] = []
        for branch in w:
            branch_problems = self._check(r, r_ns, branch, w_ns, path)
            if not branch_problems:
                continue
            label = _describe(branch, w_ns)
            if _kind(r) == "union":
                if any(self._matches(option, r_ns, branch, w_ns) for option in r):
                    problems.extend(branch_problems)
                else:
                    problems.append(f"{path}: union branch '{label}' removed")
            elif self._matches(r, r_ns, branch, w_ns):
                problems.extend(branch_problems)
            else:
                problems.append(
                    f"{path}: union branch '{label}' of old type {_describe(w, w_ns)}"
                    f" cannot be read as {_describe(r, r_ns)}"
                )
        return problems

    def _named(self, r: dict, r_ns: str, w: dict, w_ns: str, path: str) -> list[str]:
        kind = _kind(r)
        r_name, w_name = _fullname(r, r_ns), _fullname(w, w_ns)
        if not _name_matches(r, r_ns, w_name):
            return [f"{path}: {kind} renamed from {w_name} to {r_name}"
                    f" (add the alias '{w_name}' to read old data)"]
        if kind == "fixed":
            if r.get("size") != w.get("size"):
                return [f"{path}: fixed size changed from {w.get('size')} to {r.get('size')}"]
            return []
        if kind == "enum":
            symbols = set(r.get("symbols", ()))
            default = r.get("default")
            if default is not None and default in symbols:
                return []
            return [f"{path}: enum symbol '{symbol}' removed"
                    for symbol in w.get("symbols", ()) if symbol not in symbols]
        return self._record(r, r_name, w, w_name, path)

    def _record(self, r: dict, r_name: str, w: dict, w_name: str, path: str) -> list[str]:
        key = (r_name, w_name)
        if key in self._in_progress:  # a recursive type: assume what is being checked
            return []
        self._in_progress.add(key)
        try:
            written = {field["name"]: field for field in w.get("fields", ())}
            problems: list[str] = []
            for field in r.get("fields", ()):
                name = field["name"]
                old = written.get(name)
                if old is None:
                    old = next((written[alias] for alias in field.get("aliases", ())
                                if alias in written), None)
                if old is not None:
                    problems.extend(self._check(field["type"], _space(r_name), old["type"],
                                                _space(w_name), f"{path}.{name}"))
                elif "default" not in field:
                    problems.append(f"{path}.{name}: field added without a default")
            return problems
        finally:
            self._in_progress.discard(key)


def _name_matches(reader: dict, r_ns: str, writer_name: str) -> bool:
    reader_name = _fullname(reader, r_ns)
    if _short(reader_name) == _short(writer_name):
        return True
    for alias in reader.get("aliases", ()):
        if alias == _short(writer_name) or _qualify(alias, _space(reader_name)) == writer_name:
            return True
    return False
