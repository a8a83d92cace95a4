"""`pit` answers a status read in well under 0.5 s because it imports only what the command
needs (README, "The command line"): these guard that, without timing anything."""

from __future__ import annotations

import json
import subprocess
import sys

# What a read of the views never needs: the broker clients, the blob stores, the search
# engines' libraries, the HTTP server.
KAFKA_AND_THE_REST = ("aiokafka", "confluent_kafka", "boto3", "numpy", "opensearchpy", "aiohttp")


def imported_after(code: str) -> set[str]:
    shown = f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", shown], capture_output=True, text=True,
                         check=True).stdout
    return {name.split(".")[0] for name in json.loads(out.strip().splitlines()[-1])}


def test_the_cli_and_its_parser_import_no_runtime():
    found = imported_after("import streams.cli; streams.cli.build_parser()")
    assert found.isdisjoint({*KAFKA_AND_THE_REST, "sqlalchemy", "fastavro", "yaml"})


def test_a_view_read_through_the_client_imports_no_kafka():
    """`pit artifact info`: a PitClient reading the views loads no decider, no registry and
    no Kafka client."""
    found = imported_after("from streams.client import PitClient; PitClient().artifacts.engine;"
                           " import projections.pool, projections.stale, projections.audit")
    assert found.isdisjoint(KAFKA_AND_THE_REST)
