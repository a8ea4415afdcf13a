// Forge dashboard: plain JS against the Forge API, no build step.
// The admin token lives in sessionStorage only and is sent as a Bearer header.
"use strict";

const state = { token: sessionStorage.getItem("forgeToken") || "", streams: [], timers: [] };
const $ = (sel) => document.querySelector(sel);

function esc(v) {
  return String(v ?? "-").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function age(ts) {
  if (!ts) return "-";
  const s = Math.max(0, Math.floor((Date.now() - Date.parse(ts)) / 1000));
  if (s >= 86400) return `${Math.floor(s / 86400)}d`;
  if (s >= 3600) return `${Math.floor(s / 3600)}h`;
  if (s >= 60) return `${Math.floor(s / 60)}m`;
  return `${s}s`;
}

function cond(obj, type) {
  const c = (obj.status?.conditions || []).find((x) => x.type === type);
  return c ? c.status : "Unknown";
}

async function api(method, path, body) {
  const resp = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = resp.headers.get("content-type")?.includes("json") ? await resp.json() : null;
  if (resp.status === 401) { signOut("The token was not accepted."); throw new Error("unauthorized"); }
  if (!resp.ok) {
    // The API's own message, as it is: it names the field and says why.
    const err = new Error(data?.message || `HTTP ${resp.status}`);
    err.status = resp.status;
    err.details = data?.details || [];
    throw err;
  }
  return data;
}

// Read an NDJSON stream (watch or log follow) and call onItem for each line; resolves to the
// response's status (0 when the connection failed).
async function stream(path, onItem, ctrl = new AbortController()) {
  if (!state.streams.includes(ctrl)) state.streams.push(ctrl);
  let status = 0;
  try {
    const resp = await fetch(path, { headers: { Authorization: `Bearer ${state.token}` }, signal: ctrl.signal });
    status = resp.status;
    if (!resp.ok || !resp.body) return status;
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (line) onItem(JSON.parse(line));
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") console.warn("stream ended", e);
  }
  return status;
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

// Keep a stream going past one response: when the server ends it (its timeoutSeconds, a
// restart, every stream slot taken: 429) `next()` gives the path to go on from, after a pause
// that grows while it keeps failing. `next` returning null (410 Gone for a watch) stops it.
function keepStreaming(first, onItem, next, ctrl = new AbortController()) {
  (async () => {
    let path = first;
    let pause = 500;
    while (path && !ctrl.signal.aborted) {
      const began = Date.now();
      const status = await stream(path, onItem, ctrl);
      if (ctrl.signal.aborted) return;
      path = next(status);
      // A stream that ran its course goes on at once; a refusal or failure waits 1 s, 2 s … 30 s.
      const ranItsCourse = status === 200 && Date.now() - began >= 1000;
      pause = ranItsCourse ? 500 : Math.min(pause * 2, 30000);
      if (path && !ranItsCourse) await sleep(pause);
    }
  })();
  return ctrl;
}

// A watch of PATH (a collection URL with its query, if any) from revision `rv`, resumed from
// the last revision it saw (BOOKMARKs included); when that was compacted away (410) the view is
// drawn anew from fresh lists.
function watch(path, rv, onEvent) {
  const url = () => `${path}${path.includes("?") ? "&" : "?"}watch=true&timeoutSeconds=1800&resourceVersion=${rv}`;
  keepStreaming(url(), (ev) => {
    const seen = Number(ev.object?.metadata?.resourceVersion);
    if (seen > rv) rv = seen;
    if (ev.type !== "BOOKMARK") onEvent(ev);
  }, (status) => {
    if (status === 410) { route(); return null; }
    return retryable(status) ? url() : null;
  });
}

// Worth asking again: the connection failed (0), the stream ran its course (200), the server
// was busy (429) or failing (5xx). Anything else (401, 404…) will not change by asking again.
const retryable = (status) => status === 0 || status === 200 || status === 429 || status >= 500;

function stopStreams() {
  state.streams.forEach((c) => c.abort());
  state.streams = [];
  state.timers.forEach((t) => clearTimeout(t));
  state.timers = [];
  Object.values(graphs.plots).forEach((p) => p.destroy());
  graphs.plots = {};
  window.forgeGraphs = graphs.plots;
}

function table(headers, rows) {
  return `<table><thead><tr>${headers.map((h) => `<th>${esc(h)}</th>`).join("")}</tr></thead><tbody>${
    rows.length ? rows.join("") : `<tr><td colspan="${headers.length}">none</td></tr>`}</tbody></table>`;
}

// ------------------------------------------------------------------ views

async function viewApps() {
  const [apps, deps] = await Promise.all([api("GET", "/api/v1/apps"), api("GET", "/api/v1/deployments")]);
  const byName = Object.fromEntries(deps.items.map((d) => [d.metadata.name, d]));
  const rows = apps.items.map((a) => {
    const live = byName[a.status?.liveDeployment];
    const avail = cond(a, "Available");
    return `<tr data-app="${esc(a.metadata.name)}"><td><a href="#/apps/${esc(a.metadata.name)}">${esc(a.metadata.name)}</a></td>
      <td>${esc(a.spec.repo)}</td><td class="live ${live ? "phase-Live" : ""}">${esc(a.status?.liveDeployment)}</td>
      <td>${live ? esc(live.spec.commit.slice(0, 7)) : "-"}</td>
      <td class="${avail === "True" ? "ok" : "bad"}">${avail === "True" ? "healthy" : "unavailable"}</td>
      <td>${a.status?.url ? `<a href="${esc(a.status.url)}">${esc(a.status.url)}</a>` : "-"}</td></tr>`;
  });
  $("#view").innerHTML = `<h2>Apps</h2>${table(["App", "Repo", "Live release", "Commit", "Health", "URL"], rows)}`;
}

function releaseRows(rels, live) {
  return rels.map((d) => `<tr data-release="${esc(d.metadata.name)}"><td>${esc(d.metadata.name)}${d.metadata.name === live ? " (live)" : ""}</td>
    <td>${esc(d.spec.commit.slice(0, 7))}</td><td>${esc(d.spec.trigger?.type)}</td>
    <td class="phase phase-${esc(d.status?.phase || "Pending")}">${esc(d.status?.phase || "Pending")}</td>
    <td>${esc(d.status?.reason)}${d.status?.message ? `: ${esc(d.status.message)}` : ""}</td><td>${age(d.metadata.createdAt)}</td>
    <td><button class="buildlog" type="button" data-release="${esc(d.metadata.name)}">Build log</button>
    ${live && d.status?.liveTime && d.metadata.name !== live ? `<button class="rollback" data-to="${esc(d.metadata.name)}">Roll back to this</button>` : ""}</td></tr>`);
}

// Ask before acting: the dialog names what will happen; `act` runs only on OK. The API's own
// message is shown, as it is, when it refuses.
function confirmThen(text, okLabel, act) {
  const dlg = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = okLabel;
  dlg.returnValue = "";
  dlg.onclose = async () => {
    if (dlg.returnValue !== "ok") return;
    const out = $("#action-result");
    const err = $("#action-error");
    if (out) out.textContent = "";
    if (err) err.textContent = "";
    try {
      const msg = await act();
      if (out) out.textContent = msg || "done";
    } catch (e) {
      if (err) err.textContent = e.message;
      else alert(e.message);
    }
  };
  dlg.showModal();
}

function processTypes(app, liveRel) {
  const counts = { web: app.spec.replicas ?? 1 };
  const manifest = liveRel?.status?.manifest?.processes || {};
  for (const [t, p] of Object.entries(manifest)) counts[t] = p?.replicas ?? 1;
  for (const [t, n] of Object.entries(app.spec.processes || {})) counts[t] = n;
  return counts;
}

function actionsHtml() {
  return `<h3>Actions</h3>
    <p id="action-error" class="error" role="alert"></p><p id="action-result" class="ok" role="status"></p>
    <div class="actions">
    <form id="deploy-form" class="action"><label>Deploy a branch, tag or commit <input id="deploy-ref" name="ref" required placeholder="main"></label>
      <button type="submit">Deploy</button></form>
    <div class="action"><h4>Scale</h4><form id="scale-form"><span id="scale-inputs"></span> <button type="submit">Scale</button></form></div>
    <div class="action"><h4>Environment</h4><table><tbody id="env-rows"></tbody></table>
      <form id="env-form"><input id="env-key" placeholder="KEY" required> = <input id="env-value" placeholder="value">
      <button type="submit">Set</button></form></div>
    <div class="action"><h4>Secrets</h4><table><tbody id="secret-rows"></tbody></table>
      <form id="secret-form" autocomplete="off"><input id="secret-key" placeholder="KEY" required> =
      <input id="secret-value" type="password" autocomplete="new-password" placeholder="value (never shown)" required>
      <button type="submit">Set secret</button></form></div>
    <div class="action"><h4>Domains</h4><table><tbody id="domain-rows"></tbody></table>
      <form id="domain-form"><input id="domain-name" placeholder="www.example.com" required> <button type="submit">Add domain</button></form></div>
    </div>`;
}

async function viewApp(name) {
  const q = encodeURIComponent(name);
  const sel = `labelSelector=forge.dev/app=${q}`;
  let app = await api("GET", `/api/v1/apps/${q}`);
  const deps = await api("GET", `/api/v1/deployments?${sel}`);
  let secretKeys = [];
  const loadSecrets = async () => {
    try { secretKeys = (await api("GET", `/api/v1/secrets/${q}`)).status?.keys || []; }
    catch (e) { if (e.status !== 404) throw e; secretKeys = []; }
  };
  await loadSecrets();
  const num = (d) => parseInt(d.metadata.name.split("-").pop(), 10);
  const rels = new Map(deps.items.map((d) => [d.metadata.name, d]));
  $("#view").innerHTML = `<h2>${esc(name)}</h2>
    <p>${esc(app.spec.repo)} · live: <strong id="live"></strong> · <span id="url"></span>
    <button id="rollback-prev" type="button">Roll back</button></p>
    ${graphsHtml()}
    ${actionsHtml()}
    <h3>Releases</h3><table><thead><tr>${["Release", "Commit", "Trigger", "Phase", "Reason", "Age", ""].map((h) => `<th>${h}</th>`).join("")}</tr></thead>
    <tbody id="releases"></tbody></table>
    <h3>Processes</h3><table><thead><tr>${["Instance", "Type", "Node", "Phase", "Ready", "Restarts", "Reason"].map((h) => `<th>${h}</th>`).join("")}</tr></thead>
    <tbody id="processes"></tbody></table>
    <h3>Runs</h3><table><thead><tr>${["Run", "Kind", "Scheduled", "Phase", "Exit", "Ended"].map((h) => `<th>${h}</th>`).join("")}</tr></thead>
    <tbody id="runs"></tbody></table>
    <h3>Events</h3><table><tbody id="app-events"></tbody></table><button id="events-more" type="button" hidden>Older events</button>
    <h3>Logs</h3><p class="logbar"><input id="log-filter" type="search" placeholder="filter lines">
    <label><input id="log-probes" type="checkbox"> show health checks</label></p><pre class="logs" id="logs"></pre>`;
  const sorted = () => [...rels.values()].sort((a, b) => num(b) - num(a));
  const liveRel = () => rels.get(app.status?.liveDeployment);
  const doRollback = (to) => confirmThen(
    to ? `Roll ${name} back to ${to}?` : `Roll ${name} back to the previous release?`, "Roll back",
    async () => `${(await api("POST", `/api/v1/apps/${q}/rollback`, to ? { to } : {})).metadata.name} created`);
  // One spec change by JSON merge-patch (the records API's PATCH): keys of env and processes
  // merge on the server, so these need no read first.
  const patchApp = (spec) => api("PATCH", `/api/v1/apps/${q}`, { spec });
  // A list (domains) is replaced whole: read the App, write with its resourceVersion, and on a
  // conflict (the App changed meanwhile; controllers write its status often) read again — as
  // the CLI's read-modify-write does — so no change made meanwhile is written over.
  const updateDomains = async (change) => {
    for (let attempt = 0; ; attempt += 1) {
      const cur = await api("GET", `/api/v1/apps/${q}`);
      const have = cur.spec.domains || [];
      const want = change(have);
      if (JSON.stringify(want) === JSON.stringify(have)) return;
      try {
        await api("PATCH", `/api/v1/apps/${q}`, { metadata: { resourceVersion: cur.metadata.resourceVersion }, spec: { domains: want } });
        return;
      } catch (e) {
        const stale = e.status === 409 && e.details.some((x) => x.path === "metadata.resourceVersion");
        if (!stale || attempt >= 4) throw e;
      }
    }
  };
  const renderActions = () => {
    const env = app.spec.env || {};
    // Names only, as `forge env list` prints them: values stay off screens.
    $("#env-rows").innerHTML = Object.keys(env).sort().map((k) => `<tr data-env="${esc(k)}"><td>${esc(k)}</td>
      <td><button type="button" class="env-unset" data-key="${esc(k)}">Unset</button></td></tr>`).join("") || `<tr><td>no variables</td></tr>`;
    $("#secret-rows").innerHTML = secretKeys.map((k) => `<tr data-secret="${esc(k)}"><td>${esc(k)}</td><td>(hidden)</td>
      <td><button type="button" class="secret-unset" data-key="${esc(k)}">Unset</button></td></tr>`).join("") || `<tr><td>no secrets</td></tr>`;
    $("#domain-rows").innerHTML = (app.spec.domains || []).map((d) => `<tr data-domain="${esc(d)}"><td>${esc(d)}</td>
      <td><button type="button" class="domain-remove" data-domain="${esc(d)}">Remove</button></td></tr>`).join("") || `<tr><td>no custom domains</td></tr>`;
    // The count inputs are redrawn only when the counts themselves change (someone scaled), so
    // a number being typed is not reset by an unrelated update.
    const counts = processTypes(app, liveRel());
    const shownCounts = JSON.stringify(counts);
    if ($("#scale-inputs").dataset.counts !== shownCounts) {
      $("#scale-inputs").dataset.counts = shownCounts;
      $("#scale-inputs").innerHTML = Object.entries(counts).map(([t, n]) => `<label>${esc(t)}
        <input type="number" min="0" max="100" data-proc="${esc(t)}" value="${esc(n)}" size="3"></label>`).join(" ");
    }
    document.querySelectorAll("button.env-unset").forEach((b) => { b.onclick = () => confirmThen(`Unset ${b.dataset.key} on ${name}? (a new release rolls out)`, "Unset",
      async () => { await patchApp({ env: { [b.dataset.key]: null } }); return `unset ${b.dataset.key}`; }); });
    document.querySelectorAll("button.secret-unset").forEach((b) => { b.onclick = () => confirmThen(`Remove secret ${b.dataset.key} from ${name}? (a new release rolls out)`, "Remove",
      async () => { await api("PATCH", `/api/v1/secrets/${q}`, { spec: { data: { [b.dataset.key]: null } } }); await loadSecrets(); renderActions(); return `removed secret ${b.dataset.key}`; }); });
    document.querySelectorAll("button.domain-remove").forEach((b) => { b.onclick = () => confirmThen(`Stop serving ${name} at ${b.dataset.domain}?`, "Remove",
      async () => { await updateDomains((have) => have.filter((d) => d !== b.dataset.domain)); return `${b.dataset.domain} removed`; }); });
  };
  const render = () => {
    const live = app.status?.liveDeployment;
    $("#live").textContent = live || "none";
    // Only an app with a live release has something to roll back from.
    $("#rollback-prev").hidden = !live;
    $("#url").innerHTML = app.status?.url ? `<a href="${esc(app.status.url)}">${esc(app.status.url)}</a>` : "";
    const all = sorted();
    $("#releases").innerHTML = all.length ? releaseRows(all, live).join("") : `<tr><td colspan="7">no releases yet</td></tr>`;
    document.querySelectorAll("button.rollback").forEach((b) => { b.onclick = () => doRollback(b.dataset.to); });
    document.querySelectorAll("#releases button.buildlog").forEach((b) => { b.onclick = () => showBuildLog(name, rels.get(b.dataset.release)); });
    renderActions();
    graphs.releases(all);
  };
  $("#deploy-form").onsubmit = (ev) => {
    ev.preventDefault();
    const ref = $("#deploy-ref").value.trim();
    const body = /^[0-9a-f]{40}$/.test(ref) ? { commit: ref } : { ref };
    confirmThen(`Deploy ${ref} to ${name}?`, "Deploy", async () => {
      const d = await api("POST", `/api/v1/apps/${q}/deploy`, body);
      return d.status?.phase ? `${d.metadata.name} is already ${d.status.phase === "Live" ? "live" : "on its way"} with this commit and config` : `${d.metadata.name} created`;
    });
  };
  $("#env-form").onsubmit = (ev) => {
    ev.preventDefault();
    const key = $("#env-key").value.trim();
    const value = $("#env-value").value;
    confirmThen(`Set ${key} on ${name}? (a new release rolls out)`, "Set", async () => {
      await patchApp({ env: { [key]: value } });
      $("#env-key").value = ""; $("#env-value").value = "";
      return `set ${key}`;
    });
  };
  $("#secret-form").onsubmit = (ev) => {
    ev.preventDefault();
    const key = $("#secret-key").value.trim();
    const input = $("#secret-value");
    confirmThen(`Set secret ${key} on ${name}? (stored encrypted; a new release rolls out)`, "Set secret", async () => {
      const data = { [key]: input.value };
      try {
        try { await api("PATCH", `/api/v1/secrets/${q}`, { spec: { data } }); }
        catch (e) {
          if (e.status !== 404) throw e;
          await api("POST", "/api/v1/secrets", { apiVersion: "forge/v1", kind: "Secret",
            metadata: { name, labels: { "forge.dev/app": name } }, spec: { app: name, data } });
        }
      } finally { input.value = ""; }  // the value never stays on the page
      await loadSecrets(); renderActions();
      return `set secret ${key} (its value is never shown)`;
    });
  };
  $("#scale-form").onsubmit = (ev) => {
    ev.preventDefault();
    const want = {};
    const counts = processTypes(app, liveRel());
    document.querySelectorAll("#scale-inputs input").forEach((i) => {
      if (i.value !== "" && Number(i.value) !== counts[i.dataset.proc]) want[i.dataset.proc] = Number(i.value);
    });
    const what = Object.entries(want).map(([t, n]) => `${t}=${n}`).join(", ");
    if (!what) { $("#action-error").textContent = "nothing to change: set a new count first"; return; }
    const spec = {};
    if ("web" in want) spec.replicas = want.web;
    const procs = Object.fromEntries(Object.entries(want).filter(([t]) => t !== "web"));
    if (Object.keys(procs).length) spec.processes = procs;
    confirmThen(`Scale ${name}: ${what}?`, "Scale", async () => { await patchApp(spec); return `scaled ${what}`; });
  };
  $("#domain-form").onsubmit = (ev) => {
    ev.preventDefault();
    const d = $("#domain-name").value.trim().toLowerCase().replace(/\.$/, "");
    confirmThen(`Serve ${name} at ${d} too?`, "Add domain", async () => {
      await updateDomains((have) => (have.includes(d) ? have : [...have, d]));
      $("#domain-name").value = "";
      return `${d} added`;
    });
  };
  render();
  $("#rollback-prev").onclick = () => doRollback(null);
  // Releases and the live pointer update as they change (watch streams, no polling).
  watch(`/api/v1/deployments?${sel}`, deps.metadata.resourceVersion, (ev) => {
    if (ev.type === "ADDED" && !rels.has(ev.object.metadata.name)) {
      // A changed secret rolls out a new release: read the secret names again then (one GET
      // rather than a sixth stream — a browser opens at most six connections to a server).
      loadSecrets().then(renderActions, () => {});
    }
    if (ev.type === "ADDED" || ev.type === "MODIFIED") rels.set(ev.object.metadata.name, ev.object);
    else if (ev.type === "DELETED") rels.delete(ev.object.metadata.name);
    else return;
    render();
  });
  watch("/api/v1/apps", deps.metadata.resourceVersion, (ev) => {
    if ((ev.type === "ADDED" || ev.type === "MODIFIED") && ev.object.metadata.name === name) { app = ev.object; render(); }
  });
  watchEvents(sel, $("#app-events"), $("#events-more"));
  watchInstances(sel);
  followLogs(q);
  startGraphs(q);
}

// An app's logs: the newest lines and then live ones, with a text filter; the agent's health
// checks are left out by the API (probes=false) unless asked for.
const LOG_KEEP = 2000;
function followLogs(q) {
  const pre = $("#logs");
  let lines = [];
  let ctrl = null;
  const shown = (l) => { const f = $("#log-filter").value; return !f || l.toLowerCase().includes(f.toLowerCase()); };
  const draw = () => { pre.textContent = lines.filter(shown).join("\n") + (lines.length ? "\n" : ""); pre.scrollTop = pre.scrollHeight; };
  const open = () => {
    if (ctrl) ctrl.abort();
    lines = [];
    draw();
    const base = `/api/v1/apps/${q}/logs?follow=true&probes=${$("#log-probes").checked}&timeoutSeconds=1800`;
    // Resumed from the last line's time when the stream ends; line ids (increasing) drop repeats.
    let lastId = 0;
    let lastTime = "";
    ctrl = keepStreaming(`${base}&tail=200`, (l) => {
      if (l.id <= lastId) return;
      lastId = l.id;
      lastTime = l.time;
      const text = `${l.time} ${l.instance} [${l.source}] ${l.line}`;
      lines.push(text);
      if (lines.length > LOG_KEEP) lines = lines.slice(-LOG_KEEP);
      if (shown(text)) { pre.textContent += text + "\n"; pre.scrollTop = pre.scrollHeight; }
    }, (status) => {
      if (!retryable(status)) return null;
      return lastTime ? `${base}&since=${encodeURIComponent(lastTime)}` : `${base}&tail=200`;
    });
  };
  $("#log-filter").oninput = draw;
  $("#log-probes").onchange = open;
  open();
}

// One release's build output, in a dialog; followed while the release is still building.
function showBuildLog(app, rel) {
  if (!rel) return;
  const dlg = $("#buildlog");
  const pre = $("#buildlog-text");
  const name = rel.metadata.name;
  $("#buildlog-title").textContent = `Build log of ${name}`;
  pre.textContent = "";
  const ctrl = new AbortController();
  dlg.onclose = () => ctrl.abort();
  const building = ["Pending", "Building", ""].includes(rel.status?.phase || "");
  let count = 0;
  stream(`/api/v1/apps/${encodeURIComponent(app)}/logs?deployment=${encodeURIComponent(name)}&source=build&follow=${building}&timeoutSeconds=900`, (l) => {
    count += 1;
    pre.textContent += `${l.time} ${l.line}\n`;
    pre.scrollTop = pre.scrollHeight;
  }, ctrl).then(() => { if (!count) pre.textContent = "no build output was kept for this release"; });
  dlg.showModal();
}

// ------------------------------------------------------------------ graphs

// Per-app graphs from GET /api/v1/apps/APP/metrics?since=… (series as [timestamp, value]
// pairs, restarts among them; `releases` as [timestamp, name] beside them), drawn with uPlot when make setup vendored it.
// Each chart's uPlot instance is on window.forgeGraphs[KEY] (its .data is what it shows).
const GRAPHS = [
  { key: "requests", title: "Requests", unit: "", from: (m) => m.series?.requests },
  { key: "errors", title: "5xx responses", unit: "", from: (m) => m.series?.errors },
  { key: "p95", title: "p95 latency", unit: "s", from: (m) => m.series?.p95 },
  { key: "cpu", title: "CPU", unit: "", from: (m) => m.series?.cpu },
  { key: "memory", title: "Memory", unit: "B", from: (m) => m.series?.memory },
  { key: "restarts", title: "Restarts", unit: "", from: (m) => (Array.isArray(m.series?.restarts) ? m.series.restarts : m.restarts) },
];
const GRAPH_REFRESH_MS = 10000;  // the metrics' own bucket: nothing newer exists sooner

function graphsHtml() {
  return `<h3>Graphs <select id="graph-since">${["15m", "1h", "6h", "24h"].map((w) => `<option${w === "1h" ? " selected" : ""}>${w}</option>`).join("")}</select></h3>
    <p id="graphs-note" class="hint" role="status"></p>
    <div id="graphs" class="graphs">${GRAPHS.map((g) => `<figure class="graph" data-graph="${g.key}"><figcaption>${esc(g.title)}</figcaption><div class="plot"></div></figure>`).join("")}</div>`;
}

// A timestamp as unix seconds: numbers in seconds (or milliseconds), or RFC 3339 text.
function toSeconds(t) {
  if (typeof t === "number") return t > 1e12 ? t / 1000 : t;
  const ms = Date.parse(t);
  return Number.isNaN(ms) ? null : ms / 1000;
}

// [[t, v], …] (or {instance: [[t, v], …]}, summed per timestamp) → uPlot's [xs, ys].
function toColumns(series) {
  const sum = new Map();
  const add = (pairs) => (Array.isArray(pairs) ? pairs : []).forEach((p) => {
    const t = Array.isArray(p) ? toSeconds(p[0]) : null;
    const v = Array.isArray(p) && p[1] !== null && p[1] !== undefined ? Number(p[1]) : null;
    if (t === null) return;
    sum.set(t, v === null || Number.isNaN(v) ? (sum.get(t) ?? null) : (sum.get(t) ?? 0) + v);
  });
  if (Array.isArray(series)) add(series);
  else if (series && typeof series === "object") Object.values(series).forEach(add);
  const xs = [...sum.keys()].sort((a, b) => a - b);
  return [xs, xs.map((x) => sum.get(x))];
}

function fmtValue(unit, v) {
  if (v === null || v === undefined) return "-";
  if (unit === "B") {
    const u = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < u.length - 1) { v /= 1024; i += 1; }
    return `${v.toFixed(v < 10 && i ? 1 : 0)} ${u[i]}`;
  }
  if (unit === "s") return v < 1 ? `${(v * 1000).toFixed(0)} ms` : `${v.toFixed(2)} s`;
  return Math.abs(v) < 10 && v % 1 ? v.toFixed(2) : String(Math.round(v));
}

// Release markers: a dashed line and the release's name at each release's time.
function markersPlugin(getMarks) {
  return {
    hooks: {
      draw: [(u) => {
        const ctx = u.ctx;
        const { top, height } = u.bbox;
        ctx.save();
        ctx.strokeStyle = "#7c3aed";
        ctx.fillStyle = "#7c3aed";
        ctx.setLineDash([4, 3]);
        ctx.font = `${Math.round(10 * devicePixelRatio)}px system-ui, sans-serif`;
        for (const [t, label] of getMarks()) {
          const x = Math.round(u.valToPos(t, "x", true));
          if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
          ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
          ctx.fillText(String(label), x + 3, top + 10 * devicePixelRatio);
        }
        ctx.restore();
      }],
    },
  };
}

const graphs = {
  marks: [],
  plots: {},
  // Release markers: the metrics response's own, else each release's creation time.
  releases(rels) {
    if (this.fromMetrics) return;
    this.marks = rels.map((d) => [toSeconds(d.status?.liveTime || d.metadata.createdAt), d.metadata.name]).filter(([t]) => t !== null);
    Object.values(this.plots).forEach((p) => p.redraw(false));
  },
};

// Charts follow the page's width.
window.addEventListener("resize", () => {
  for (const p of Object.values(graphs.plots)) {
    const w = p.root.parentElement?.clientWidth;
    if (w) p.setSize({ width: Math.max(260, w), height: 150 });
  }
});

function startGraphs(q) {
  Object.values(graphs.plots).forEach((p) => p.destroy());
  graphs.plots = {};
  graphs.fromMetrics = false;
  graphs.xrange = null;
  window.forgeGraphs = graphs.plots;
  const note = $("#graphs-note");
  if (typeof window.uPlot !== "function") {
    $("#graphs").hidden = true;
    note.textContent = "No graphs: the chart library (uPlot) is not installed on this server — run make setup, which vendors it from npm into forge/ui/vendor/.";
    return;
  }
  const plotFor = (g, fig) => {
    if (graphs.plots[g.key]) return graphs.plots[g.key];
    const el = fig.querySelector(".plot");
    const opts = {
      width: Math.max(260, el.clientWidth || 360), height: 150, legend: { show: true },
      // Every chart spans the window the API answered for (`from`..`to`), data or not.
      scales: { x: { time: true, range: (u, min, max) => graphs.xrange || [min, max] } },
      axes: [{}, { values: (u, vals) => vals.map((v) => fmtValue(g.unit, v)), size: 60 }],
      series: [{}, { label: g.title, stroke: "#2563eb", fill: "rgba(37,99,235,.08)", width: 1.5, spanGaps: false,
        value: (u, v) => fmtValue(g.unit, v) }],
      plugins: [markersPlugin(() => graphs.marks)],
    };
    graphs.plots[g.key] = new window.uPlot(opts, [[], []], el);
    return graphs.plots[g.key];
  };
  const load = async () => {
    const since = $("#graph-since")?.value || "1h";
    try {
      const m = await api("GET", `/api/v1/apps/${q}/metrics?since=${encodeURIComponent(since)}`);
      note.textContent = "";
      if (Array.isArray(m.releases)) {
        graphs.fromMetrics = true;
        graphs.marks = m.releases.map(([t, name]) => [toSeconds(t), name]).filter(([t]) => t !== null);
      }
      window.forgeGraphMarks = graphs.marks;
      const from = toSeconds(m.from ?? null);
      const to = toSeconds(m.to ?? null);
      graphs.xrange = from !== null && to !== null && to > from ? [from, to] : null;
      for (const g of GRAPHS) {
        const fig = document.querySelector(`figure[data-graph="${g.key}"]`);
        if (!fig) return;  // the page moved on
        const cols = toColumns(g.from(m));
        const plot = plotFor(g, fig);
        plot.setData(cols);
        fig.dataset.points = String(cols[0].length);
      }
    } catch (e) {
      if (e.message === "unauthorized") return;
      note.textContent = `No graphs: ${e.message}`;
    }
    if (document.querySelector("#graphs")) state.timers.push(setTimeout(load, GRAPH_REFRESH_MS));
  };
  $("#graph-since").onchange = () => { state.timers.forEach((t) => clearTimeout(t)); state.timers = []; load(); };
  load();
}

// Processes (web, workers) and runs (release commands, cron, forge run) of one app, kept current by a watch.
async function watchInstances(sel) {
  const list = await api("GET", `/api/v1/instances?${sel}`);
  const insts = new Map(list.items.map((i) => [i.metadata.name, i]));
  const draw = () => {
    const all = [...insts.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
    const procs = all.filter((i) => !i.spec.oneshot && i.spec.desired === "Running");
    const runs = all.filter((i) => i.spec.oneshot).sort((a, b) => (b.metadata.createdAt || "").localeCompare(a.metadata.createdAt || ""));
    $("#processes").innerHTML = procs.map((i) => `<tr data-instance="${esc(i.metadata.name)}"><td>${esc(i.metadata.name)}</td>
      <td>${esc(i.spec.process || "web")}</td><td>${esc(i.spec.node)}</td><td class="phase phase-${esc(i.status?.phase)}">${esc(i.status?.phase)}</td>
      <td>${i.status?.ready ? "yes" : "no"}</td><td>${esc(i.status?.restarts ?? 0)}</td><td>${esc(i.status?.reason)}</td></tr>`).join("")
      || `<tr><td colspan="7">none</td></tr>`;
    $("#runs").innerHTML = runs.slice(0, 30).map((i) => `<tr data-run="${esc(i.metadata.name)}"><td>${esc(i.metadata.name)}</td>
      <td>${esc(i.spec.oneshot.type)}${i.spec.oneshot.schedule ? ` (${esc(i.spec.oneshot.schedule)})` : ""}</td>
      <td>${esc(i.spec.oneshot.scheduledTime || i.metadata.createdAt)}</td><td class="phase phase-${esc(i.status?.phase)}">${esc(i.status?.phase || "Pending")}</td>
      <td>${esc(i.status?.exitCode ?? "")}</td><td>${esc(i.status?.finishedTime || "")}</td></tr>`).join("")
      || `<tr><td colspan="6">none</td></tr>`;
  };
  draw();
  watch(`/api/v1/instances?${sel}`, list.metadata.resourceVersion, (ev) => {
    if (ev.type === "ADDED" || ev.type === "MODIFIED") insts.set(ev.object.metadata.name, ev.object);
    else if (ev.type === "DELETED") insts.delete(ev.object.metadata.name);
    else return;
    draw();
  });
}

function eventRow(e) {
  const s = e.spec;
  return `<tr data-event="${esc(e.metadata.name)}"><td>${age(s.lastTime)}</td><td class="${esc(s.type)}">${esc(s.type)}</td>
    <td class="reason">${esc(s.reason)}</td><td>${esc(s.involvedObject.kind.toLowerCase())}/${esc(s.involvedObject.name)}</td>
    <td>${esc(s.message)}${s.count > 1 ? ` (x${s.count})` : ""}</td></tr>`;
}

// Events newest first, a page at a time (the API's limit/continue), new ones streamed in on top.
const EVENTS_PAGE = 20;
async function watchEvents(selector, tbody, more) {
  const base = `/api/v1/events?limit=${EVENTS_PAGE}${selector ? `&${selector}` : ""}`;
  const list = await api("GET", base);
  tbody.innerHTML = list.items.map(eventRow).join("");
  let next = list.metadata.continue;
  const showMore = () => {
    more.hidden = !next;
    more.textContent = next ? `Older events (${list.metadata.remainingItemCount ?? "more"} left)` : "";
  };
  more.onclick = async () => {
    const page = await api("GET", `${base}&continue=${encodeURIComponent(next)}`);
    for (const e of page.items) {
      if (!tbody.querySelector(`tr[data-event="${CSS.escape(e.metadata.name)}"]`)) tbody.insertAdjacentHTML("beforeend", eventRow(e));
    }
    next = page.metadata.continue;
    list.metadata.remainingItemCount = page.metadata.remainingItemCount;
    showMore();
  };
  showMore();
  const rv = list.metadata.resourceVersion;
  watch(`/api/v1/events${selector ? `?${selector}` : ""}`, rv, (ev) => {
    if (ev.type !== "ADDED" && ev.type !== "MODIFIED") return;
    tbody.querySelector(`tr[data-event="${CSS.escape(ev.object.metadata.name)}"]`)?.remove();
    tbody.insertAdjacentHTML("afterbegin", eventRow(ev.object));
  });
}

async function viewEvents() {
  $("#view").innerHTML = `<h2>Events</h2><table><thead><tr><th>Last</th><th>Type</th><th>Reason</th><th>Object</th><th>Message</th></tr></thead><tbody id="events"></tbody></table>
    <button id="events-more" type="button" hidden>Older events</button>`;
  await watchEvents("", $("#events"), $("#events-more"));
}

async function viewNodes() {
  const nodes = await api("GET", "/api/v1/nodes");
  const rows = nodes.items.map((n) => {
    const iso = n.status?.isolation || {};
    const sched = n.spec?.drain ? "Draining" : n.spec?.unschedulable ? "SchedulingDisabled" : "";
    return `<tr data-node="${esc(n.metadata.name)}"><td>${esc(n.metadata.name)}</td>
      <td class="${cond(n, "Ready") === "True" ? "ok" : "bad"}">${esc(cond(n, "Ready") === "True" ? "Ready" : "NotReady")}${sched ? `, ${sched}` : ""}</td>
      <td>${esc(n.spec?.address)}</td><td>${esc(n.status?.capacity?.cpu)} cpu / ${Math.round((n.status?.capacity?.memory || 0) / 1048576)} MiB</td>
      <td>${age(n.status?.lastHeartbeatTime)}</td><td>cgroups ${esc(iso.cgroups)}, bwrap ${esc(iso.bwrap)}, network ${esc(iso.network)}, disk ${esc(iso.disk)}${(iso.missing || []).length ? `, missing: ${esc(iso.missing.join(", "))}` : ""}</td>
      <td>${esc((n.status?.runtimes || []).join(", "))}</td></tr>`;
  });
  $("#view").innerHTML = `<h2>Nodes</h2>${table(["Node", "Status", "Address", "Capacity", "Heartbeat", "Isolation", "Runtimes"], rows)}`;
}

// ------------------------------------------------------------------ routing and sign-in

async function route() {
  stopStreams();
  if (!state.token) { showSignIn(); return; }
  $("#signin").hidden = true;
  $("#nav").hidden = false;
  const hash = location.hash || "#/apps";
  const [, view, arg] = hash.split("/");
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === view));
  try {
    if (view === "apps" && arg) await viewApp(decodeURIComponent(arg));
    else if (view === "events") await viewEvents();
    else if (view === "nodes") await viewNodes();
    else await viewApps();
  } catch (e) {
    if (e.message !== "unauthorized") $("#view").innerHTML = `<p class="error">${esc(e.message)}</p>`;
  }
}

