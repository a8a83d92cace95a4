// The Pit's console: one page per component over the read API, re-read when the server's
// event stream (/console/events) says the views of a page's topics moved. No build step:
// plain DOM, cytoscape (+dagre) for graphs, uPlot for charts. Text from the API is only ever
// set as text, never parsed as HTML.
"use strict";

// --- small helpers ------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({credentials: "same-origin"}, options));
  if (response.status === 401) {
    location.href = "/login";
    throw new ApiError(401, "this Pit wants its API token");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body.error || response.statusText);
  return body;
}

// An action: a command through the API (the cookie plus X-Pit-Action: see projections/api.py).
// A string body is sent as it is (a policy in YAML or JSON), anything else as JSON.
async function act(method, path, body) {
  const text = typeof body === "string";
  return api(path, {method, headers: {"Content-Type": text ? "text/plain" : "application/json",
    "X-Pit-Action": "1"}, body: body === undefined ? undefined : text ? body : JSON.stringify(body)});
}

// A policy document to read and, with actions on, to set (PUT, JSON or YAML; the API lists
// every problem of an invalid one).
function policyEditor(id, path, document) {
  const box = el("textarea", {id, rows: 14, spellcheck: "false", readonly: !config.actions}, document);
  const said = el("span", {class: "muted"});
  const save = config.actions ? el("button", {onclick: async () => {
    try {
      await act("PUT", path, box.value);
      said.className = "ok";
      said.textContent = "set: the new policy is an event now";
    } catch (error) {
      said.className = "error";
      said.textContent = error.message;
    }
  }}, "Set policy") : el("span", {class: "muted"}, "read-only: actions need PIT_API_TOKEN on pit up");
  return el("div", {class: "policy"}, box, el("div", {class: "toolbar"}, save, said));
}

const fmt = {
  int: (n) => n === null || n === undefined ? "-" : Number(n).toLocaleString("en-US"),
  pct: (x) => x === null || x === undefined ? "-" : (100 * x).toFixed(1) + "%",
  num: (x, d = 2) => x === null || x === undefined ? "-" : Number(x).toFixed(d),
  bytes(n) {
    if (n === null || n === undefined) return "-";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  },
  ms(ms) {
    if (ms === null || ms === undefined) return "-";
    if (ms < 1000) return Math.round(ms) + " ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(1) + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + Math.round(s % 60) + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  },
  // An ISO time from the API, as the reader's local time, with how long ago.
  time(iso) {
    if (!iso) return "-";
    const at = new Date(iso);
    return at.toLocaleString(undefined, {dateStyle: "medium", timeStyle: "medium"})
      + " (" + fmt.ago(at) + ")";
  },
  ago(at) {
    const s = Math.round((Date.now() - at.getTime()) / 1000);
    if (Math.abs(s) < 5) return "now";
    const abs = Math.abs(s), span = abs < 60 ? abs + " s" : abs < 3600
      ? Math.round(abs / 60) + " min" : abs < 86400 ? Math.round(abs / 3600) + " h"
      : Math.round(abs / 86400) + " d";
    return s > 0 ? span + " ago" : "in " + span;
  },
};

function badge(state) { return el("span", {class: "badge s-" + String(state).toLowerCase()}, state); }

// A horizontal bar; `warnAbove`: the share past which it turns red (memory near its budget).
function bar(value, total, label, warnAbove = Infinity) {
  const share = total > 0 ? Math.min(value / total, 1) : 0;
  return el("div", {class: "bar", title: label},
    el("div", {class: "fill" + (share > warnAbove ? " hot" : ""), style: `width:${(100 * share).toFixed(1)}%`}),
    el("span", {}, label));
}

function table(columns, rows, onRow) {
  return el("table", {},
    el("thead", {}, el("tr", {}, columns.map(([title]) => el("th", {}, title)))),
    el("tbody", {}, rows.length ? rows.map((row) => el("tr", {
      class: onRow ? "clickable" : undefined, onclick: onRow ? () => onRow(row) : undefined},
      columns.map(([, cell]) => el("td", {}, cell(row)))))
      : el("tr", {}, el("td", {colspan: columns.length, class: "muted"}, "nothing yet"))));
}

function section(title, ...children) { return el("section", {}, el("h2", {}, title), children); }

function link(href, text) { return el("a", {href}, text); }

function message(text, kind = "error") { return el("p", {class: kind}, text); }

// A chart of time series (uPlot): `series` is [[label, values], ...] over `times` (seconds).
function chart(title, times, series, options = {}) {
  const box = el("div", {class: "chart"});
  const colors = ["#2563eb", "#16a34a", "#dc2626", "#d97706", "#7c3aed", "#0891b2"];
  requestAnimationFrame(() => {
    const width = Math.max(box.clientWidth, 300);
    new uPlot({
      title, width, height: options.height || 180,
      scales: options.scales || {},
      series: [{}, ...series.map(([label], i) => ({
        label, stroke: colors[i % colors.length], width: 2, spanGaps: true,
        paths: options.stepped ? uPlot.paths.stepped({align: 1}) : undefined}))],
      axes: [{}, options.yAxis || {}],
    }, [times, ...series.map(([, values]) => values)], box);
  });
  return box;
}

// --- live updates -------------------------------------------------------------------------------

const live = {
  source: null,
  page: null,         // {topics, refresh}
  busy: false, again: false,
  stats: {changes: 0, renders: 0, lastChangeMs: 0, lastRenderMs: 0},

  connect() {
    const indicator = document.getElementById("live");
    this.source = new EventSource("/console/events");
    this.source.onopen = () => { indicator.textContent = "live"; indicator.className = "live on"; };
    this.source.onerror = () => { indicator.textContent = "reconnecting"; indicator.className = "live"; };
    this.source.addEventListener("change", (event) => {
      const topics = JSON.parse(event.data).topics;
      this.stats.changes++;
      this.stats.lastChangeMs = performance.now();
      if (this.page && this.page.topics.some((t) => topics.some((moved) => moved.startsWith(t)))) {
        this.refresh();
      }
    });
  },

  // One refresh at a time; changes during one make exactly one more.
  async refresh() {
    if (this.busy) { this.again = true; return; }
    this.busy = true;
    try {
      do {
        this.again = false;
        await this.page.refresh();
        this.rendered();
      } while (this.again);
    } catch (error) {
      console.error(error);
    } finally {
      this.busy = false;
    }
  },

  rendered() {
    this.stats.renders++;
    this.stats.lastRenderMs = performance.now();
    document.getElementById("page").dataset.renders = String(this.stats.renders);
  },
};
window.pitConsole = live.stats;  // for the browser tests and anyone measuring

// --- the router ---------------------------------------------------------------------------------

let config = {actions: false};

function route() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const parts = (path || "/").split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  const name = parts[0] || "overview";
  const page = PAGES[name] || PAGES.overview;
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("current", a.dataset.page === name);
  }
  const main = document.getElementById("page");
  main.replaceChildren();
  main.dataset.page = name;
  const view = page(main, parts.slice(1), params);
  live.page = view;
  live.refresh();
}

