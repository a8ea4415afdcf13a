// Forge dashboard: plain JS against the Forge API, no build step.
// The admin token lives in sessionStorage only and is sent as a Bearer header.
"use strict";

const state = { token: sessionStorage.getItem("forgeToken") || "", streams: [] };
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
  if (!resp.ok) throw new Error(data?.message || `HTTP ${resp.status}`);
  return data;
}

// Read an NDJSON stream (watch or log follow) and call onItem for each line.
async function stream(path, onItem) {
  const ctrl = new AbortController();
  state.streams.push(ctrl);
  try {
    const resp = await fetch(path, { headers: { Authorization: `Bearer ${state.token}` }, signal: ctrl.signal });
    if (!resp.ok || !resp.body) return;
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
}

function stopStreams() {
  state.streams.forEach((c) => c.abort());
  state.streams = [];
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
    <td>${live && d.status?.liveTime && d.metadata.name !== live ? `<button class="rollback" data-to="${esc(d.metadata.name)}">Roll back to this</button>` : ""}</td></tr>`);
}

async function viewApp(name) {
  const q = encodeURIComponent(name);
  const sel = `labelSelector=forge.dev/app=${q}`;
  let app = await api("GET", `/api/v1/apps/${q}`);
  const deps = await api("GET", `/api/v1/deployments?${sel}`);
  const num = (d) => parseInt(d.metadata.name.split("-").pop(), 10);
  const rels = new Map(deps.items.map((d) => [d.metadata.name, d]));
  $("#view").innerHTML = `<h2>${esc(name)}</h2>
    <p>${esc(app.spec.repo)} · live: <strong id="live"></strong> · <span id="url"></span>
    <button id="rollback-prev" type="button">Roll back</button></p>
    <h3>Releases</h3><table><thead><tr>${["Release", "Commit", "Trigger", "Phase", "Reason", "Age", ""].map((h) => `<th>${h}</th>`).join("")}</tr></thead>
    <tbody id="releases"></tbody></table>
    <h3>Processes</h3><table><thead><tr>${["Instance", "Type", "Node", "Phase", "Ready", "Restarts", "Reason"].map((h) => `<th>${h}</th>`).join("")}</tr></thead>
    <tbody id="processes"></tbody></table>
    <h3>Runs</h3><table><thead><tr>${["Run", "Kind", "Scheduled", "Phase", "Exit", "Ended"].map((h) => `<th>${h}</th>`).join("")}</tr></thead>
    <tbody id="runs"></tbody></table>
    <h3>Events</h3><table><tbody id="app-events"></tbody></table>
    <h3>Logs</h3><pre class="logs" id="logs"></pre>`;
  const doRollback = async (to) => {
    $("#confirm-text").textContent = to ? `Roll ${name} back to ${to}?` : `Roll ${name} back to the previous release?`;
    $("#confirm").showModal();
    $("#confirm").onclose = async () => {
      if ($("#confirm").returnValue !== "ok") return;
      try { await api("POST", `/api/v1/apps/${q}/rollback`, to ? { to } : {}); }
      catch (e) { alert(`Rollback failed: ${e.message}`); }
    };
  };
  const render = () => {
    const live = app.status?.liveDeployment;
    $("#live").textContent = live || "none";
    // Only an app with a live release has something to roll back from.
    $("#rollback-prev").hidden = !live;
    $("#url").innerHTML = app.status?.url ? `<a href="${esc(app.status.url)}">${esc(app.status.url)}</a>` : "";
    const sorted = [...rels.values()].sort((a, b) => num(b) - num(a));
    $("#releases").innerHTML = sorted.length ? releaseRows(sorted, live).join("") : `<tr><td colspan="7">no releases yet</td></tr>`;
    document.querySelectorAll("button.rollback").forEach((b) => { b.onclick = () => doRollback(b.dataset.to); });
  };
  render();
  $("#rollback-prev").onclick = () => doRollback(null);
  // Releases and the live pointer update as they change (watch streams, no polling).
  stream(`/api/v1/deployments?watch=true&resourceVersion=${deps.metadata.resourceVersion}&timeoutSeconds=1800&${sel}`, (ev) => {
    if (ev.type === "ADDED" || ev.type === "MODIFIED") rels.set(ev.object.metadata.name, ev.object);
    else if (ev.type === "DELETED") rels.delete(ev.object.metadata.name);
    else return;
    render();
  });
  stream(`/api/v1/apps?watch=true&resourceVersion=${deps.metadata.resourceVersion}&timeoutSeconds=1800`, (ev) => {
    if ((ev.type === "ADDED" || ev.type === "MODIFIED") && ev.object.metadata.name === name) { app = ev.object; render(); }
  });
  watchEvents(sel, $("#app-events"));
  watchInstances(sel);
  const logs = $("#logs");
  stream(`/api/v1/apps/${q}/logs?follow=true&tail=200&timeoutSeconds=1800`, (l) => {
    logs.textContent += `${l.time} ${l.instance} [${l.source}] ${l.line}\n`;
    logs.scrollTop = logs.scrollHeight;
  });
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
  stream(`/api/v1/instances?watch=true&resourceVersion=${list.metadata.resourceVersion}&timeoutSeconds=1800&${sel}`, (ev) => {
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

async function watchEvents(selector, tbody) {
  const list = await api("GET", `/api/v1/events${selector ? `?${selector}` : ""}`);
  const items = list.items.sort((a, b) => (b.spec.lastTime || "").localeCompare(a.spec.lastTime || ""));
  tbody.innerHTML = items.map(eventRow).join("");
  const rv = list.metadata.resourceVersion;
  stream(`/api/v1/events?watch=true&resourceVersion=${rv}&timeoutSeconds=1800${selector ? `&${selector}` : ""}`, (ev) => {
    if (ev.type !== "ADDED" && ev.type !== "MODIFIED") return;
    tbody.querySelector(`tr[data-event="${CSS.escape(ev.object.metadata.name)}"]`)?.remove();
    tbody.insertAdjacentHTML("afterbegin", eventRow(ev.object));
  });
}

async function viewEvents() {
  $("#view").innerHTML = `<h2>Events</h2><table><thead><tr><th>Last</th><th>Type</th><th>Reason</th><th>Object</th><th>Message</th></tr></thead><tbody id="events"></tbody></table>`;
  await watchEvents("", $("#events"));
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
