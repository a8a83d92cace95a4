"""The Arbitration Engine's topics (their settings are in infra/topics.yaml)."""

ARBITRATION_COMMANDS = "pit.arbitration.commands"
ARBITRATION_EVENTS = "pit.arbitration.events"