function go(hash) { location.hash = hash; }

// --- Overview -----------------------------------------------------------------------------------

function overview(main) {
  const body = el("div");
  main.append(el("h1", {}, "Overview"), body);
  return {
    topics: ["pit."],
    async refresh() {
      const [o, health, series] = await Promise.all([
        api("/console/overview"), api("/health"), api("/console/series")]);
      const samples = series.samples;
      const times = samples.map((s) => s.at_ms / 1000);
      const components = o.components.map((c) => c.component);
      const rate = (name) => samples.map((s, i) => {
        if (i === 0 || !s.components[name] || !samples[i - 1].components[name]) return null;
        return (s.components[name].in - samples[i - 1].components[name].in)
          / ((s.at_ms - samples[i - 1].at_ms) / 1000);
      });
      body.replaceChildren(
        section("Processors", table([
          ["component", (c) => c.component],
          ["records in", (c) => fmt.int(c.in)], ["in / s", (c) => fmt.num(c.in_per_s, 1)],
          ["records out", (c) => fmt.int(c.out)], ["out / s", (c) => fmt.num(c.out_per_s, 1)],
          ["consumer lag", (c) => fmt.int(c.lag)],
          ["dead letters", (c) => el("span", {class: c.dead_letters ? "warn" : ""}, fmt.int(c.dead_letters))],
          ["restarts", (c) => fmt.int(c.restarts)],
        ], o.components)),
        el("div", {class: "cols"},
          section("Broker", el("dl", {},
            el("dt", {}, "kind"), el("dd", {}, o.broker.kind),
            el("dt", {}, "bootstrap"), el("dd", {}, o.broker.bootstrap_servers || "-"))),
          section("Database", el("dl", {},
            el("dt", {}, "engine"), el("dd", {}, o.database.dialect),
            el("dt", {}, "url"), el("dd", {}, o.database.url),
            el("dt", {}, "status"), el("dd", {}, health.status),
            el("dt", {}, "projections"), el("dd", {}, Object.keys(health.positions).join(", "))))),
        section("Records in per second",
          samples.length > 1 ? chart("", times, components.map((c) => [c, rate(c)]))
            : message("sampling: the chart starts after two samples (" + series.interval_s + " s apart)", "muted")));
    },
  };
}

// --- Workflows ----------------------------------------------------------------------------------

const NODE_STATES = ["pending", "scheduled", "running", "retrying", "failed", "completed",
  "fallback", "skipped", "cancelled"];
const STATE_COLORS = {pending: "#cbd5e1", scheduled: "#93c5fd", running: "#2563eb",
  retrying: "#f59e0b", failed: "#dc2626", completed: "#16a34a", fallback: "#84cc16",
  skipped: "#a3a3a3", cancelled: "#6b7280"};

function progressBar(done, total) {
  return bar(done, total, `${fmt.int(done)} / ${fmt.int(total)} (${fmt.pct(total ? done / total : 0)})`);
}

function workflows(main, parts, params) {
  if (parts.length) return executionPage(main, parts[0], params);
  const status = params.get("status") || "";
  const filter = el("select", {onchange: (e) => go("#/workflows" + (e.target.value ? "?status=" + e.target.value : ""))},
    ["", "running", "completed", "failed", "cancelled", "timed_out"].map((s) =>
      el("option", {value: s, selected: s === status}, s || "every status")));
  const body = el("div");
  main.append(el("h1", {}, "Workflows"), el("div", {class: "toolbar"}, "Executions: ", filter), body);
  return {
    topics: ["pit.dag."],
    async refresh() {
      const found = await api("/executions?limit=200" + (status ? "&status=" + status : ""));
      body.replaceChildren(table([
        ["execution", (x) => link("#/workflows/" + encodeURIComponent(x.execution_id), x.execution_id)],
        ["workflow", (x) => x.workflow], ["status", (x) => badge(x.status)],
        ["progress", (x) => progressBar(x.done, x.nodes)],
        ["started", (x) => fmt.time(x.started_at)],
        ["duration", (x) => fmt.ms(x.duration_ms)],
      ], found.executions));
    },
  };
}

