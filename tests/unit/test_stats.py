"""`percentile` (streams/stats.py), as every bench reports its p50 and p99: the value at
rank int(n * fraction) of the sorted values, the last one at most."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.stats import percentile


def test_the_value_at_rank_n_times_the_fraction() -> None:
    hundred = [float(n) for n in range(1, 101)]
    assert percentile(hundred, 0.99) == 100.0  # rank 99 of 0..99: the slowest of a hundred
    assert percentile(hundred, 0.5) == 51.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.25) == 2.0


def test_the_order_of_the_samples_does_not_matter_and_they_are_left_alone() -> None:
    samples = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(samples, 0.0) == 1.0
    assert percentile(samples, 0.6) == 4.0
    assert samples == [5.0, 1.0, 4.0, 2.0, 3.0]


def test_the_ends() -> None:
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 1.0) == 3.0  # past the last rank: the last value
    with pytest.raises(IndexError):
        percentile([], 0.5)


@given(st.lists(st.floats(allow_nan=False), min_size=1),
       st.floats(0, 1), st.floats(0, 1))
def test_a_sample_between_the_least_and_the_most_rising_with_the_fraction(
        values: list[float], low: float, high: float) -> None:
    low, high = sorted((low, high))
    assert percentile(values, low) in values
    assert min(values) <= percentile(values, low) <= percentile(values, high) <= max(values)
