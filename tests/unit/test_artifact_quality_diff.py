"""Artifact quality (structure by content type, utility from use) and diffs (unified text diff,
metadata diff)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from streams.artifacts.diff import MetadataDiff, metadata_diff, text_diff
from streams.artifacts.errors import ArtifactError
from streams.artifacts.quality import (
    NEUTRAL,
    Quality,
    Structure,
    content_kind,
    quality,
    structure,
    utility,
)

SCHEMA = {"type": "object", "required": ["id"],
          "properties": {"id": {"type": "integer"}, "tags": {"type": "array",
                                                             "items": {"type": "string"}}}}


@pytest.mark.parametrize(("content_type", "kind"), [
    ("application/json", "json"), ("application/ld+json; charset=utf-8", "json"),
    ("TEXT/JSON", "json"), ("text/csv", "csv"), ("application/csv", "csv"),
    ("text/plain", "text"), ("text/markdown", "text"), ("application/xml", "text"),
    ("image/svg+xml", "text"), ("application/x-yaml", "text"),
    ("application/octet-stream", "unknown"), ("image/png", "unknown"), ("", "unknown"),
])
def test_content_types_choose_their_check(content_type: str, kind: str) -> None:
    assert content_kind(content_type) == kind


def test_json_parses_and_fits_its_schema() -> None:
    assert structure(b'{"id": 1, "tags": ["a"]}', "application/json", SCHEMA) == Structure(
        1.0, "json")
    assert structure(b"[1, 2]", "application/json") == Structure(1.0, "json")
    broken = structure(b'{"tags": [1]}', "application/json", SCHEMA)
    assert broken.score == 0.25
    assert broken.issues == ("at $: 'id' is a required property",
                             "at $.tags[0]: 1 is not of type 'string'")
    unparsable = structure(b'{"id": ', "application/json")
    assert unparsable.score == 0.0 and unparsable.issues[0].startswith("not JSON: ")
    assert structure(b'{"x": NaN}', "application/json").issues == ("not JSON: NaN is not JSON",)
    assert structure(b"", "application/json").score == 0.0


def test_an_invalid_json_schema_is_a_clear_error() -> None:
    with pytest.raises(ArtifactError, match=r"^invalid JSON schema at type: "):
        structure(b"{}", "application/json", {"type": "nope"})


def test_csv_is_scored_by_its_rectangular_rows() -> None:
    assert structure(b"a,b\r\n1,2\r\n3,4\r\n", "text/csv") == Structure(1.0, "csv")
    assert structure(b'\xef\xbb\xbfa,b\n"x\ny",2\n', "text/csv") == Structure(1.0, "csv")
    ragged = structure(b"a,b,c\n1,2,3\n4,5\n6\n", "text/csv")
    assert ragged.score == 0.5
    assert ragged.issues == ("row 3 has 2 fields, the header has 3",
                             "row 4 has 1 fields, the header has 3")
    assert structure(b"", "text/csv") == Structure(NEUTRAL, "csv", ("no rows",))
    assert structure(b'a,"b\n', "text/csv").score == 0.0  # unterminated quote
    assert structure(b"a,\xff\n", "text/csv").issues == ("invalid UTF-8 at byte 2",)


def test_text_must_be_utf8_and_unknown_types_are_neutral() -> None:
    assert structure("héllo".encode(), "text/plain") == Structure(1.0, "text")
    assert structure(b"ok\xc3", "text/plain") == Structure(0.0, "text",
                                                         ("invalid UTF-8 at byte 2",))
    assert structure(b"\x89PNG\xff", "image/png") == Structure(NEUTRAL, "unknown")


def test_utility_saturates_and_derivations_weigh_more_than_reads() -> None:
    assert utility(0, 0) == 0.0
    assert utility(10, 0) == 0.5
    assert utility(0, 2) == 0.5
    assert utility(100, 0) == 0.9091
    assert utility(-5, 0) == 0.0
    assert [utility(n, 0) for n in (1, 2, 4, 8)] == sorted(utility(n, 0) for n in (1, 2, 4, 8))


def test_the_score_combines_its_components() -> None:
    assert quality(None, 0, 0) == Quality(0.3, NEUTRAL, 0.0)
    assert quality(1.0, 10, 0) == Quality(0.8, 1.0, 0.5)
    assert quality(0.0, 0, 0) == Quality(0.0, 0.0, 0.0)
    assert quality(2.0, 10**9, 10**9).score == 1.0  # clamped: never above 1


# --- diffs -----------------------------------------------------------------------------------

def test_a_unified_diff_between_two_text_versions() -> None:
    old = b"one\ntwo\nthree\n"
    new = b"one\n2\nthree\nfour"
    assert text_diff(old, new, old_label="report v1", new_label="report v2") == (
        "--- report v1\n+++ report v2\n@@ -1,3 +1,4 @@\n one\n-two\n+2\n three\n+four\n"
        "\\ No newline at end of file\n")
    assert text_diff(old, old) == ""
    assert text_diff(b"", b"x\n") == "--- a\n+++ b\n@@ -0,0 +1 @@\n+x\n"


def test_no_text_diff_of_binary_or_invalid_utf8() -> None:
    with pytest.raises(ArtifactError, match=r"^new is binary \(a NUL byte at 1\), not text"):
        text_diff(b"x", b"a\x00b", new_label="new")
    with pytest.raises(ArtifactError, match=r"^v1 is not text \(invalid UTF-8 at byte 0\)"):
        text_diff(b"\xff", b"x", old_label="v1")


@dataclass(frozen=True)
class Entry:
    size: int
    content_type: str
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


def test_a_metadata_diff_names_every_difference() -> None:
    old = Entry(10, "text/plain", ("a", "b"), {"k": 1, "gone": "x", "same": [1], "flag": 1})
    new = Entry(12, "text/markdown", ("b", "c"), {"k": 2, "new": None, "same": [1],
                                                  "flag": True})
    diff = metadata_diff(old, new)
    assert diff == MetadataDiff(added={"new": None}, removed={"gone": "x"},
                                changed={"flag": (1, True), "k": (1, 2)},
                                tags_added=("c",), tags_removed=("a",),
                                content_type=("text/plain", "text/markdown"), size=(10, 12))
    assert diff.lines() == ["~ content_type: text/plain -> text/markdown", "~ size: 10 -> 12",
                            "+ tag c", "- tag a", "+ new: null", '- gone: "x"',
                            "~ flag: 1 -> true", "~ k: 1 -> 2"]
    assert not diff.empty
    same = metadata_diff(old, old)
    assert same.empty and same.lines() == []


def test_a_search_highlight_reads_as_text_in_a_terminal_and_in_a_pipe() -> None:
    from streams.artifacts.cli import for_terminal

    fragment = 'say &quot;<mark>revenue</mark>&quot; &lt;mark&gt; &amp; more'  # as the engine gives
    assert for_terminal(fragment, tty=False) == 'say "[revenue]" <mark> & more'
    assert for_terminal(fragment, tty=True) == 'say "\033[1mrevenue\033[0m" <mark> & more'
