"""Campaigns: whole-system checks that run the real processes (``pit up``, runners, hosts)
under faults and load, then check the promises from the log and the views.

``pit campaign <name>`` runs one. Each campaign module has ``add_arguments(parser)`` and
``run(args, settings) -> int`` (the exit status). They sit with the assembly: they start and
kill whole Pits, so they may import anything.
"""

from __future__ import annotations

# name -> (module, one-line help)
CAMPAIGNS: dict[str, tuple[str, str]] = {
    "soak": ("streams.campaigns.soak", "steady mixed load against `pit up`, its memory sampled"),
}