function graphStyle() {
  const style = [
    {selector: "node", style: {"label": "data(label)", "font-size": 11, "text-valign": "center",
      "text-halign": "center", "text-wrap": "wrap", "width": 120, "height": 34, "shape": "round-rectangle",
      "background-color": "#cbd5e1", "border-width": 1, "border-color": "#475569", "color": "#0f172a"}},
    {selector: "edge", style: {"width": 1.5, "line-color": "#94a3b8", "target-arrow-shape": "triangle",
      "target-arrow-color": "#94a3b8", "curve-style": "bezier"}},
    {selector: "node.critical", style: {"border-width": 4, "border-color": "#7c2d12"}},
    {selector: "edge.critical", style: {"width": 3.5, "line-color": "#7c2d12", "target-arrow-color": "#7c2d12"}},
    {selector: "node:selected", style: {"overlay-opacity": 0.15}},
    {selector: "node.band", style: {"width": 150, "height": 70, "background-color": "#f1f5f9",
      "pie-size": "92%", "text-background-color": "#ffffff", "text-background-opacity": 0.85,
      "text-background-padding": 2}},
  ];
  for (const state of NODE_STATES) {
    style.push({selector: `node[state = "${state}"]`, style: {"background-color": STATE_COLORS[state],
      "color": ["running", "failed", "completed", "cancelled"].includes(state) ? "#ffffff" : "#0f172a"}});
  }
  const pie = {};
  NODE_STATES.forEach((state, i) => {
    pie[`pie-${i + 1}-background-color`] = STATE_COLORS[state];
    pie[`pie-${i + 1}-background-size`] = `data(p${i})`;
  });
  style.push({selector: "node.band", style: pie});
  return style;
}

// The elements of a graph answer: nodes one by one, or bands of levels (graph.py).
function graphElements(g) {
  const critical = new Set(g.critical_path);
  if (g.mode === "nodes") {
    return [
      ...g.nodes.map((n) => ({data: {id: n.id, label: n.id, state: n.state},
        classes: n.critical ? "critical" : ""})),
      ...g.edges.map((e) => ({data: {id: e.source + "->" + e.target, source: e.source, target: e.target},
        classes: critical.has(e.source) && critical.has(e.target) ? "critical" : ""})),
    ];
  }
  return [
    ...g.bands.map((b) => ({data: bandData(b), classes: "band" + (b.critical ? " critical" : "")})),
    ...g.edges.map((e) => ({data: {id: e.source + "->" + e.target, source: e.source, target: e.target}})),
  ];
}

function bandData(b) {
  const levels = b.first_level === b.last_level ? `level ${b.first_level}` : `levels ${b.first_level}-${b.last_level}`;
  const data = {id: b.id, count: b.nodes, label: `${levels}\n${fmt.int(b.nodes)} nodes\n`
    + `${fmt.int(b.counts.completed || 0)} done, ${fmt.int(b.counts.running || 0)} running`};
  NODE_STATES.forEach((state, i) => { data[`p${i}`] = 100 * (b.counts[state] || 0) / b.nodes; });
  return data;
}

