"""The production stack (infra/): the compose file, Prometheus' rules and Grafana's
dashboards, checked against the code. Docker cannot run here, so the stack itself is not
started; what can drift is held to what the Pit really has:
* every metric a dashboard panel or an alert rule queries is one `pit up` exports on
  /metrics (a running Stack's, read over HTTP);
* every PIT_* variable the compose file sets is one the README documents, and the Pit's own
  services are configured by PIT_* (and boto3's AWS_*) variables alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streams.app import Stack
from streams.config import Settings

INFRA = Path(__file__).parents[2] / "infra"
README = (Path(__file__).parents[2] / "README.md").read_text()
METRIC = re.compile(r"\bpit_[a-z0-9_]+")
PIT_SERVICES = ("topics", "pit-up", "pit-runner", "pit-host")


def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text())
            for path in sorted((INFRA / "grafana" / "dashboards").glob("*.json"))}


def queried() -> dict[str, set[str]]:
    """Metric name -> where it is queried (dashboard panels, alert rules)."""
    found: dict[str, set[str]] = {}
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel["targets"]:
                for metric in METRIC.findall(target["expr"]):
                    found.setdefault(metric, set()).add(f"{name}: {panel['title']}")
    rules = yaml.safe_load((INFRA / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            for metric in METRIC.findall(rule["expr"]):
                found.setdefault(metric, set()).add(f"alert {rule['alert']}")
    return found


def exposed(text: str) -> set[str]:
    """Every sample name /metrics can carry (families are listed even before a sample)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update({"counter": [f"{family.name}_total"],
                      "histogram": [f"{family.name}_{s}" for s in ("bucket", "sum", "count")]
                      }.get(family.type, []))
    return names


async def test_every_metric_a_dashboard_or_alert_queries_is_exported(tmp_path,
                                                                      free_port) -> None:
    port = free_port()
    async with Stack(Settings(data_dir=tmp_path), http_port=port, progress=False,
                     without={"host-monitor"}), aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{port}/metrics") as reply:
        names = exposed(await reply.text())
    wanted = queried()
    assert len(wanted) >= 30  # the dashboards cover the components, not a token panel
    missing = {metric: sorted(where) for metric, where in wanted.items() if metric not in names}
    assert not missing, missing


def test_one_dashboard_per_component_each_panel_querying_prometheus() -> None:
    boards = dashboards()
    assert set(boards) == {f"pit-{c}.json" for c in ("backbone", "pool", "dag", "artifacts",
                                                     "arbitration", "stale")}
    for name, board in boards.items():
        assert board["uid"] == name.removesuffix(".json") and board["panels"], name
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "prometheus" and panel["targets"], panel
    provider = yaml.safe_load(
        (INFRA / "grafana" / "provisioning" / "dashboards" / "pit.yaml").read_text())
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts


def test_the_compose_stack_is_configured_by_documented_pit_variables() -> None:
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert {"kafka-1", "kafka-2", "kafka-3", "postgres", "opensearch", "minio", "prometheus",
            "grafana", *PIT_SERVICES} <= set(services)
    for kafka in ("kafka-1", "kafka-2", "kafka-3"):
        assert services[kafka]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name in PIT_SERVICES:
        environment = services[name]["environment"]
        assert all(key.startswith(("PIT_", "AWS_")) for key in environment), name
        undocumented = [key for key in environment
                        if key.startswith("PIT_") and f"`{key}`" not in README]
        assert not undocumented, (name, undocumented)
    assert services["pit-host"]["command"][-2:] == ["--advertise", "http://pit-host:8700"]
    scrape = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["pit-up:8642"]
