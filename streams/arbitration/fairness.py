"""Fairness (seed M3.4.4): what each tenant was granted over a sliding window, against its
weight; the Gini coefficient of the weight-normalised grants; the correction factor that
favours a tenant below its entitled share and holds back one above it.

Pure and small: the window is a tuple of time buckets (a tenth of the window each) of
grant counts per tenant, so keeping it costs the decider a few entries whatever the load.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

BUCKETS = 10
CORRECTION_RANGE = (0.25, 4.0)  # how far the correction may favour or hold back a tenant


def gini(values: Iterable[float]) -> float:
    """The Gini coefficient of non-negative values: 0 for perfect equality, towards 1 when
    one holds everything; 0 for no values or all zero."""
    ordered = sorted(values)
    n, total = len(ordered), sum(ordered)
    if n == 0 or total <= 0:
        return 0.0
    ranked = sum((i + 1) * v for i, v in enumerate(ordered))
    return (2 * ranked) / (n * total) - (n + 1) / n


@dataclass(frozen=True, slots=True)
class Window:
    """Grants per tenant over the last `window_ms`, in BUCKETS buckets: ((start_ms,
    ((tenant, count), ...)), ...), oldest first."""

    window_ms: int
    buckets: tuple[tuple[int, tuple[tuple[str, int], ...]], ...] = ()

    def record(self, tenant: str, at_ms: int, amount: int = 1) -> Window:
        width = max(1, self.window_ms // BUCKETS)
        start = at_ms - at_ms % width
        buckets = [b for b in self.buckets if b[0] > at_ms - self.window_ms]
        if buckets and buckets[-1][0] == start:
            counts = dict(buckets[-1][1])
            counts[tenant] = counts.get(tenant, 0) + amount
            buckets[-1] = (start, tuple(sorted(counts.items())))
        else:
            buckets.append((start, ((tenant, amount),)))
        return Window(self.window_ms, tuple(buckets))

    def totals(self, now_ms: int) -> dict[str, int]:
        """Grants per tenant within the window ending at `now_ms`."""
        found: dict[str, int] = {}
        for start, counts in self.buckets:
            if start > now_ms - self.window_ms:
                for tenant, count in counts:
                    found[tenant] = found.get(tenant, 0) + count
        return found


def shares(totals: Mapping[str, int], weights: Mapping[str, float]
           ) -> dict[str, tuple[float, float]]:
    """Per tenant (of `weights`, and any other that was granted): (its share of the grants,
    its entitled share by weight)."""
    granted = sum(totals.values())
    weight_total = sum(weights.values())
    return {t: (totals.get(t, 0) / granted if granted else 0.0,
                weights[t] / weight_total if weight_total else 0.0)
            for t in sorted(weights)}


def normalised_gini(totals: Mapping[str, int], weights: Mapping[str, float]) -> float:
    """The Gini of grants divided by weight, over the tenants in `weights`."""
    return gini(totals.get(t, 0) / w for t, w in weights.items() if w > 0)


def deviation(totals: Mapping[str, int], weights: Mapping[str, float]) -> float:
    """max over tenants of |share - entitled| / entitled: the seed's fairness deviation."""
    found = [abs(share - entitled) / entitled
             for share, entitled in shares(totals, weights).values() if entitled > 0]
    return max(found, default=0.0)


def correction(totals: Mapping[str, int], weights: Mapping[str, float], tenant: str) -> float:
    """Entitled share / actual share, within CORRECTION_RANGE: above 1 for a tenant below its
    share (served sooner), below 1 above it. 1 with nothing granted yet."""
    granted = sum(totals.values())
    weight_total = sum(weights.values())
    if not granted or weight_total <= 0 or tenant not in weights:
        return 1.0
    entitled = weights[tenant] / weight_total
    actual = totals.get(tenant, 0) / granted
    low, high = CORRECTION_RANGE
    return high if actual <= 0 else min(high, max(low, entitled / actual))