function executionPage(main, executionId, params) {
  const head = el("div"), graphBox = el("div", {class: "graph", id: "dag"}), nodesBox = el("div"),
    detail = el("div", {class: "detail"});
  const legend = el("div", {class: "legend"}, NODE_STATES.map((s) =>
    el("span", {}, el("i", {style: `background:${STATE_COLORS[s]}`}), s)),
  el("span", {}, el("i", {class: "critical-key"}), "critical path"));
  main.append(el("h1", {}, link("#/workflows", "Workflows"), " / ", executionId), head, legend,
    graphBox, el("div", {class: "cols wide-left"}, nodesBox, detail));
  let cy = null, shape = "", offset = Number(params.get("offset") || 0), state = params.get("state") || "";
  const pageSize = 50;

  async function showNode(nodeId) {
    const found = await api(`/executions/${encodeURIComponent(executionId)}/nodes?node=${encodeURIComponent(nodeId)}`);
    const node = found.nodes[0];
    if (!node) { detail.replaceChildren(section(nodeId, message("not started yet: no attempt", "muted"))); return; }
    detail.replaceChildren(section("Node " + nodeId,
      el("p", {}, badge(node.state), " ", node.kind || "", " attempt ", node.attempt),
      table([
        ["#", (r) => r.attempt], ["status", (r) => badge(r.status)], ["runner", (r) => r.runner || "-"],
        ["started", (r) => fmt.time(r.started_at)], ["duration", (r) => fmt.ms(r.duration_ms)],
        ["error", (r) => r.error_type ? `${r.error_type}: ${r.message}` : ""],
      ], node.runs),
      node.outputs ? el("pre", {}, JSON.stringify(node.outputs, null, 2)) : null));
  }

  function draw(g) {
    const key = g.mode + ":" + (g.mode === "nodes" ? g.nodes.length : g.bands.length);
    if (cy && key === shape) {  // the same shape: states change in place, no new layout
      cy.batch(() => {
        if (g.mode === "nodes") {
          const critical = new Set(g.critical_path);
          for (const n of g.nodes) {
            const node = cy.getElementById(n.id);
            node.data("state", n.state);
            node.toggleClass("critical", n.critical);
          }
          cy.edges().forEach((e) => e.toggleClass("critical",
            critical.has(e.data("source")) && critical.has(e.data("target"))));
        } else {
          for (const b of g.bands) {
            const node = cy.getElementById(b.id);
            node.data(bandData(b));
            node.toggleClass("critical", b.critical);
          }
        }
      });
      return;
    }
    shape = key;
    if (cy) cy.destroy();
    // bands read like text, in rows of 8: a layered layout of a chain of bands is one long row
    const layout = g.mode === "nodes" ? {name: "dagre", rankDir: "LR", nodeSep: 12, rankSep: 50}
      : {name: "grid", cols: Math.min(8, g.bands.length), avoidOverlap: true,
        sort: (a, b) => Number(a.id().slice(5)) - Number(b.id().slice(5))};
    cy = cytoscape({container: graphBox, elements: graphElements(g), style: graphStyle(),
      layout, minZoom: 0.05, maxZoom: 3});
    cy.on("tap", "node", (event) => {
      const id = event.target.id();
      if (g.mode === "nodes") showNode(id);
    });
    graphBox.dataset.mode = g.mode;
    graphBox.cy = cy;  // for the browser tests: the drawn states, read back
  }

  async function refreshNodes() {
    const q = `limit=${pageSize}&offset=${offset}` + (state ? "&state=" + state : "");
    const found = await api(`/executions/${encodeURIComponent(executionId)}/nodes?${q}`);
    const filter = el("select", {onchange: (e) => { state = e.target.value; offset = 0; refreshNodes(); }},
      ["", ...NODE_STATES].map((s) => el("option", {value: s, selected: s === state}, s || "every state")));
    const pages = el("span", {class: "pager"},
      el("button", {disabled: offset === 0, onclick: () => { offset = Math.max(offset - pageSize, 0); refreshNodes(); }}, "previous"),
      ` ${fmt.int(found.count ? offset + 1 : 0)}-${fmt.int(Math.min(offset + pageSize, found.count))} of ${fmt.int(found.count)} `,
      el("button", {disabled: offset + pageSize >= found.count, onclick: () => { offset += pageSize; refreshNodes(); }}, "next"));
    nodesBox.replaceChildren(section("Nodes", el("div", {class: "toolbar"}, filter, pages), table([
      ["node", (n) => n.node_id], ["state", (n) => badge(n.state)], ["attempt", (n) => n.attempt],
      ["runner", (n) => (n.runs.at(-1) || {}).runner || "-"],
      ["duration", (n) => fmt.ms((n.runs.at(-1) || {}).duration_ms)],
      ["error", (n) => { const r = n.runs.at(-1) || {}; return r.error_type ? r.error_type : ""; }],
    ], found.nodes, (n) => showNode(n.node_id))));
  }

  return {
    topics: ["pit.dag."],
    async refresh() {
      const [x, g] = await Promise.all([
        api("/executions/" + encodeURIComponent(executionId)),
        api(`/console/executions/${encodeURIComponent(executionId)}/graph`)]);
      const cancel = x.status === "running" && config.actions
        ? el("button", {class: "danger", id: "cancel", onclick: async () => {
          if (!confirm(`Cancel ${executionId}?`)) return;
          try { await act("POST", `/executions/${encodeURIComponent(executionId)}/cancel`, {reason: "cancelled from the console"}); }
          catch (error) { alert(error.message); }
        }}, "Cancel execution") : null;
      head.replaceChildren(el("div", {class: "summary"},
        badge(x.status), el("span", {id: "status"}, x.status), " ",
        progressBar(x.done, x.nodes),
        el("span", {}, "started " + fmt.time(x.started_at)),
        el("span", {}, x.status === "running" ? "elapsed " + fmt.ms(Date.now() - x.started_at_ms) + ", ETA " + fmt.ms(g.eta_ms)
          : "took " + fmt.ms(x.duration_ms)),
        el("span", {}, `critical path ${fmt.int(g.critical_path_length)} nodes, ${fmt.ms(g.critical_path_ms)}`),
        cancel),
      x.error ? message(`${x.error_type} at ${x.error_node}: ${x.error}`) : "",
      g.mode === "bands" ? message(`${fmt.int(g.nodes_total)} nodes in ${fmt.int(g.levels)} levels: drawn as bands of levels, each a pie of its nodes' states; single nodes are in the table below`, "muted") : "");
      draw(g);
      await refreshNodes();
    },
  };
}

// --- Pool ---------------------------------------------------------------------------------------

function pool(main, parts) {
  if (parts[0] === "models" && parts[1]) return modelPage(main, parts[1]);
  const body = el("div");
  main.append(el("h1", {}, "Pool"), body);
  return {
    topics: ["pit.pool."],
    async refresh() {
      const [p, models, series] = await Promise.all([api("/pool"), api("/models"), api("/console/series")]);
      const times = series.samples.map((s) => s.at_ms / 1000);
      body.replaceChildren(
        el("div", {class: "cards"},
          el("div", {class: "card"}, el("b", {}, fmt.pct(p.cache.hit_rate)), " cache hit rate"),
          el("div", {class: "card"}, el("b", {}, fmt.int(p.cache.hits)), " hits, ", fmt.int(p.cache.misses), " misses"),
          el("div", {class: "card"}, el("b", {}, fmt.int(p.cache.evictions)), " evictions"),
          el("div", {class: "card"}, el("b", {}, fmt.ms(p.cache.mean_load_ms)), " mean load"),
          Object.entries(p.models.by_state).map(([s, n]) => el("div", {class: "card"}, el("b", {}, fmt.int(n)), " ", badge(s)))),
        section("Hosts", table([
          ["host", (h) => h.host_id], ["alive", (h) => h.alive ? "yes" : "no"],
          ["resident", (h) => bar(h.resident_mb, h.memory_budget_mb, `${fmt.int(h.resident_mb)} / ${fmt.int(h.memory_budget_mb)} MB resident`, 0.9)],
          ["committed", (h) => bar(h.committed_mb, h.memory_budget_mb, `${fmt.int(h.committed_mb)} / ${fmt.int(h.memory_budget_mb)} MB committed`, 0.9)],
          ["models", (h) => h.models.map((m) => m.model_id || m).join(", ") || "-"],
        ], p.hosts)),
        section("Models", table([
          ["model", (m) => link("#/pool/models/" + encodeURIComponent(m.model_id), m.model_id)],
          ["state", (m) => badge(m.state)], ["in state for", (m) => fmt.ms(m.time_in_state_ms)],
          ["uses", (m) => fmt.int(m.usage_count)], ["last used", (m) => fmt.time(m.last_used)],
          ["failures", (m) => fmt.int(m.failure_count)],
        ], models.models)),
        section("Cache hit rate and prewarm accuracy over time (this pit up's metrics, since it started)",
          series.samples.length > 1 ? chart("", times, [
            ["hit rate", series.samples.map((s) => s.hit_rate)],
            ["prewarm accuracy", series.samples.map((s) => s.prewarm_accuracy)],
          ], {scales: {y: {range: [0, 1]}}})
            : message("sampling: the chart starts after two samples", "muted")));
    },
  };
}

