"""The pool's topics (their settings are in infra/topics.yaml)."""

POOL_COMMANDS = "pit.pool.commands"
POOL_EVENTS = "pit.pool.events"
