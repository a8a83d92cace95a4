"""The Stale Manager's topics (infra/topics.yaml)."""

STALE_COMMANDS = "pit.stale.commands"
STALE_EVENTS = "pit.stale.events"
