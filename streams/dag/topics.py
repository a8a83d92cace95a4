"""The DAG's topics (their settings are in infra/topics.yaml)."""

DAG_COMMANDS = "pit.dag.commands"
DAG_EVENTS = "pit.dag.events"
DAG_CHECKPOINTS = "pit.dag.checkpoints"
DAG_TASKS = "pit.dag.tasks"
