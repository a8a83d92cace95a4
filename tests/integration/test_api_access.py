"""The API's actions and who may use them, on a running Pit holding data (a registered
model, a workflow execution no runner takes, an artifact, a retention policy and a plan):

* without PIT_API_TOKEN every action is a 403 and publishes nothing;
* with it, a missing or wrong token is a 401 that publishes nothing, and the right one - as
  a header, or as the `pit_token` cookie with `X-Pit-Action: 1` for an action - cancels an
  execution, as the views then show;
* /openapi.json describes every route, and schemathesis, fuzzing each from it, never gets a
  500 (on SQLite and PostgreSQL).

"Nothing changed" is shown by order, not by waiting: a refused request answers before the
test goes on, so a command it had published would sit on its entity's partition ahead of
the command the test sends next; the views then show the later one's effect alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from projections.api import make_app
from projections.openapi import openapi_path
from projections.schema_api import add_registry_routes
from schemas.registry import EmbeddedRegistry
from streams.app import Stack
from streams.client import PitClient
from streams.components import COMPONENTS
from streams.config import Settings
from streams.dag.definition import WorkflowBuilder
from streams.waiting import until

TOKEN = "s3cret-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
POLICY = {"policies": [{"name": "keep", "rules": [{"type": "MaxAge", "days": 30,
                                                    "action": "delete"}]}]}


@dataclass
class Pit:
    stack: Stack
    client: PitClient
    http: aiohttp.ClientSession
    base: str
    execution_id: str
    plan_id: str

    async def call(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                   body: Any = None, cookies: dict[str, str] | None = None
                   ) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, headers=headers or {},
                                     json=body, cookies=cookies) as reply:
            return reply.status, await reply.json()

    async def view(self, path: str) -> Any:
        status, body = await self.call("GET", path, headers=BEARER)
        return body if status == 200 else None

    async def cancelled(self) -> bool:
        return (await self.view(f"/executions/{self.execution_id}"))["status"] == "cancelled"


@contextlib.asynccontextmanager
async def running_pit(tmp_path, port: int, *, token: str | None = TOKEN,
                      db_url: str | None = None) -> AsyncIterator[Pit]:
    env = {"PIT_API_TOKEN": token} if token else {}
    settings = Settings(data_dir=tmp_path, database_url=db_url, env=env)
    async with Stack(settings, http_port=port, progress=False, without={"host-monitor"}) as stack, \
            PitClient(stack.settings, issued_by="api-access") as client, \
            aiohttp.ClientSession() as http:
        await client.pool.register_model("fuzz-model", "python:streams.pool.examples:sentiment",
                                         50, 20)
        await client.artifacts.store(b"release notes", name="notes", tags=["release"])
        # no runner: its node stays scheduled, and the execution running
        execution_id = await client.dag.execute_workflow(
            WorkflowBuilder("held").operator("word", "identity", constants={"value": "hi"})
            .build())
        await client.stale.set_policy(POLICY)
        plan = await client.stale.plan()
        pit = Pit(stack, client, http, f"http://127.0.0.1:{port}", execution_id,
                  plan["plan_id"])
        headers = BEARER if token else {}

        async def shown(path: str) -> bool:
            return (await pit.call("GET", path, headers=headers))[0] == 200

        for path in (f"/executions/{execution_id}", f"/stale/plans/{pit.plan_id}",
                     "/artifacts/notes", "/models/fuzz-model"):
            await until(lambda path=path: shown(path), what=f"{path} in the views")
        yield pit


async def cancelled_with(pit: Pit, reason: str) -> None:
    """Cancel the execution through the client, wait for the views to show it cancelled,
    and check it was this cancel that ended it."""
    await pit.client.dag.cancel_workflow(pit.execution_id, reason)
    await until(pit.cancelled, what="the execution cancelled")
    assert (await pit.view(f"/executions/{pit.execution_id}"))["error"] == reason


ACTIONS = (("POST", "/executions/{execution_id}/cancel", {"reason": "refused"}),
           ("POST", "/stale/plans/{plan_id}/apply", None),
           ("POST", "/stale/restore", {"target": "{plan_id}"}),
           ("PUT", "/stale/policy", {"policies": []}),
           ("PUT", "/arbitration/policy", {"default_timeout_s": 5}))


def _actions(pit: Pit) -> list[tuple[str, str, Any]]:
    def fill(text: str) -> str:
        return text.format(execution_id=pit.execution_id, plan_id=pit.plan_id)
    return [(method, fill(path), body and {k: fill(v) if isinstance(v, str) else v
                                           for k, v in body.items()})
            for method, path, body in ACTIONS]


async def _unchanged(pit: Pit) -> None:
    """The refused actions left no trace. Commands sent after them, through the client, are
    the first to reach the execution and the store: the execution's cancel carries the
    client's reason, and once the client's policy shows, it is only the second version and
    the plan is still planned (a policy or an apply from a refused request would have been
    decided before it)."""
    await cancelled_with(pit, "cancelled after the refused actions")
    await pit.client.stale.set_policy({**POLICY, "trash_days": 3})

    async def second_policy() -> Any:
        found = await pit.view("/stale")
        return found if '"trash_days":3' in found["document"].replace(" ", "") else None
    assert (await until(second_policy, what="the client's policy"))["policy_version"] == 2
    assert (await pit.view(f"/stale/plans/{pit.plan_id}"))["status"] == "planned"


async def test_a_pit_without_a_token_refuses_every_action(tmp_path, free_port) -> None:
    async with running_pit(tmp_path, free_port(), token=None) as pit:
        for method, path, body in _actions(pit):
            status, answer = await pit.call(method, path, body=body)
            assert status == 403, (method, path, answer)
            assert answer == {"error": "this Pit is read-only: actions need PIT_API_TOKEN"
                                       " set on pit up"}
        assert (await pit.call("GET", "/executions"))[0] == 200  # reads stay open
        await _unchanged(pit)


async def test_a_missing_or_wrong_token_is_a_401_that_changes_nothing(tmp_path,
                                                                        free_port) -> None:
    async with running_pit(tmp_path, free_port()) as pit:
        for method, path, body in _actions(pit):
            for headers, cookies in (({}, None), ({"Authorization": "Bearer wrong"}, None),
                                     ({"Authorization": TOKEN}, None),  # no "Bearer"
                                     ({"X-Pit-Action": "1"}, {"pit_token": "wrong"})):
                status, answer = await pit.call(method, path, body=body, headers=headers,
                                                cookies=cookies)
                assert status == 401, (method, path, headers, answer)
                assert "PIT_API_TOKEN" in answer["error"]
        # the right cookie without X-Pit-Action: no action either
        for method, path, body in _actions(pit):
            status, answer = await pit.call(method, path, body=body,
                                            cookies={"pit_token": TOKEN})
            assert status == 403 and "X-Pit-Action" in answer["error"], (path, answer)
        await _unchanged(pit)


async def test_the_token_cancels_an_execution(tmp_path, free_port) -> None:
    async with running_pit(tmp_path, free_port()) as pit:
        path = f"/executions/{pit.execution_id}/cancel"
        status, answer = await pit.call("POST", path, headers=BEARER,
                                        body={"reason": "stopped by the operator"})
        assert status == 202, answer
        assert answer["accepted"] is True and answer["execution_id"] == pit.execution_id
        assert answer["command_type"] == "CancelExecution"
        await until(pit.cancelled, what="the views showing it cancelled")
        assert (await pit.view(f"/executions/{pit.execution_id}"))["error"] == \
            "stopped by the operator"
        # a second cancel is refused with the decider's reason; an unknown one is a 404
        status, answer = await pit.call("POST", path, headers=BEARER)
        assert status == 400 and "already ended" in answer["error"], answer
        status, answer = await pit.call("POST", "/executions/nope/cancel", headers=BEARER)
        assert status == 404 and answer == {"error": "unknown execution nope"}
        status, answer = await pit.call("POST", "/stale/plans/nope/apply", headers=BEARER)
        assert status == 404 and answer == {"error": "unknown plan nope"}


async def test_the_cookie_reads_and_with_x_pit_action_acts(tmp_path, free_port) -> None:
    async with running_pit(tmp_path, free_port()) as pit:
        cookie = {"pit_token": TOKEN}
        status, answer = await pit.call("GET", f"/executions/{pit.execution_id}",
                                        cookies=cookie)
        assert status == 200 and answer["status"] == "running"
        status, answer = await pit.call("POST", f"/executions/{pit.execution_id}/cancel",
                                        cookies=cookie, headers={"X-Pit-Action": "1"},
                                        body={"reason": "from the console"})
        assert status == 202, answer
        await until(pit.cancelled, what="the views showing it cancelled")
        assert (await pit.view(f"/executions/{pit.execution_id}"))["error"] == \
            "from the console"


async def test_the_policies_and_the_trash_through_the_api(tmp_path, free_port) -> None:
    async with running_pit(tmp_path, free_port()) as pit:
        status, answer = await pit.call("PUT", "/stale/policy", headers=BEARER,
                                        body={"policies": [{"name": "x", "rules": [
                                            {"type": "NoSuchRule"}]}]})
        assert status == 400 and "NoSuchRule" in answer["error"], answer
        status, answer = await pit.call("PUT", "/arbitration/policy", headers=BEARER,
                                        body={"default_timeout_s": 7})
        assert status == 202, answer

        async def timeout_shown() -> bool:
            found = await pit.view("/arbitration/policy")
            return found is not None and found["policy"]["default_timeout_s"] == 7
        await until(timeout_shown, what="the arbitration policy in the views")
        for raw, error in ((b'{"target": "\\ud800"}', "not valid (a NUL or a lone surrogate)"),
                           (b'{"target": "a\\u0000"}', "not valid (a NUL or a lone surrogate)"),
                           (b"\xff\xfe", "the body is not UTF-8 text"),
                           (b"[" * 100_000, "the body must be a JSON object"),
                           (b'{"target": 3}', "the body's 'target' must be a non-empty")):
            async with pit.http.post(f"{pit.base}/stale/restore", data=raw,
                                     headers=BEARER) as reply:
                answer = await reply.json()
                assert reply.status == 400 and error in answer["error"], (raw, answer)
        status, answer = await pit.call("POST", "/stale/restore", headers=BEARER,
                                        body={"target": pit.plan_id})
        assert status == 400 and "trash" in answer["error"], answer
        status, answer = await pit.call("POST", f"/stale/plans/{pit.plan_id}/apply",
                                        headers=BEARER)
        assert status == 202 and answer["plan"]["plan_id"] == pit.plan_id, answer


async def test_openapi_describes_every_route(tmp_path, free_port) -> None:
    async with running_pit(tmp_path, free_port()) as pit:
        assert (await pit.call("GET", "/openapi.json"))[0] == 401
        status, doc = await pit.call("GET", "/openapi.json", headers=BEARER)
        assert status == 200 and doc["openapi"] == "3.1.0"
        app = pit.stack._runner.app
        routes = {(route.method.lower(), openapi_path(route.resource))
                  for route in app.router.routes() if route.method != "HEAD"}
        described = {(method, path) for path, ops in doc["paths"].items() for method in ops}
        assert described == routes
        cancel = doc["paths"]["/executions/{execution_id}/cancel"]["post"]
        assert [p["name"] for p in cancel["parameters"]] == ["execution_id"]
        assert cancel["requestBody"]["required"] is False
        assert {"202", "400", "401", "403", "404", "503"} <= set(cancel["responses"])
        nodes = doc["paths"]["/executions/{execution_id}/nodes"]["get"]
        assert {p["name"]: p["in"] for p in nodes["parameters"]} == {
            "execution_id": "path", "state": "query", "node": "query", "limit": "query",
            "offset": "query"}
        assert doc["paths"]["/health"]["get"]["security"] == []
        assert doc["paths"]["/metrics"]["get"]["security"] == []
        assert doc["paths"]["/console/static/{filename}"]["get"]["security"] == []
        assert "security" not in doc["paths"]["/executions"]["get"]  # the document's own
        assert [p["name"] for p in doc["paths"]["/subjects/{subject}/versions/{version}"]
                ["get"]["parameters"]] == ["subject", "version"]


async def test_no_route_answers_500_to_what_schemathesis_sends(db_url, tmp_path,
                                                                free_port) -> None:
    """Every operation of /openapi.json, bounded (the coverage and fuzzing phases, 12
    cases an operation, a fixed seed so a run is repeatable), with the token: actions are
    fuzzed too. A run that reaches a 500 fails with schemathesis's report and its curl."""
    async with running_pit(tmp_path, free_port(), db_url=db_url) as pit:
        fuzz = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "schemathesis.cli", "run", f"{pit.base}/openapi.json",
            "--checks", "not_a_server_error", "--max-examples", "12", "--seed", "1",
            "--phases", "coverage,fuzzing", "--workers", "2",
            "--header", f"Authorization: Bearer {TOKEN}", "--request-timeout", "20",
            "--suppress-health-check", "all",
            "--exclude-path", "/console/events",  # an event stream: it never ends
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""}, cwd=tmp_path)
        output, _ = await fuzz.communicate()
        report = output.decode(errors="replace")
        assert fuzz.returncode == 0, report
        assert "Fuzzing" in report and "passed" in report, report
        # the fuzzer changed things (policies set, an execution maybe cancelled): the Pit
        # still answers
        assert (await pit.view("/health"))["status"] == "ok"


BAD_INPUT = (
    ("/executions/x/nodes?offset=99999999999999999999", "offset must be"),  # past any int
    ("/stale/plans?limit=%C2%B2", "limit must be"),   # "²": a digit to isdigit(), not to int()
    ("/audit/x?until=99999999999999999999", "until (epoch milliseconds) must be"),
    ("/models/m/health?limit=-1", "limit must be"),
    ("/executions/a%00b", "path parameter execution_id is not valid text"),
    ("/pool?pool=a%00b", "query parameter pool is not valid text"),  # NUL: PostgreSQL refuses
    ("/subjects/s/versions/%C2%B2", None),  # the registry's own 404 for an unknown subject
)


async def test_bad_input_is_a_400_that_says_why(engine) -> None:
    """What the fuzzer found, and its neighbours, on both databases."""
    app = make_app(engine, COMPONENTS)
    add_registry_routes(app, EmbeddedRegistry())
    async with TestClient(TestServer(app)) as client:
        for path, error in BAD_INPUT:
            async with client.get(URL(path, encoded=True)) as reply:
                answer = await reply.json()
                if error is None:
                    assert reply.status == 404, (path, answer)
                    continue
                assert reply.status == 400, (path, answer)
                assert answer["error"].startswith(error), (path, answer)

