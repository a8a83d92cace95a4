"""The Stale Manager as a component of the Pit (streams/component.py): its decider, the
catalog observer and the tier worker `pit up` runs for it, its views, metrics, read-API
routes, CLI, client operations and bench. Its timers (purges, apply batches, scheduled runs)
are events on its own topic, which the timer service follows by itself."""

from __future__ import annotations

from streams.component import Component
from streams.stale.manager import STALE

COMPONENT = Component(
    name="stale",
    deciders=(STALE,),
)
