"""An execution as the console draws it: its definition's DAG, each node in its state from the
view, the critical path marked, and an ETA. Pure: the definition and the view's rows in, a
JSON-ready graph out (`projections/console/__init__.py` reads them).

Why two shapes: a browser lays out and paints a few hundred nodes in well under a second,
but not 10,000 (a layered layout of 10,000 nodes takes tens of seconds). Past `NODE_LIMIT`
nodes the graph is aggregated into *bands* of topological levels: one box per band with
its node counts by state, an edge where a band feeds the next. The band of
a node never changes while it runs, so a live update moves counts between states inside
fixed boxes, and the page stays usable at any size; single nodes are then read from the
paged node table (`/executions/{id}/nodes?offset=`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams.dag.definition import Graph, Workflow

NODE_LIMIT = 400   # drawn node by node up to here
MAX_BANDS = 40     # bands of levels past it: 5 rows of 8 at 1280x800
DONE = frozenset({"completed", "fallback", "skipped"})
ENDED = DONE | {"failed", "cancelled"}


@dataclass(frozen=True)
class NodeRow:
    """What the view knows of one node: its state, its last attempt's duration (or, while
    it runs, when it started)."""

    state: str
    kind: str | None = None
    duration_ms: int | None = None
    started_at_ms: int | None = None


def levels(graph: Graph) -> list[int]:
    """Per node index: the length of the longest path from a source to it."""
    level = [0] * len(graph.ids)
    for i in graph.order:
        for j in graph.dependents[i]:
            level[j] = max(level[j], level[i] + 1)
    return level


def estimates(graph: Graph, rows: Mapping[str, NodeRow], now_ms: int) -> list[float]:
    """Per node index, its duration: measured when it ended, the time so far (at least the
    mean) while it runs, else the mean measured duration (0 before any node ended)."""
    measured = [row.duration_ms for row in rows.values()
                if row.state in ENDED and row.duration_ms is not None]
    mean = sum(measured) / len(measured) if measured else 0.0
    out = [mean] * len(graph.ids)
    for node_id, row in rows.items():
        i = graph.index.get(node_id)
        if i is None:
            continue
        if row.state in ENDED and row.duration_ms is not None:
            out[i] = float(row.duration_ms)
        elif row.state == "running" and row.started_at_ms is not None:
            out[i] = max(float(now_ms - row.started_at_ms), mean)
    return out


def critical_path(graph: Graph, weight: list[float]) -> list[int]:
    """The node indexes of the longest weighted path, source to sink (ties: the smallest
    index, so the same inputs always mark the same path)."""
    if not graph.ids:
        return []
    rank = graph.critical_path_rank(
        {graph.ids[i]: w for i, w in enumerate(weight)}, default=0.0)
    node = max(graph.sources, key=lambda i: (rank[i], -i))
    path = [node]
    while graph.dependents[node]:
        node = max(graph.dependents[node], key=lambda j: (rank[j], -j))
        path.append(node)
    return path


def eta_ms(graph: Graph, rows: Mapping[str, NodeRow], weight: list[float], path: list[int],
           max_concurrency: int, now_ms: int) -> int:
    """The remaining time: the longer of the critical path's unfinished part and the
    unfinished work spread over `max_concurrency` slots (both are lower bounds)."""
    def left(i: int) -> float:
        row = rows.get(graph.ids[i])
        if row is not None and row.state in ENDED:
            return 0.0
        if row is not None and row.state == "running" and row.started_at_ms is not None:
            return max(weight[i] - (now_ms - row.started_at_ms), 0.0)
        return weight[i]

    along_path = sum(left(i) for i in path)
    work = sum(left(i) for i in range(len(graph.ids)))
    return round(max(along_path, work / max(max_concurrency, 1)))


def execution_graph(workflow: Workflow, rows: Mapping[str, NodeRow], *, now_ms: int,
                    max_concurrency: int = 1, node_limit: int = NODE_LIMIT,
                    max_bands: int = MAX_BANDS) -> dict[str, Any]:
    """The graph to draw: node by node (`mode: "nodes"`) up to `node_limit` nodes, else
    aggregated into bands of levels (`mode: "bands"`); with the critical path, the counts
    by state and the ETA (0 once every node ended)."""
    graph = workflow.graph
    weight = estimates(graph, rows, now_ms)
    path = critical_path(graph, weight)
    on_path = set(path)
    state_of = [rows[i].state if i in rows else "pending" for i in graph.ids]
    counts: dict[str, int] = {}
    for state in state_of:
        counts[state] = counts.get(state, 0) + 1
    body: dict[str, Any] = {
        "nodes_total": len(graph.ids), "counts": counts,
        "critical_path": [graph.ids[i] for i in path] if len(path) <= node_limit else [],
        "critical_path_length": len(path),
        "critical_path_ms": round(sum(weight[i] for i in path)),
        "eta_ms": eta_ms(graph, rows, weight, path, max_concurrency, now_ms)}
    if len(graph.ids) <= node_limit:
        kinds = {node.id: node.kind.value for node in workflow.nodes}
        body["mode"] = "nodes"
        body["nodes"] = [{"id": node_id, "state": state_of[i], "kind": kinds[node_id],
                          "critical": i in on_path,
                          "duration_ms": (rows[node_id].duration_ms
                                          if node_id in rows else None)}
                         for i, node_id in enumerate(graph.ids)]
        body["edges"] = [{"source": graph.ids[s], "target": graph.ids[t]}
                         for t, sources in enumerate(graph.dependencies) for s in sources]
        return body
    level = levels(graph)
    depth = max(level) + 1
    per_band = -(-depth // max_bands)  # ceiling: every band holds the same levels
    band_of = [lv // per_band for lv in level]
    bands: dict[int, dict[str, Any]] = {}
    for i, band in enumerate(band_of):
        entry = bands.setdefault(band, {
            "id": f"band-{band}", "first_level": band * per_band,
            "last_level": min((band + 1) * per_band, depth) - 1,
            "nodes": 0, "counts": {}, "critical": False})
        entry["nodes"] += 1
        entry["counts"][state_of[i]] = entry["counts"].get(state_of[i], 0) + 1
        entry["critical"] = entry["critical"] or i in on_path
    # only a band to the next one: edges that skip bands (fan-in from any earlier level)
    # would draw hundreds of lines that hide the flow the bands show
    links = sorted({(band_of[s], band_of[t]) for t, sources in enumerate(graph.dependencies)
                    for s in sources if band_of[t] == band_of[s] + 1})
    body["mode"] = "bands"
    body["levels"] = depth
    body["bands"] = [bands[b] for b in sorted(bands)]
    body["edges"] = [{"source": f"band-{s}", "target": f"band-{t}"} for s, t in links]
    return body