const MODEL_STATES = ["Cold", "Warming", "Hot", "Cooling", "Failed"];

function modelPage(main, modelId) {
  const body = el("div");
  main.append(el("h1", {}, link("#/pool", "Pool"), " / ", modelId), body);
  return {
    topics: ["pit.pool."],
    async refresh() {
      const [m, t] = await Promise.all([
        api("/models/" + encodeURIComponent(modelId)),
        api("/models/" + encodeURIComponent(modelId) + "/transitions")]);
      const steps = t.transitions;
      const times = steps.map((s) => s.occurred_at_ms / 1000);
      const values = steps.map((s) => MODEL_STATES.indexOf(s.to_state));
      if (steps.length) { times.push(Date.now() / 1000); values.push(values.at(-1)); }
      body.replaceChildren(
        el("p", {}, badge(m.state), ` for ${fmt.ms(m.time_in_state_ms)}; ${fmt.int(m.usage_count)} uses, `
          + `${fmt.int(m.failure_count)} failures, last used ${fmt.time(m.last_used)}`),
        section("Lifecycle", steps.length ? chart("", times, [["state", values]], {stepped: true, height: 160,
          scales: {y: {range: [-0.5, MODEL_STATES.length - 0.5]}},
          yAxis: {values: (u, ticks) => ticks.map((v) => MODEL_STATES[v] || ""), splits: () => [0, 1, 2, 3, 4], size: 70}})
          : message("registered, never loaded", "muted")),
        section("Transitions", table([
          ["when", (s) => fmt.time(s.occurred_at)], ["from", (s) => badge(s.from_state)],
          ["to", (s) => badge(s.to_state)], ["reason", (s) => s.reason],
          ["after", (s) => fmt.ms(s.time_in_previous_ms)],
        ], [...steps].reverse())));
    },
  };
}

// --- Arbitration --------------------------------------------------------------------------------

function arbitration(main, parts) {
  if (parts[0]) return decisionPage(main, parts[0]);
  const body = el("div"), policy = el("div");
  main.append(el("h1", {}, "Arbitration"), body, policy);
  return {
    topics: ["pit.arbitration."],
    async refresh() {
      let a;
      try { a = await api("/arbitration"); } catch (error) {
        if (error.status === 404) { body.replaceChildren(message(error.message, "muted")); return; }
        throw error;
      }
      const [decisions, series] = await Promise.all([api("/arbitration/decisions?limit=50"), api("/console/series")]);
      if (!policy.firstChild) {  // drawn once: a refresh must not undo an edit in progress
        const current = await api("/arbitration/policy");
        policy.append(section("Policy (JSON or YAML)", policyEditor("arbitration-policy",
          "/arbitration/policy", JSON.stringify(current.policy, null, 2))));
      }
      const times = series.samples.map((s) => s.at_ms / 1000);
      const queues = Object.entries(a.queues);
      body.replaceChildren(
        el("div", {class: "cards"},
          Object.entries(a.requests).map(([k, n]) => el("div", {class: "card"}, el("b", {}, fmt.int(n)), " " + k)),
          el("div", {class: "card"}, el("b", {}, fmt.num(a.gini, 3)), " Gini")),
        section("Queues by priority", queues.length ? queues.map(([band, rows]) => el("div", {},
          el("h3", {}, band), table([
            ["position", (r) => r.position + 1],
            ["request", (r) => link("#/arbitration/" + encodeURIComponent(r.request_id), r.request_id)],
            ["model", (r) => r.model_id], ["tenant", (r) => r.tenant], ["priority", (r) => r.priority],
            ["waiting since", (r) => fmt.time(r.submitted_at)], ["expected wait", (r) => fmt.ms(r.wait_estimate_ms)],
          ], rows)))
          : message("no one is waiting", "muted")),
        section(`Tenants over the last ${fmt.int(a.window_s)} s`, table([
          ["tenant", (t) => t.tenant], ["weight", (t) => fmt.num(t.weight)],
          ["share", (t) => bar(t.share, 1, `${fmt.pct(t.share)} of grants`)],
          ["entitled", (t) => bar(t.entitled, 1, `${fmt.pct(t.entitled)} entitled`)],
          ["granted", (t) => fmt.int(t.granted)], ["waiting", (t) => fmt.int(t.waiting)],
        ], a.tenants)),
        section("Gini over time", series.samples.length > 1
          ? chart("", times, [[a.pool_id, series.samples.map((s) => s.gini[a.pool_id] ?? null)]],
            {scales: {y: {range: [0, 1]}}})
          : message("sampling: the chart starts after two samples", "muted")),
        section("Latest decisions", table([
          ["when", (d) => fmt.time(d.decided_at)], ["request", (d) => d.request_id],
          ["tenant", (d) => d.tenant], ["outcome", (d) => badge(d.outcome)], ["model", (d) => d.model_id],
          ["why", (d) => d.rationale],
        ], decisions.decisions, (d) => go("#/arbitration/" + encodeURIComponent(d.request_id)))));
    },
  };
}

