"""Diffs between artifacts (issue 5). Pure: the caller reads the content and catalog entries.

* `text_diff`: a unified diff (difflib) of two versions of a text artifact, lines split on
  "\\n" only, a last line without a newline marked as GNU diff marks it. Content with a NUL
  byte or invalid UTF-8 is not text: ArtifactError naming which side and why.
* `side_by_side`: the same comparison as rows for two columns (the console's diff).
* `metadata_diff`: for any two artifacts (text or not): metadata keys added, removed and
  changed (values compared as canonical JSON, so 1 and true differ), tags added and removed,
  content type and size changes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from streams.artifacts.catalog import canonical_json
from streams.artifacts.errors import ArtifactError
from streams.artifacts.quality import utf8_error

NO_NEWLINE = "\\ No newline at end of file\n"


def as_text(content: bytes, label: str) -> str:
    """The content as text, or ArtifactError saying why it is not (naming `label`)."""
    nul = content.find(b"\x00")
    if nul >= 0:
        raise ArtifactError(f"{label} is binary (a NUL byte at {nul}), not text: no text diff")
    problem = utf8_error(content)
    if problem is not None:
        raise ArtifactError(f"{label} is not text ({problem}): no text diff")
    return content.decode("utf-8")


def _lines(text: str) -> list[str]:
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def text_diff(old: bytes, new: bytes, *, old_label: str = "a", new_label: str = "b",
              context: int = 3) -> str:
    """The unified diff turning `old` into `new`; "" when they are the same text."""
    a, b = as_text(old, old_label), as_text(new, new_label)
    out = []
    for line in difflib.unified_diff(_lines(a), _lines(b), old_label, new_label, n=context):
        out.append(line if line.endswith("\n") else line + "\n" + NO_NEWLINE)
    return "".join(out)


def side_by_side(old: bytes, new: bytes, *, old_label: str = "a", new_label: str = "b"
                 ) -> list[dict[str, Any]]:
    """The same diff as rows for two columns: {op, old_no, old, new_no, new}, op one of
    equal, replace, delete, insert; a replaced block pairs its lines in order."""
    a = as_text(old, old_label).splitlines()
    b = as_text(new, new_label).splitlines()
    rows: list[dict[str, Any]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        for k in range(max(i2 - i1, j2 - j1)):
            i, j = i1 + k, j1 + k
            rows.append({"op": op,
                         "old_no": i + 1 if i < i2 else None, "old": a[i] if i < i2 else None,
                         "new_no": j + 1 if j < j2 else None, "new": b[j] if j < j2 else None})
    return rows


class Described(Protocol):
    """What a metadata diff compares: a catalog entry (catalog.Artifact) or a view row."""

    @property
    def size(self) -> int: ...

    @property
    def content_type(self) -> str: ...

    @property
    def tags(self) -> Iterable[str]: ...

    @property
    def metadata(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class MetadataDiff:
    added: dict[str, Any]                   # key -> value in the new one only
    removed: dict[str, Any]                 # key -> value in the old one only
    changed: dict[str, tuple[Any, Any]]     # key -> (old value, new value)
    tags_added: tuple[str, ...]
    tags_removed: tuple[str, ...]
    content_type: tuple[str, str] | None    # (old, new) when it changed
    size: tuple[int, int] | None            # (old, new) when it changed

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.tags_added
                    or self.tags_removed or self.content_type or self.size)

    def lines(self) -> list[str]:
        """One line per difference: "+ key: value", "- key: value", "~ key: old -> new"."""
        lines = []
        if self.content_type is not None:
            lines.append("~ content_type: {} -> {}".format(*self.content_type))
        if self.size is not None:
            lines.append("~ size: {} -> {}".format(*self.size))
        lines += [f"+ tag {tag}" for tag in self.tags_added]
        lines += [f"- tag {tag}" for tag in self.tags_removed]
        lines += [f"+ {key}: {canonical_json(value)}" for key, value in self.added.items()]
        lines += [f"- {key}: {canonical_json(value)}" for key, value in self.removed.items()]
        lines += [f"~ {key}: {canonical_json(old)} -> {canonical_json(new)}"
                  for key, (old, new) in self.changed.items()]
        return lines


def metadata_diff(old: Described, new: Described) -> MetadataDiff:
    before, after = old.metadata, new.metadata
    old_tags, new_tags = set(old.tags), set(new.tags)
    return MetadataDiff(
        added={key: after[key] for key in sorted(after.keys() - before.keys())},
        removed={key: before[key] for key in sorted(before.keys() - after.keys())},
        changed={key: (before[key], after[key]) for key in sorted(before.keys() & after.keys())
                 if canonical_json(before[key]) != canonical_json(after[key])},
        tags_added=tuple(sorted(new_tags - old_tags)),
        tags_removed=tuple(sorted(old_tags - new_tags)),
        content_type=(None if old.content_type == new.content_type
                      else (old.content_type, new.content_type)),
        size=None if old.size == new.size else (old.size, new.size))
