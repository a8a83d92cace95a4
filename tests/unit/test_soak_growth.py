"""The soak campaign's growth figure (streams/campaigns/soak.py): the high-water mark of the
last three minutes against the first three after the warm-up. `pit up` hands free heap back
every minute, so samples swing between a trough and a peak; the figure must not swing with
them, and must still see a leak."""

from __future__ import annotations

from collections import Counter

import pytest

from streams.campaigns.soak import Sample, SoakReport


def report(rss: list[float], every_s: float = 30.0) -> SoakReport:
    return SoakReport([Sample(n * every_s, mb, Counter(), {}) for n, mb in enumerate(rss)])


def test_a_flat_sawtooth_is_no_growth_whichever_phase_the_ends_fall_on() -> None:
    sawtooth = [280.0 if n % 2 else 240.0 for n in range(60)]
    assert report(sawtooth).growth_pct == 0
    assert report(sawtooth[1:]).growth_pct == 0
    assert report(sawtooth[:-1]).growth_pct == 0


def test_rising_peaks_are_growth() -> None:
    leaking = [(280.0 if n % 2 else 240.0) + n for n in range(60)]  # +1 MB a sample
    assert report(leaking).growth_pct == pytest.approx((339 - 285) / 285 * 100)
    assert report([100.0] * 5).growth_pct is None  # too few samples