function decisionPage(main, requestId) {
  const body = el("div");
  main.append(el("h1", {}, link("#/arbitration", "Arbitration"), " / ", requestId), body);
  return {
    topics: ["pit.arbitration."],
    async refresh() {
      const r = await api("/arbitration/requests/" + encodeURIComponent(requestId));
      const decisions = r.decisions || [];
      body.replaceChildren(
        el("p", {}, badge(r.state), ` ${r.model_id} for tenant ${r.tenant}, priority ${r.priority}, `
          + `submitted ${fmt.time(r.submitted_at)}`),
        ...decisions.map((d) => section(`${d.outcome} at ${fmt.time(d.decided_at)}`,
          el("dl", {},
            el("dt", {}, "why"), el("dd", {class: "rationale"}, d.rationale),
            el("dt", {}, "what would have changed it"), el("dd", {}, d.counterfactual || "-"),
            el("dt", {}, "strategy"), el("dd", {}, d.strategy),
            el("dt", {}, "conflicts"), el("dd", {}, (d.conflicts || []).join("; ") || "none"),
            el("dt", {}, "score"), el("dd", {}, fmt.num(d.score, 3) + " = " + Object.entries(d.score_breakdown || {})
              .map(([k, v]) => `${k} ${fmt.num(v, 3)}`).join(" + ")),
            el("dt", {}, "priority"), el("dd", {}, `${d.priority} (effective ${fmt.num(d.effective_priority)})`)))));
    },
  };
}

// --- Artifacts ----------------------------------------------------------------------------------

// A highlight from the search engine: escaped text with <mark> around the matches. Built as
// text and <mark> elements, so nothing in it can run as markup.
function highlighted(fragment) {
  const decode = (s) => { const t = document.createElement("textarea"); t.innerHTML = s; return t.value; };
  const out = el("span", {class: "snippet"});
  fragment.split(/(<mark>.*?<\/mark>)/).forEach((part) => {
    const m = part.match(/^<mark>(.*)<\/mark>$/);
    out.append(m ? el("mark", {}, decode(m[1])) : decode(part));
  });
  return out;
}

function artifacts(main, parts, params) {
  if (parts[0] === "diff") return diffPage(main, params);
  if (parts[0]) return artifactPage(main, parts[0], params.get("name"));
  const q = params.get("q") || "", tags = params.getAll("tag"), types = params.getAll("content_type");
  const box = el("input", {type: "search", id: "search", value: q, placeholder: "search content and metadata"});
  const form = el("form", {class: "toolbar", onsubmit: (e) => {
    e.preventDefault();
    const next = new URLSearchParams(params);
    next.set("q", box.value);
    go("#/artifacts?" + next);
  }}, box, el("button", {type: "submit"}, "Search"));
  const body = el("div");
  main.append(el("h1", {}, "Artifacts"), form, body);

  function toggle(name, value) {
    const next = new URLSearchParams(params);
    const values = next.getAll(name);
    next.delete(name);
    for (const v of values) if (v !== value) next.append(name, v);
    if (!values.includes(value)) next.append(name, value);
    go("#/artifacts?" + next);
  }

  return {
    topics: ["pit.artifacts."],
    async refresh() {
      const query = new URLSearchParams({q, limit: "50"});
      for (const t of tags) query.append("tag", t);
      for (const c of types) query.append("content_type", c);
      const [page, stats] = await Promise.all([api("/console/artifacts/search?" + query), api("/artifacts/stats")]);
      const facet = (title, name, counts, chosen) => el("div", {class: "facet"}, el("h3", {}, title),
        Object.entries(counts).map(([value, n]) => el("label", {},
          el("input", {type: "checkbox", checked: chosen.includes(value), onchange: () => toggle(name, value)}),
          ` ${value} (${fmt.int(n)})`)));
      body.replaceChildren(
        el("p", {class: "muted"}, `${fmt.int(stats.total_stored)} stored, ${fmt.int(stats.unique_stored)} unique, `
          + `${fmt.bytes(stats.bytes_saved)} saved by deduplication`),
        el("div", {class: "cols narrow-left"},
          el("aside", {}, facet("Tags", "tag", page.facets.tags || {}, tags),
            facet("Content types", "content_type", page.facets.content_types || {}, types)),
          el("div", {}, el("p", {}, `${fmt.int(page.total)} found`),
            el("ol", {class: "hits"}, page.hits.map((hit) => el("li", {},
              link("#/artifacts/" + encodeURIComponent(hit.address) + (hit.name ? "?name=" + encodeURIComponent(hit.name) : ""),
                hit.name || hit.address),
              " ", el("span", {class: "muted"}, hit.content_type, " ", hit.tags.map((t) => "#" + t).join(" "),
                " ", fmt.time(hit.created_at)),
              Object.values(hit.highlights).flat().map((h) => el("div", {}, highlighted(h)))))))));
    },
  };
}

