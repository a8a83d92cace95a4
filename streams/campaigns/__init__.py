"""Campaigns: whole-system checks that run the real processes (``pit up``, runners, hosts)
under faults and load, then check the promises from the log and the views.

``pit campaign <name>`` runs one. Each campaign module has ``add_arguments(parser)`` and
``run(args, settings) -> int`` (the exit status). They sit with the assembly: they start and
kill whole Pits, so they may import anything.
"""

from __future__ import annotations

# name -> (module, one-line help)
CAMPAIGNS: dict[str, tuple[str, str]] = {
    "chaos": ("streams.campaigns.chaos", "kill -9 pit up, runners and hosts and break the broker"
                                         " under a mixed load; check nothing acknowledged is lost"),
    "drain": ("streams.campaigns.drain", "hosts and runners asked to stop exit within their"
                                         " drain timeout, whatever pit up does"),
    "fuzz": ("streams.campaigns.fuzz", "bad input through the broker: no process stops"),
    "soak": ("streams.campaigns.soak", "steady mixed load against `pit up`, its memory sampled"),
}
