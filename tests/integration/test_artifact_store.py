"""The Artifact Store end to end inside one process: `pit up`'s Stack (embedded broker, the
catalog processor, the projector) and a PitClient storing, deduplicating, versioning,
retrieving, diffing and tracing lineage - content in the local blob store, facts on
pit.artifacts.events, answers from the `artifacts` view."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
import pytest_asyncio

from streams.app import Stack
from streams.artifacts.errors import ArtifactError, ArtifactNotFoundError
from streams.blobs import address_of
from streams.client import PitClient
from streams.components import views
from streams.config import Settings
from streams.errors import BlobIntegrityError


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pit(tmp_path_factory, free_port):
    settings = Settings(data_dir=tmp_path_factory.mktemp("artifacts"), http_port=free_port(),
                        env={"PIT_DAG_OUTPUT_ARTIFACTS": "1"})
    async with Stack(settings, progress=False, without={"host-monitor"},
                     http_port=settings.http_port) as stack:
        client = await PitClient(stack.settings, issued_by="alice").start()
        try:
            yield client
        finally:
            await client.close()


pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_store_deduplicates_and_merges_metadata(pit):
    first = await pit.artifacts.store(b"the same bytes", tags=["a"], metadata={"k": 1},
                                     content_type="text/plain")
    again = await pit.artifacts.store(b"the same bytes", tags=["b"], creator="bob",
                                     metadata={"k": 2, "j": 3}, content_type="text/plain")
    assert first.address == again.address == address_of(b"the same bytes")
    assert (first.newly_stored, again.newly_stored) == (True, False)
    entry = await pit.artifacts.info(first.address)
    assert entry["tags"] == ["a", "b"] and entry["creators"] == ["alice", "bob"]
    assert entry["metadata"] == {"k": 1, "j": 3}
    assert json.loads(json.dumps(entry["metadata_conflicts"])) == {"k": [2]}
    assert entry["stores"] == 2 and entry["structure"] == 1.0
    stats = await pit.artifacts.stats()
    assert stats["bytes_saved"] >= len(b"the same bytes") and stats["dedup_ratio"] > 1


async def test_versions_diff_and_retrieval_by_name(pit, tmp_path):
    v1 = await pit.artifacts.store(b"line one\nline two\n", name="notes", message="first",
                                  content_type="text/plain")
    v2 = await pit.artifacts.store(b"line one\nline 2\n", name="notes", message="second",
                                  content_type="text/plain")
    history = await pit.artifacts.versions("notes")
    assert [(v["version"], v["address"], v["message"], v["parent_version"])
            for v in history] == [(1, v1.address, "first", 0), (2, v2.address, "second", 1)]
    assert await pit.artifacts.retrieve("notes") == b"line one\nline 2\n"
    assert await pit.artifacts.retrieve("notes@1") == b"line one\nline two\n"
    target = await pit.artifacts.retrieve("notes@1", to=tmp_path / "out.txt")
    assert target.read_bytes() == b"line one\nline two\n"
    diff = await pit.artifacts.diff("notes@1", "notes@2")
    assert "-line two\n" in diff and "+line 2\n" in diff and diff.startswith("--- notes@1")
    with pytest.raises(ArtifactNotFoundError, match=r"versions 1\.\.2, not 7"):
        await pit.artifacts.retrieve("notes@7")
    with pytest.raises(ArtifactNotFoundError, match="no artifact named 'nothing'"):
        await pit.artifacts.versions("nothing")


async def test_a_diff_of_binary_content_says_why(pit):
    blob = await pit.artifacts.store(bytes(range(256)))
    text = await pit.artifacts.store(b"text")
    with pytest.raises(ArtifactError, match="binary"):
        await pit.artifacts.diff(blob.address, text.address)
    assert "~ size: 256 -> 4" in await pit.artifacts.diff(blob.address, text.address, metadata=True)


async def test_lineage_links_and_refuses_a_cycle(pit):
    raw = await pit.artifacts.store(b"raw data", name="raw")
    clean = await pit.artifacts.store(b"clean data", derived_from=["raw"])
    model = await pit.artifacts.store(b"model weights", derived_from=[clean.address])
    graph = await pit.artifacts.lineage(clean.address)
    assert graph["nodes"] == sorted([raw.address, clean.address, model.address])
    assert {(e["parent"], e["child"]) for e in graph["edges"]} == {
        (raw.address, clean.address), (clean.address, model.address)}
    assert (await pit.artifacts.lineage(model.address, "up"))["nodes"] == sorted(
        [raw.address, clean.address, model.address])
    with pytest.raises(ArtifactError, match="cycle"):
        await pit.artifacts.link(raw.address, model.address)


async def test_accesses_are_sent_aggregated_and_reach_the_view(pit):
    stored = await pit.artifacts.store(b"read me often")
    for _ in range(5):
        await pit.artifacts.retrieve(stored.address)
    assert pit.artifacts.access.counts[stored.address] == 5
    await pit.artifacts.flush_access()
    assert not pit.artifacts.access.counts
    for _ in range(600):  # up to 30 s: the projector folds the aggregate in
        if (await pit.artifacts.info(stored.address))["accesses"] == 5:
            break
        await asyncio.sleep(0.05)
    entry = await pit.artifacts.info(stored.address)
    assert entry["accesses"] == 5 and entry["utility"] > 0


async def test_the_api_serves_entries_versions_lineage_and_stats(pit):
    parent = await pit.artifacts.store(b"api parent", name="api-doc", tags=["api"])
    child = await pit.artifacts.store(b"api child", derived_from=["api-doc"])
    base = f"http://127.0.0.1:{pit.settings.http_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/artifacts/api-doc") as response:
            assert response.status == 200
            assert (await response.json())["address"] == parent.address
        async with http.get(f"{base}/artifacts/api-doc/versions") as response:
            assert [v["version"] for v in (await response.json())["versions"]] == [1]
        async with http.get(f"{base}/artifacts/{child.address}/lineage",
                            params={"direction": "up"}) as response:
            assert (await response.json())["nodes"] == sorted([parent.address, child.address])
        async with http.get(f"{base}/artifacts/stats") as response:
            assert (await response.json())["unique_stored"] >= 2
        async with http.get(f"{base}/artifacts/no-such-name") as response:
            assert response.status == 404
            assert (await response.json()) == {"error": "unknown artifact no-such-name"}


async def test_a_corrupted_blob_is_never_served(pit):
    stored = await pit.artifacts.store(b"precious content")
    path = pit.artifacts.backend.hot.path_of(stored.address)
    path.write_bytes(b"precious c0ntent")
    with pytest.raises(BlobIntegrityError, match=stored.address):
        await pit.artifacts.retrieve(stored.address)


async def test_dag_node_outputs_become_artifacts_with_their_lineage(pit):
    from streams.artifacts.catalog import canonical_json
    from streams.dag.definition import WorkflowBuilder
    from streams.dag.runner import Runner

    stop = asyncio.Event()
    runner = Runner(pit.settings, runner_id="r-artifacts", codec=pit.codec,
                    session_timeout_ms=3000, say=lambda _line: None)
    running = asyncio.create_task(runner.run(stop))
    try:
        workflow = (WorkflowBuilder("lineage")
                    .operator("a", "identity", constants={"value": 2})
                    .operator("b", "add", constants={"b": 1})
                    .operator("c", "add", constants={"b": 10})
                    .edge("a", "b.a").edge("b", "c.a").build())
        execution = await pit.dag.execute_workflow(workflow)
        result = await pit.dag.await_result(execution, timeout=30)
        assert result.ok and result.outputs == {"c": {"out": 13}}
    finally:
        stop.set()
        await running
    outputs = {node: address_of(canonical_json({"out": value}).encode())
               for node, value in (("a", 2), ("b", 3), ("c", 13))}
    async def cataloged(address: str) -> bool:
        try:
            return bool(await pit.artifacts.info(address))
        except ArtifactNotFoundError:
            return False
    for _ in range(600):  # up to 30 s: the cataloger and the view follow the log
        if all([await cataloged(a) for a in outputs.values()]):
            break
        await asyncio.sleep(0.05)
    entry = await pit.artifacts.info(outputs["c"])
    assert entry["producers"] == [[execution, "c"]] and "dag-output" in entry["tags"]
    assert entry["metadata"]["workflow"] == "lineage"
    graph = await pit.artifacts.lineage(outputs["c"], "up")
    assert {(e["parent"], e["child"]) for e in graph["edges"]} == {
        (outputs["a"], outputs["b"]), (outputs["b"], outputs["c"])}


async def until_found(pit, text: str, expected: int, **filters):
    for _ in range(600):  # up to 30 s: the projector indexes what the catalog decided
        page = await pit.artifacts.search(text, **filters)
        if page.total == expected:
            return page
        await asyncio.sleep(0.05)
    return page


async def test_search_finds_content_and_metadata_and_forgets_removed_artifacts(pit):
    from projections.replay import rebuild_view
    from streams.sql import connect

    report = await pit.artifacts.store(b"Quarterly revenue grew in the northern region.\n",
                                      name="q3-report", content_type="text/plain",
                                      tags=["finance", "q3"], metadata={"owner": "ops-team"})
    await pit.artifacts.store(b'{"note": "northern expansion plan"}',
                             content_type="application/json", tags=["plans"])
    await pit.artifacts.store(b"\x00\x01 northern binary", tags=["finance"])  # no text read
    page = await until_found(pit, "northern", 2)
    assert page.total == 2 and page.facets["content_types"] == {
        "text/plain": 1, "application/json": 1}
    (hit,) = [h for h in page.hits if h.address == report.address]
    assert hit.name == "q3-report" and "<mark>northern</mark>" in " ".join(
        hit.highlights["text"])
    assert (await pit.artifacts.search("northern", tags=("finance",))).total == 1
    assert (await pit.artifacts.search("ops-team")).hits[0].address == report.address  # metadata
    assert (await pit.artifacts.search("", tags=("finance",), limit=1)).total == 2

    await pit.artifacts.remove(report.address, reason="superseded")
    assert (await until_found(pit, "northern", 1)).total == 1

    # the index is a projection of the log: a rebuild gives the same answers
    engine = connect(pit.settings.db_url)
    replayed = await rebuild_view(engine, pit.settings, "artifact_search",
                                  views(pit.settings))
    assert replayed > 0
    again = await pit.artifacts.search("northern")
    assert again.total == 1 and again.hits[0].address != report.address
