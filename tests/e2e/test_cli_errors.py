"""Every bad input reaches a CLI user as one clear line and a non-zero exit, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def pit(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    environment = {**os.environ, "PIT_DATA_DIR": "/nonexistent/pit-cli-test", **(env or {})}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                          text=True, env=environment, timeout=timeout)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pit: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


VALID = '{"model_id": "m", "to_state": "Warming", "reason": "UserRequest"}'


@pytest.mark.parametrize(("args", "fragments"), [
    (("publish", "TransitionModel", "{not json"), ("bad JSON",)),
    (("publish", "TransitionModel", "[1, 2]"), ("needs a JSON object",)),
    (("publish", "LaunchRocket", VALID), ("unknown command type", "TransitionModel")),
    (("publish", "TransitionModel", '{"model_id": "m"}'), ("to_state",)),
    (("publish", "TransitionModel",
      '{"model_id": "m", "to_state": "Boiling", "reason": "UserRequest"}'), ("Boiling",)),
    (("publish", "TransitionModel", VALID[:-1] + ', "modle_id": "m"}'),
     ("unknown field 'modle_id' for TransitionModel (known: model_id, to_state",)),
    (("publish", "RegisterModel", '{"model_id": "m", "meta": {}}'),
     ("unknown field 'meta' for RegisterModel",)),
    (("publish", "TransitionModel", VALID), ("no broker", "pit up")),
    (("results",), ("no broker",)),
    (("project",), ("no broker", "pit up")),
    (("audit", "m1", "--until", "yesterday-ish"), ("--until",)),
    (("bench", "nothing"), ("unknown benchmark",)),
    (("runner", "--import", "no_such_team_ops"),
     ("operators module no_such_team_ops cannot be imported",)),
    (("artifact", "put", "/no/such/file"), ("no such file: /no/such/file",)),
    (("artifact", "get", "report"), ("no broker", "pit up")),
    (("artifact", "log", "report"), ("no artifact named 'report'",)),
    (("artifact", "diff", "a", "b"), ("no artifact named 'a'",)),
])
def test_bad_input_is_one_line(args, fragments):
    assert_one_line_error(pit(*args), *fragments)


@pytest.mark.parametrize("args", [("audit", "verify"), ("audit", "sentiment"),
                                  ("pool", "status"), ("arbitration", "status"),
                                  ("stale", "status"), ("replay", "models")])
def test_a_reader_outside_a_pit_says_so_in_one_line_and_creates_nothing(tmp_path, args):
    result = pit(*args, env={"PIT_DATA_DIR": str(tmp_path / ".pit")})
    assert_one_line_error(result, "no Pit here", "start `pit up`")
    assert not (tmp_path / ".pit").exists()


def test_unreachable_broker_is_one_line():
    result = pit("publish", "TransitionModel", VALID,
                 env={"PIT_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert_one_line_error(result, "Kafka unreachable", "127.0.0.1:1")


def test_unreachable_database_is_one_line():
    result = pit("audit", "verify",
                 env={"PIT_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"})
    assert_one_line_error(result)


def test_bad_dag_limit_setting_is_one_line():
    assert_one_line_error(pit("audit", "verify", env={"PIT_DAG_MAX_RUNNING": "lots"}),
                          "PIT_DAG_MAX_RUNNING")


def test_bad_port_setting_is_one_line():
    assert_one_line_error(pit("audit", "verify", env={"PIT_HTTP_PORT": "eighty"}),
                          "PIT_HTTP_PORT")


def test_bad_projector_setting_is_one_line():
    assert_one_line_error(pit("up", env={"PIT_PROJECTOR": "forked"}),
                          "PIT_PROJECTOR must be process or inline, got 'forked'")


def test_audit_output_piped_into_head_ends_quietly(tmp_path):
    """A reader that leaves early (`pit audit m | head -1`) is not an error."""
    env = {**os.environ, "PIT_DATA_DIR": str(tmp_path)}
    from projections.runtime import Projector
    from schemas.codec import Codec
    from schemas.registry import EmbeddedRegistry
    from streams.log import LogRecord
    from streams.sql import connect

    engine = connect(f"sqlite:///{tmp_path / 'pit.db'}")
    Projector(engine, views=[], codec=Codec(EmbeddedRegistry())).apply_batch(
        [LogRecord("pit.pool.commands", 0, offset, 0, b"m", b"junk") for offset in range(5000)])
    engine.dispose()
    command = f"{sys.executable} -m streams.cli audit m | head -1"
    result = subprocess.run(command, shell=True, capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.stdout.startswith("#1 ") and result.stderr == ""
