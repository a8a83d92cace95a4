"""Properties of artifact quality and diffs.

* A quality score and its components always lie in [0, 1]; utility never falls as use grows.
* Structure scores lie in [0, 1] for any bytes under any content type; JSON written by a
  JSON encoder and tables written by a CSV writer score 1.0.
* A unified text diff, applied to the old text, gives the new text (checked with a small
  patch applier here); equal texts have an empty diff.
* A metadata diff of two catalog entries, applied to the old metadata and tags, gives the
  new ones.
"""

from __future__ import annotations

import csv
import io
import json
import re

from hypothesis import given
from hypothesis import strategies as st

from streams.artifacts.catalog import Artifact
from streams.artifacts.diff import metadata_diff, text_diff
from streams.artifacts.quality import quality, structure, utility

CONTENT_TYPES = ["application/json", "text/csv", "text/plain", "image/png", "application/xml"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=3),
    max_leaves=8)
uses = st.integers(0, 10**6)


@given(st.none() | st.floats(0.0, 1.0), uses, uses)
def test_quality_and_its_components_lie_in_the_unit_interval(shape: float | None,
                                                             accesses: int,
                                                             derivations: int) -> None:
    scored = quality(shape, accesses, derivations)
    for value in (scored.score, scored.structure, scored.utility):
        assert 0.0 <= value <= 1.0


@given(uses, uses, st.integers(0, 1000), st.integers(0, 1000))
def test_utility_never_falls_as_use_grows(accesses: int, derivations: int, more_accesses: int,
                                          more_derivations: int) -> None:
    assert utility(accesses, derivations) <= utility(accesses + more_accesses,
                                                     derivations + more_derivations)


@given(st.binary(max_size=200), st.sampled_from(CONTENT_TYPES))
def test_structure_scores_any_bytes_in_the_unit_interval(content: bytes,
                                                         content_type: str) -> None:
    checked = structure(content, content_type)
    assert 0.0 <= checked.score <= 1.0
    assert checked == structure(content, content_type)


@given(json_values)
def test_encoded_json_has_full_structure(value: object) -> None:
    assert structure(json.dumps(value).encode(), "application/json").score == 1.0


@given(st.integers(1, 4).flatmap(lambda width: st.lists(
    st.lists(st.text(min_size=1, max_size=4).filter(lambda t: "\x00" not in t),
             min_size=width, max_size=width), min_size=1, max_size=5)))
def test_written_tables_are_rectangular(rows: list[list[str]]) -> None:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    assert structure(buffer.getvalue().encode(), "text/csv").score == 1.0


_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@")


def apply_patch(old: str, patch: str) -> str:
    """Apply a unified diff (as text_diff writes it) to `old`."""
    lines = old.split("\n")
    source = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    patch_lines = patch.split("\n")[2:]  # after the --- and +++ headers
    result: list[str] = []
    position = 0
    i = 0
    while i < len(patch_lines) and patch_lines[i]:
        start, count = _HUNK.match(patch_lines[i]).groups()
        start = int(start) - (0 if count == "0" else 1)
        result += source[position:start]
        position = start
        i += 1
        while i < len(patch_lines) and patch_lines[i] and not patch_lines[i].startswith("@@"):
            line, i = patch_lines[i], i + 1
            text = line[1:] + "\n"
            if i < len(patch_lines) and patch_lines[i].startswith("\\ "):
                text, i = line[1:], i + 1  # no newline at the end of the file
            if line[0] in " -":
                assert source[position] == text
                position += 1
            if line[0] in " +":
                result.append(text)
    return "".join(result + source[position:])


@given(st.lists(st.sampled_from(["a", "b", "c", "", "é"]), max_size=12),
       st.lists(st.sampled_from(["a", "b", "c", "", "é"]), max_size=12), st.booleans(),
       st.booleans(), st.integers(0, 3))
def test_applying_a_text_diff_gives_the_new_text(old_lines: list[str], new_lines: list[str],
                                                 old_newline: bool, new_newline: bool,
                                                 context: int) -> None:
    old = "\n".join(old_lines) + ("\n" if old_newline and old_lines else "")
    new = "\n".join(new_lines) + ("\n" if new_newline and new_lines else "")
    patch = text_diff(old.encode(), new.encode(), context=context)
    assert (patch == "") == (old == new)
    assert apply_patch(old, patch) == new


metadata = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), json_values, max_size=4)
tags = st.frozensets(st.sampled_from(["x", "y", "z"]))


@given(metadata, metadata, tags, tags)
def test_applying_a_metadata_diff_gives_the_new_metadata(old: dict, new: dict, old_tags: frozenset,
                                                         new_tags: frozenset) -> None:
    diff = metadata_diff(Artifact("a", 1, "t", 0, tags=tuple(sorted(old_tags)), metadata=old),
                         Artifact("b", 1, "t", 0, tags=tuple(sorted(new_tags)), metadata=new))
    patched = {k: v for k, v in old.items() if k not in diff.removed}
    patched.update(diff.added)
    patched.update({key: after for key, (_, after) in diff.changed.items()})
    assert json.dumps(patched, sort_keys=True) == json.dumps(new, sort_keys=True)
    assert (set(old_tags) - set(diff.tags_removed)) | set(diff.tags_added) == set(new_tags)
    assert diff.empty == (json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True)
                          and old_tags == new_tags)