function artifactPage(main, ref, knownName) {
  const body = el("div"), lineageBox = el("div", {class: "graph small", id: "lineage"});
  main.append(el("h1", {}, link("#/artifacts", "Artifacts"), " / ", ref), body, section("Lineage", lineageBox));
  let cy = null;
  return {
    topics: ["pit.artifacts."],
    async refresh() {
      const info = await api("/artifacts/" + encodeURIComponent(ref));
      info.name = knownName || (ref.startsWith("sha256:") ? null : ref.replace(/@\d+$/, ""));
      const versions = info.name ? await api("/artifacts/" + encodeURIComponent(info.name) + "/versions").catch(() => null) : null;
      const rows = versions ? versions.versions : [];
      const picks = new Set(rows.slice(-2).map((v) => v.version));
      const compare = el("button", {id: "compare", onclick: () => {
        const [a, b] = [...picks].sort((x, y) => x - y);
        if (a === undefined || b === undefined) { alert("pick two versions"); return; }
        go(`#/artifacts/diff?old=${encodeURIComponent(info.name + "@" + a)}&new=${encodeURIComponent(info.name + "@" + b)}`);
      }}, "Compare side by side");
      body.replaceChildren(
        el("dl", {}, ["address", "content_type", "size", "tags", "creators", "stored_at", "quality",
          "accesses", "derivations", "removed_reason"]
          .filter((k) => info[k] !== undefined && info[k] !== "").flatMap((k) => [el("dt", {}, k),
            el("dd", {}, k === "stored_at" ? fmt.time(info[k]) : k === "size" ? fmt.bytes(info[k])
              : Array.isArray(info[k]) ? info[k].join(", ") || "-" : String(info[k]))])),
        info.metadata && Object.keys(info.metadata).length ? el("pre", {}, JSON.stringify(info.metadata, null, 2)) : "",
        rows.length ? section("Versions", table([
          ["", (v) => el("input", {type: "checkbox", checked: picks.has(v.version), onchange: (e) => {
            if (e.target.checked) picks.add(v.version); else picks.delete(v.version);
          }})],
          ["version", (v) => link("#/artifacts/" + encodeURIComponent(info.name + "@" + v.version), "@" + v.version)],
          ["address", (v) => v.address.slice(0, 19) + "…"], ["size", (v) => fmt.bytes(v.size)],
          ["created", (v) => fmt.time(v.created_at)],
        ], rows), rows.length > 1 ? compare : "") : "");
      const lineage = await api("/artifacts/" + encodeURIComponent(ref) + "/lineage");
      const nodes = lineage.nodes || [], edges = lineage.edges || [];
      if (cy) cy.destroy();
      cy = cytoscape({container: lineageBox, style: [
        {selector: "node", style: {"label": "data(label)", "font-size": 10, "background-color": "#93c5fd",
          "width": 24, "height": 24, "text-valign": "bottom"}},
        {selector: "node.root", style: {"background-color": "#2563eb"}},
        {selector: "edge", style: {"width": 1.5, "label": "data(label)", "font-size": 9, "curve-style": "bezier",
          "target-arrow-shape": "triangle", "line-color": "#94a3b8", "target-arrow-color": "#94a3b8"}}],
        elements: [
          ...nodes.map((address) => ({data: {id: address, label: address.slice(7, 19)},
            classes: address === info.address ? "root" : ""})),
          ...edges.map((e) => ({data: {id: `${e.child}<-${e.parent}`, source: e.parent, target: e.child, label: e.relation}}))],
        layout: {name: "dagre", rankDir: "LR"}});
      cy.on("tap", "node", (e) => go("#/artifacts/" + encodeURIComponent(e.target.id())));
    },
  };
}

function diffPage(main, params) {
  const old = params.get("old"), neu = params.get("new");
  const body = el("div");
  main.append(el("h1", {}, link("#/artifacts", "Artifacts"), ` / ${old} → ${neu}`), body);
  return {
    topics: [],
    async refresh() {
      let d;
      try { d = await api(`/console/artifacts/diff?old=${encodeURIComponent(old)}&new=${encodeURIComponent(neu)}`); }
      catch (error) { body.replaceChildren(message(error.message)); return; }
      body.replaceChildren(el("p", {}, `${fmt.int(d.changed)} line(s) differ`),
        el("table", {class: "diff", id: "diff"}, el("thead", {}, el("tr", {},
          el("th", {colspan: 2}, old), el("th", {colspan: 2}, neu))),
        el("tbody", {}, d.rows.map((r) => el("tr", {class: r.op},
          el("td", {class: "no"}, r.old_no ?? ""), el("td", {class: "old"}, r.old ?? ""),
          el("td", {class: "no"}, r.new_no ?? ""), el("td", {class: "new"}, r.new ?? ""))))));
    },
  };
}

// --- Retention ----------------------------------------------------------------------------------

function retention(main, parts) {
  if (parts[0]) return planPage(main, parts[0]);
  const body = el("div"), policy = el("div");
  main.append(el("h1", {}, "Retention"), body, policy);
  return {
    topics: ["pit.stale.", "pit.artifacts."],
    async refresh() {
      const [s, plans] = await Promise.all([api("/stale"), api("/stale/plans")]);
      if (!policy.firstChild) {  // drawn once: a refresh must not undo an edit in progress
        const text = s.document ? JSON.stringify(JSON.parse(s.document), null, 2) : "";
        policy.append(section("Policy (JSON or YAML)", policyEditor("stale-policy", "/stale/policy", text)));
      }
      const total = Object.values(s.tiers).reduce((n, t) => n + t.bytes, 0) + s.trash_bytes;
      body.replaceChildren(
        section("Bytes per tier", table([
          ["tier", (t) => t[0]], ["items", (t) => fmt.int(t[1].items)],
          ["bytes", (t) => bar(t[1].bytes, total, fmt.bytes(t[1].bytes))],
        ], [...Object.entries(s.tiers), ["trash", {items: s.trash_items, bytes: s.trash_bytes}]])),
        el("div", {class: "cards"},
          el("div", {class: "card"}, "next run ", el("b", {id: "next-run"}, s.next_run_at ? fmt.time(s.next_run_at) : "not scheduled")),
          el("div", {class: "card"}, "last run ", el("b", {}, s.last_run_at ? fmt.time(s.last_run_at) : "never")),
          el("div", {class: "card"}, el("b", {}, fmt.bytes(s.bytes_freed)), " freed"),
          el("div", {class: "card"}, el("b", {}, fmt.int(s.holds)), " legal holds"),
          el("div", {class: "card"}, "policy ", el("b", {}, "v" + s.policy_version))),
        section("Plans", table([
          ["plan", (p) => link("#/retention/" + encodeURIComponent(p.plan_id), p.plan_id)],
          ["status", (p) => badge(p.status)], ["items", (p) => fmt.int(p.items)],
          ["delete", (p) => fmt.bytes(p.delete_bytes)], ["archive", (p) => fmt.bytes(p.archive_bytes)],
          ["trashed", (p) => fmt.int(p.trashed)], ["created", (p) => fmt.time(p.created_at)],
        ], plans.plans)));
    },
  };
}

