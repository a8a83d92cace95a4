"""The Artifact Store's topics (their settings are in infra/topics.yaml)."""

ARTIFACT_COMMANDS = "pit.artifacts.commands"
ARTIFACT_EVENTS = "pit.artifacts.events"
