"""`pit demo` is the README's main job: it must run to the end on a fresh data directory and
show each step of the scenario working."""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_demo_runs_end_to_end(tmp_path) -> None:
    env = {**os.environ, "PIT_DATA_DIR": str(tmp_path / "pit")}
    result = subprocess.run([sys.executable, "-m", "streams.cli", "demo"], env=env,
                            capture_output=True, text=True, timeout=240)
    out = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cache_hit=False, loaded on demo-host-" in out  # the cold start
    assert "again: cache_hit=True" in out
    assert "{'label': 'positive'" in out  # a real model answered on its host
    assert "evicted);" in out and "['hello', 'pit']" in out
    assert "every host is at its capacity of models" in out  # allocated models stay
    assert "Failed -> Cold)      accepted" in out
    assert "REJECTED (unknown model" in out
    assert "duplicate: acknowledged again, nothing changed" in out
    assert "pit.error: not a Confluent-framed Avro message" in out
    assert "the same bytes again: newly_stored=False" in out  # the Artifact Store
    assert '-{"revenue": 10, "region": "north"}' in out and "(1 link)" in out
    assert "cache: hit rate" in out
    assert "ModelEvicted" in out and "audit chain: audit log OK" in out
    assert "drain timed out" not in out + result.stderr
