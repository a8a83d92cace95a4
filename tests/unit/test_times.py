"""Times for people (streams/times.py): ISO 8601 beside every epoch-ms moment, parsing of
--until/--since, and plain JSON for any state (a PMap too)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from streams.errors import PitError
from streams.persistent import PMap
from streams.times import iso, parse_time_ms, readable, when


class Colour(enum.Enum):
    RED = "red"


@dataclass(frozen=True)
class Thing:
    started_at_ms: int
    elapsed_ms: int
    colour: Colour
    tags: tuple[str, ...]
    models: PMap


def test_a_moment_gets_its_iso_time_beside_it_a_duration_does_not() -> None:
    thing = Thing(1_764_833_293_123, 5_000, Colour.RED, ("a",),
                  PMap().set("m", {"last_used_ms": 0, "loaded_at_ms": 1_764_833_293_000}))
    assert readable(thing) == {
        "started_at": "2025-12-04T07:28:13.123Z", "started_at_ms": 1_764_833_293_123,
        "elapsed_ms": 5_000, "colour": "red", "tags": ["a"],
        "models": {"m": {"last_used": None, "last_used_ms": 0,
                         "loaded_at": "2025-12-04T07:28:13.000Z",
                         "loaded_at_ms": 1_764_833_293_000}}}
    # a key of that name already there is left alone
    assert readable({"done_at_ms": 0, "done_at": "kept"}) == {"done_at_ms": 0, "done_at": "kept"}
    # a moment under its plain name becomes ISO, its milliseconds beside it
    assert readable({"expires_at": 1_764_833_293_123, "applied_at": None, "ran_at": 0}) == {
        "expires_at": "2025-12-04T07:28:13.123Z", "expires_at_ms": 1_764_833_293_123,
        "applied_at": None, "ran_at": None, "ran_at_ms": 0}


@example(1_001)  # timestamp() * 1000 read it as 1000
@given(st.integers(0, 4_102_444_800_000))
def test_iso_parses_back_to_the_same_millisecond(ms: int) -> None:
    assert parse_time_ms(iso(ms), "--until") == ms
    assert parse_time_ms(str(ms), "--until") == ms


def test_parsing_says_which_option_was_wrong_and_printing_says_never() -> None:
    with pytest.raises(PitError, match="--until: 'soon' is neither"):
        parse_time_ms("soon", "--until")
    assert parse_time_ms("2026-12-04T07:28:13+01:00", "--since") == 1_796_365_693_000
    assert when(None, never="never") == "never"
    assert when(1_796_369_293_000) == "2026-12-04 07:28:13 UTC"