function showSignIn(msg) {
  $("#nav").hidden = true;
  $("#view").innerHTML = "";
  $("#signin").hidden = false;
  $("#signin-error").textContent = msg || "";
}

function signOut(msg) {
  stopStreams();
  state.token = "";
  sessionStorage.removeItem("forgeToken");
  showSignIn(msg);
}

$("#signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  state.token = $("#token").value.trim();
  const resp = await fetch("/api/v1/apps", { headers: { Authorization: `Bearer ${state.token}` } });
  if (!resp.ok) { signOut("The token was not accepted."); return; }
  sessionStorage.setItem("forgeToken", state.token);
  route();
});
$("#signout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);

// A one-time sign-in link from `forge up` (#signin=CODE): trade the code once for the token,
// then drop it from the address bar and the history.
async function signInWithLink() {
  const m = location.hash.match(/^#signin=([A-Za-z0-9_-]+)$/);
  if (!m) return;
  history.replaceState(null, "", location.pathname + "#/apps");
  const resp = await fetch("/api/v1/ui/signin", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ code: m[1] }),
  });
  const data = resp.headers.get("content-type")?.includes("json") ? await resp.json() : null;
  if (!resp.ok) { signOut(data?.message || "The sign-in link was not accepted."); return; }
  state.token = data.token;
  sessionStorage.setItem("forgeToken", state.token);
}
signInWithLink().then(route);
