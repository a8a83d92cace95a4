"""The web console in a real browser: Debian's headless Chromium, driven by Playwright, over a
Pit (the `pit up` Stack in-process, with PIT_API_TOKEN set) that `pit demo`'s scenario filled,
plus a workflow runner, two waiting arbitration requests and a cleanup plan.

Every page is checked against the views it reads (the API's JSON, fetched beside it); a
running workflow's graph changes state with no reload; a search opens an artifact's diff;
cancelling needs the token; a large execution is drawn in bands and followed live.
Screenshots go to PIT_SCREENSHOTS (default `.artifacts/screenshots`, not in git): CI keeps
them as artefacts. The figures (page load, event to screen) are printed, not asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streams.app import Stack
from streams.client import PitClient
from streams.config import Settings
from streams.dag.definition import WorkflowBuilder, layered_dag
from streams.dag.execution import ReportNodeCompleted

pytestmark = pytest.mark.slow

TOKEN = "console-test-token"
CHROMIUM = os.environ.get("PIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("PIT_SCREENSHOTS")
             or Path(__file__).parents[2] / ".artifacts" / "screenshots")
GATED_MS = 600_000  # a gated node sleeps this long: it ends when the test reports it
WAIT_MS = 30_000    # the longest a page may take to show what the views hold


class Console:
    """A Pit with data in every view, a runner, and a browser."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**{k: v for k, v in os.environ.items()
                       if k not in ("PIT_KAFKA_BOOTSTRAP_SERVERS", "PIT_DATABASE_URL")},
                    "PIT_DATA_DIR": str(data_dir), "PIT_API_TOKEN": TOKEN,
                    "PIT_HTTP_PORT": str(self.port), "PIT_CONSOLE_SAMPLE_S": "1",
                    "PIT_CONSOLE_POLL_MS": "100"}

    async def start(self) -> Console:
        from playwright.async_api import async_playwright

        settings = Settings.from_env(self.env)
        self.stack = await Stack(settings, http_port=self.port, progress=False,
                                 projector_process=settings.projector_process).start()
        self.settings = self.stack.settings
        demo = await self.run("demo", timeout=240)
        assert demo.returncode == 0, demo.stderr[-2000:]
        with (self.data_dir / "runner.log").open("w") as log:
            self.runner = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "runner", "--id", "console-runner",
                 "--session-timeout", "3", "--drain-timeout", "2"], env=self.env,
                stdout=subprocess.DEVNULL, stderr=log)
        self.client = await PitClient(self.settings, issued_by="console-test").start()
        model = (await self.get("/models"))["models"][0]["model_id"]
        for tenant, priority in (("alice", "0"), ("bob", "2")):
            asked = await self.run("arbitration", "submit", model, "--tenant", tenant,
                                   "--priority", priority)
            assert asked.returncode == 0, asked.stderr
        # The projector (a process of its own) may not have queued them in the view yet.
        await self.until("/arbitration", lambda body: sum(
            len(rows) for rows in body["queues"].values()) == 2, "two requests waiting")
        policy = self.data_dir / "policy.yaml"
        policy.write_text("policies:\n  - name: all\n    priority: 1\n    rules:\n"
                          "      - {type: MaxAge, days: 0}\norphan_grace_hours: 0\n")
        for args in (("stale", "policy", "set", str(policy)), ("stale", "plan")):
            done = await self.run(*args)
            assert done.returncode == 0, done.stderr
        self.playwright = await async_playwright().start()
        self.browser = await self.playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"])
        return self

    async def close(self) -> None:
        await self.browser.close()
        await self.playwright.stop()
        self.runner.terminate()
        await asyncio.to_thread(self.runner.wait, 30)
        await self.client.close()
        await self.stack.close()

    async def until(self, path: str, holds: Callable[[dict], bool], what: str) -> dict:
        """GET `path` until its body `holds` (within WAIT_MS): what a view shows once the
        projector has caught up."""
        deadline = time.monotonic() + WAIT_MS / 1000
        while not holds(body := await self.get(path)):
            assert time.monotonic() < deadline, f"{path} never showed {what}: {body}"
            await asyncio.sleep(0.1)
        return body

    async def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "streams.cli", *args], env=self.env,
            capture_output=True, text=True, timeout=timeout)

    def _request(self, method: str, path: str, token: str | None, body: Any
                 ) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    async def request(self, method: str, path: str, *, token: str | None = TOKEN,
                      body: Any = None) -> tuple[int, dict]:
        """The API as a script calls it (not the browser), off the loop `pit up` serves on."""
        return await asyncio.to_thread(self._request, method, path, token, body)

    async def get(self, path: str) -> dict:
        status, body = await self.request("GET", path)
        assert status == 200, (path, status, body)
        return body

    async def page(self, hash_: str = "/", *, login: bool = True) -> Any:
        """A new browser tab at 1280x800, signed in through the login form."""
        context = await self.browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.errors = errors
        if login:
            await page.goto(self.base + "/login")
            await page.fill("input[name=token]", TOKEN)
            await page.click("button[type=submit]")
            await page.wait_for_url(self.base + "/")
        await page.goto(f"{self.base}/#{hash_}")
        if login:
            await rendered(page)
        return page

    async def start_workflow(self, workflow: Any) -> str:
        path = self.data_dir / f"{workflow.name}.json"
        path.write_text(json.dumps(workflow.to_dict()))
        started = await self.run("workflow", "submit", str(path))
        assert started.returncode == 0, started.stderr
        return started.stdout.strip().split()[-1]