function planPage(main, planId) {
  const body = el("div");
  main.append(el("h1", {}, link("#/retention", "Retention"), " / ", planId), body);
  const pageSize = 100;
  let offset = 0;
  const action = (label, method, path, payload, cls) => config.actions ? el("button", {class: cls, onclick: async () => {
    if (!confirm(`${label}?`)) return;
    try { await act(method, path, payload); } catch (error) { alert(error.message); }
  }}, label) : null;
  const view = {
    topics: ["pit.stale."],
    async refresh() {
      const p = await api(`/stale/plans/${encodeURIComponent(planId)}?limit=${pageSize}&offset=${offset}`);
      body.replaceChildren(
        el("p", {}, badge(p.status), ` ${fmt.int(p.items)} items: delete ${fmt.bytes(p.delete_bytes)}, `
          + `archive ${fmt.bytes(p.archive_bytes)}, to warm ${fmt.bytes(p.warm_bytes)}; expires ${fmt.time(p.expires_at)}`),
        el("div", {class: "toolbar"},
          p.status === "planned" ? action("Apply this plan", "POST", `/stale/plans/${encodeURIComponent(planId)}/apply`, undefined, "danger") : null,
          p.trashed ? action("Restore every trashed item", "POST", "/stale/restore", {target: planId}) : null,
          config.actions ? null : el("span", {class: "muted"}, "read-only: actions need PIT_API_TOKEN on pit up")),
        p.items ? progressBar(p.trashed + p.moved + p.skipped, p.items) : "",
        table([
          ["#", (i) => i.position + 1], ["address", (i) => i.address.slice(0, 23) + "…"],
          ["decision", (i) => `${i.action} → ${i.target}`], ["reason", (i) => i.reason], ["rule", (i) => i.rule],
          ["size", (i) => fmt.bytes(i.size)], ["tier", (i) => i.tier],
          ["outcome", (i) => el("span", {}, badge(i.outcome), " ", i.outcome_reason || "")],
          ["", (i) => i.outcome === "trashed" ? action("Restore", "POST", "/stale/restore", {target: i.address}) : ""],
        ], p.item_rows),
        p.items > pageSize ? el("span", {class: "pager"},
          el("button", {disabled: offset === 0, onclick: () => { offset -= pageSize; view.refresh(); }}, "previous"),
          el("button", {disabled: offset + pageSize >= p.items, onclick: () => { offset += pageSize; view.refresh(); }}, "next")) : "");
    },
  };
  return view;
}

// --- Audit --------------------------------------------------------------------------------------

function audit(main, parts, params) {
  const key = parts[0] || params.get("key") || "", until = params.get("until") || "";
  const keyBox = el("input", {id: "audit-key", value: key, placeholder: "entity key: a model, an execution, an artifact…"});
  const untilBox = el("input", {id: "audit-until", type: "datetime-local", step: "1", value: until});
  const form = el("form", {class: "toolbar", onsubmit: (e) => {
    e.preventDefault();
    const next = new URLSearchParams();
    if (untilBox.value) next.set("until", untilBox.value);
    go("#/audit/" + encodeURIComponent(keyBox.value) + (next.size ? "?" + next : ""));
  }}, keyBox, " as of ", untilBox, el("button", {type: "submit"}, "Show"));
  const verifyBox = el("div"), body = el("div");
  main.append(el("h1", {}, "Audit"), verifyBox, form, body);
  return {
    topics: ["pit."],
    async refresh() {
      const verify = await fetch("/audit/verify", {credentials: "same-origin"}).then((r) => r.json());
      verifyBox.replaceChildren(el("p", {id: "verify", class: verify.ok ? "ok" : "error"},
        verify.ok ? `Hash chain verified: ${fmt.int(verify.rows)} rows, head ${String(verify.head_hash || "").slice(0, 16)}…`
          : `Hash chain BROKEN: ${verify.problems.map((p) => JSON.stringify(p)).join("; ")}`));
      if (!key) { body.replaceChildren(message("give an entity key", "muted")); return; }
      const untilMs = until ? new Date(until).getTime() : null;
      let h;
      try { h = await api("/audit/" + encodeURIComponent(key) + (untilMs ? "?until=" + untilMs : "")); }
      catch (error) { body.replaceChildren(message(error.message)); return; }
      body.replaceChildren(
        untilMs ? section(`State as of ${new Date(untilMs).toLocaleString()}`,
          el("pre", {id: "as-of"}, h.state ? JSON.stringify(h.state, null, 2) : "no events before then")) : "",
        section(`History (${fmt.int(h.count)} records)`, table([
          ["seq", (e) => e.seq], ["when", (e) => fmt.time(e.timestamp)],
          ["record", (e) => e.event_type], ["topic", (e) => e.topic],
          ["hash", (e) => el("code", {title: e.hash}, e.hash.slice(0, 12))],
          ["payload", (e) => el("details", {}, el("summary", {}, "show"), el("pre", {}, JSON.stringify(e.payload, null, 2)))],
        ], h.events)));
    },
  };
}

const PAGES = {overview, workflows, pool, arbitration, artifacts, retention, audit};

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", async () => {
  try { config = await api("/console/config"); } catch (error) { console.error(error); }
  document.getElementById("mode").textContent = config.actions ? "actions on" : "read-only";
  live.connect();
  route();
});
