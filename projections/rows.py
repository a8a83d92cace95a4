"""Row helpers for views that write a batch at a time."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Table, select

from streams.sql import insert_rows, update_rows

CHUNK = 500  # keys per IN (...) lookup


class Rows:
    """The rows of one table a batch touches: loaded by key once, changed in memory, written
    back once (inserts for new keys, updates for changed ones). The key's leading columns
    are compared for equality, its last one with IN (...)."""

    def __init__(self, table: Table, keys: tuple[str, ...]) -> None:
        self.table, self.keys = table, keys
        self.values = tuple(c.name for c in table.columns if c.name not in keys)
        self.rows: dict[tuple, dict[str, Any]] = {}
        self.stored: set[tuple] = set()
        self.dirty: set[tuple] = set()

    def load(self, conn: Connection, wanted: Iterable[tuple]) -> None:
        groups: dict[tuple, list] = {}
        for key in set(wanted) - self.rows.keys():
            groups.setdefault(key[:-1], []).append(key[-1])
        *prefix, last = (self.table.c[k] for k in self.keys)
        for head, tails in groups.items():
            tails.sort()
            for start in range(0, len(tails), CHUNK):
                stmt = select(self.table).where(
                    *(c == v for c, v in zip(prefix, head, strict=True)),
                    last.in_(tails[start:start + CHUNK]))
                for row in conn.execute(stmt).mappings():
                    key = tuple(row[k] for k in self.keys)
                    self.rows[key] = dict(row)
                    self.stored.add(key)

    def get(self, key: tuple) -> dict[str, Any] | None:
        return self.rows.get(key)

    def add(self, key: tuple, **values: Any) -> dict[str, Any]:
        row = self.rows[key] = {**dict(zip(self.keys, key, strict=True)), **values}
        self.dirty.add(key)
        return row

    def changed(self, key: tuple) -> dict[str, Any]:
        self.dirty.add(key)
        return self.rows[key]

    def write(self, conn: Connection) -> None:
        inserts, updates = [], []
        for key in sorted(self.dirty):
            row = self.rows[key]
            if key in self.stored:
                updates.append((*(row[c] for c in self.values), *key))
            else:
                inserts.append((*key, *(row[c] for c in self.values)))
        insert_rows(conn, self.table, (*self.keys, *self.values), inserts)
        update_rows(conn, self.table, self.keys, self.values, updates)