async def rendered(page: Any, after: int = 0) -> None:
    """Wait until the page rendered its data more than `after` times."""
    await page.wait_for_function(
        f"Number(document.getElementById('page').dataset.renders) > {after}", timeout=WAIT_MS)


async def shows(page: Any, *texts: str) -> None:
    """Wait until the page's text holds every one of `texts` (it updates live)."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    try:
        await page.wait_for_function(
            "texts => texts.every(t => document.getElementById('page').innerText.includes(t))",
            arg=list(texts), timeout=WAIT_MS)
    except PlaywrightTimeout:
        shown = await page.inner_text("#page")
        missing = [text for text in texts if text not in shown]
        raise AssertionError(f"{page.url} never showed {missing}; it shows:\n{shown}") from None


async def screenshot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"))


def gated_chain(name: str, nodes: int) -> Any:
    """n0 -> n1 -> ...: every node sleeps GATED_MS; the test reports each one done."""
    chain = WorkflowBuilder(name)
    for i in range(nodes):
        chain.operator(f"n{i}", "sleep_then_return",
                       constants={"ms": GATED_MS, **({} if i else {"value": 0})})
        if i:
            chain.edge(f"n{i - 1}", f"n{i}.value")
    return chain.build()


async def report_done(console: Console, execution_id: str, node_id: str) -> None:
    outcome = await console.client.send(ReportNodeCompleted(
        execution_id, node_id, 1, json.dumps({"out": 0}), runner="console-test"))
    assert outcome.accepted, outcome.line()


@pytest.fixture(scope="module")
async def console(tmp_path_factory, free_port):
    if not Path(CHROMIUM).exists():
        message = f"no Chromium at {CHROMIUM}: `apt-get install chromium` (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    console = await Console(tmp_path_factory.mktemp("console"), free_port()).start()
    try:
        yield console
    finally:
        await console.close()


# --- every page shows what the views hold -------------------------------------------------

async def test_the_login_form_wants_the_token(console) -> None:
    page = await console.page(login=False)  # the page itself: the API answers it 401
    await page.wait_for_url(console.base + "/login**")  # the fragment survives the redirect
    await page.fill("input[name=token]", "not-the-token")
    await page.click("button[type=submit]")
    assert "not this Pit's token" in await page.inner_text("body")
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(console.base + "/")
    await rendered(page)
    await page.context.close()


async def test_every_page_shows_what_the_views_hold(console) -> None:
    started = time.perf_counter()
    page = await console.page("/")
    load_s = time.perf_counter() - started
    overview = await console.get("/console/overview")
    await shows(page, "embedded", "sqlite", *(c["component"] for c in overview["components"]))
    await screenshot(page, "overview")

    pool, models = await console.get("/pool"), (await console.get("/models"))["models"]
    await page.goto(console.base + "/#/pool")
    await shows(page, *(h["host_id"] for h in pool["hosts"]),
                *(m["model_id"] for m in models),
                f"{100 * pool['cache']['hit_rate']:.1f}% cache hit rate")
    await screenshot(page, "pool")
    model = models[0]["model_id"]
    transitions = (await console.get(f"/models/{model}/transitions"))["transitions"]
    await page.goto(f"{console.base}/#/pool/models/{model}")
    await shows(page, "Lifecycle", *(t["reason"] for t in transitions))

    arbitration = await console.get("/arbitration")
    waiting = [r["request_id"] for rows in arbitration["queues"].values() for r in rows]
    assert len(waiting) == 2
    await page.goto(console.base + "/#/arbitration")
    await shows(page, *waiting, "alice", "bob", f"{arbitration['gini']:.3f}")
    await screenshot(page, "arbitration")
    decision = (await console.get(f"/arbitration/requests/{waiting[0]}"))["decisions"][-1]
    await page.goto(f"{console.base}/#/arbitration/{waiting[0]}")
    await shows(page, decision["rationale"], decision["counterfactual"])

    stale, plans = await console.get("/stale"), (await console.get("/stale/plans"))["plans"]
    await page.goto(console.base + "/#/retention")
    await shows(page, *(p["plan_id"] for p in plans), f"policy v{stale['policy_version']}")
    plan = await console.get(f"/stale/plans/{plans[0]['plan_id']}")
    await page.goto(f"{console.base}/#/retention/{plans[0]['plan_id']}")
    await shows(page, *(item["reason"] for item in plan["item_rows"]))
    await screenshot(page, "retention-plan")

    stats = await console.get("/artifacts/stats")
    await page.goto(console.base + "/#/artifacts")
    await shows(page, f"{stats['total_stored']} stored, {stats['unique_stored']} unique")

    executions = (await console.get("/executions"))["executions"]
    await page.goto(console.base + "/#/workflows")
    await shows(page, *(x["execution_id"] for x in executions))

    history = await console.get(f"/audit/{model}")
    await page.goto(f"{console.base}/#/audit/{model}")
    await shows(page, "Hash chain verified", f"History ({history['count']} records)")
    until = history["events"][-1]["timestamp_ms"] + 1
    as_of = (await console.get(f"/audit/{model}?until={until}"))["state"]
    local = await page.evaluate(  # the page's datetime-local input is in the browser's zone
        "ms => { const d = new Date(ms + 1000);"
        " d.setMinutes(d.getMinutes() - d.getTimezoneOffset());"
        " return d.toISOString().slice(0, 19); }", until)
    await page.goto(f"{console.base}/#/audit/{model}?until={local}")
    await shows(page, "State as of", f'"state": "{as_of["state"]}"')
    await screenshot(page, "audit")
    assert page.errors == []
    print(f"\nconsole: first page load {load_s * 1000:.0f} ms (login included)")
    await page.context.close()


# --- live -----------------------------------------------------------------------------------

async def node_state(page: Any, node_id: str) -> str:
    return await page.evaluate(
        "id => document.getElementById('dag').cy.getElementById(id).data('state')", node_id)


async def test_a_running_workflows_graph_changes_state_live(console) -> None:
    execution_id = await console.start_workflow(gated_chain("live-graph", 3))
    page = await console.page(f"/workflows/{execution_id}")
    await page.wait_for_function(
        "() => document.getElementById('dag').cy?.getElementById('n0').data('state') === 'running'",
        timeout=WAIT_MS)
    assert await node_state(page, "n1") == "pending"
    await page.evaluate("window.notReloaded = true")
    for i in range(3):
        await report_done(console, execution_id, f"n{i}")
        await page.wait_for_function(
            "id => document.getElementById('dag').cy.getElementById(id).data('state')"
            " === 'completed'", arg=f"n{i}", timeout=WAIT_MS)
    await page.wait_for_function(
        "() => document.getElementById('status')?.textContent === 'completed'", timeout=WAIT_MS)
    assert await page.evaluate("window.notReloaded") is True  # the same page, updated live
    assert await page.evaluate(
        "() => document.getElementById('dag').cy.nodes('.critical').length") == 3
    await screenshot(page, "workflow-graph")
    await page.context.close()


async def test_a_search_finds_an_artifact_and_opens_its_diff(console) -> None:
    page = await console.page("/artifacts")
    await page.fill("#search", "revenue")
    await page.press("#search", "Enter")
    await shows(page, "found")
    hit = page.locator("ol.hits a", has_text="demo-report-").first
    await hit.click()
    await shows(page, "Versions", "@1", "@2")
    await page.click("#compare")
    await page.wait_for_selector("#diff")
    await shows(page, "line(s) differ")
    changed = page.locator("#diff tr.replace")
    assert await changed.count() >= 1
    old, new = (await changed.first.locator("td.old").inner_text(),
                await changed.first.locator("td.new").inner_text())
    assert '"revenue": 10' in old and '"revenue": 12' in new, (old, new)
    await screenshot(page, "artifact-diff")
    await page.context.close()


async def test_cancel_needs_the_token_and_shows_on_screen(console) -> None:
    execution_id = await console.start_workflow(gated_chain("to-cancel", 2))
    path = f"/executions/{execution_id}/cancel"
    assert (await console.request("POST", path, token=None))[0] == 401
    assert (await console.request("POST", path, token="wrong"))[0] == 401
    page = await console.page(f"/workflows/{execution_id}")
    await page.wait_for_selector("#cancel", timeout=WAIT_MS)
    # the cookie alone does not make an action: a page elsewhere could send it
    forged = await page.evaluate(
        "path => fetch(path, {method: 'POST', credentials: 'same-origin'}).then(r => r.status)",
        path)
    assert forged in (401, 403)
    assert (await console.get(f"/executions/{execution_id}"))["status"] == "running"
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    clicked = time.perf_counter()
    await page.click("#cancel")
    await page.wait_for_function(
        "() => document.getElementById('status')?.textContent === 'cancelled'", timeout=WAIT_MS)
    print(f"\nconsole: cancel click to 'cancelled' on screen "
          f"{(time.perf_counter() - clicked) * 1000:.0f} ms")
    assert (await console.get(f"/executions/{execution_id}"))["status"] == "cancelled"
    await page.context.close()


# the suite draws 3,000 nodes (past the 400 drawn one by one); the README's figures are of
# PIT_CONSOLE_NODES=10000 pytest -s tests/e2e/test_console.py -k large
LARGE = int(os.environ.get("PIT_CONSOLE_NODES", "3000"))


async def test_a_large_execution_is_drawn_in_bands_and_followed_live(console) -> None:
    workflow = layered_dag(LARGE, seed=11, layers=40)
    execution_id = await console.start_workflow(workflow)
    started = time.perf_counter()
    page = await console.page(f"/workflows/{execution_id}")
    await page.wait_for_function(
        "() => document.getElementById('dag').dataset.mode === 'bands'", timeout=WAIT_MS)
    load_ms = (time.perf_counter() - started) * 1000
    renders = int(await page.get_attribute("#page", "data-renders"))

    async def in_view() -> float:  # when the view (the API) first says completed
        while (await console.get(f"/executions/{execution_id}"))["status"] != "completed":
            await asyncio.sleep(0.05)
        return time.time() * 1000

    viewed = asyncio.ensure_future(in_view())
    await page.wait_for_function(
        "() => document.getElementById('status')?.textContent === 'completed'",
        timeout=300_000, polling="raf")
    shown_ms = await page.evaluate("Date.now()")
    viewed_ms = await viewed
    ended_ms = (await console.get(f"/executions/{execution_id}"))["ended_at_ms"]
    total = await page.evaluate(
        "() => document.getElementById('dag').cy.nodes().reduce((n, b) => n + b.data('count'), 0)")
    assert total == LARGE  # every node in exactly one band
    assert int(await page.get_attribute("#page", "data-renders")) > renders  # followed live
    await screenshot(page, f"workflow-{LARGE}-nodes")
    print(f"\nconsole at {LARGE:,} nodes: page load to the graph drawn {load_ms:.0f} ms; "
          f"ExecutionCompleted to 'completed' on screen {shown_ms - ended_ms} ms "
          f"(to the view {viewed_ms - ended_ms:.0f} ms, the view to the screen "
          f"{shown_ms - viewed_ms:.0f} ms); "
          f"{int(await page.get_attribute('#page', 'data-renders')) - renders} live renders")
    await page.context.close()


async def test_a_policy_set_from_the_console_is_validated_then_in_force(console) -> None:
    before = (await console.get("/stale"))["policy_version"]
    page = await console.page("/retention")
    editor = page.locator("#stale-policy")
    await editor.fill("policies:\n  - name: broken\n    rules: [{type: MaxAge}]\n")
    await page.click("text=Set policy")
    await page.wait_for_selector(".policy .error", timeout=WAIT_MS)
    assert "days" in await page.inner_text(".policy .error")  # the problem, named
    assert (await console.get("/stale"))["policy_version"] == before  # nothing changed
    await editor.fill("policies:\n  - name: year\n    priority: 1\n    rules:\n"
                      "      - {type: MaxAge, days: 365}\norphan_grace_hours: 0\n")
    await page.click("text=Set policy")
    await page.wait_for_selector(".policy .ok", timeout=WAIT_MS)
    await shows(page, f"policy v{before + 1}")  # the view, live
    await page.context.close()
