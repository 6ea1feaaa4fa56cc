namespace ShardPipe.Host.Serving;

/// <summary>
/// The cluster dashboard served at <c>/</c>: one self-contained page (no build step, no external files) that polls
/// <c>GET /status</c> every second and renders the nodes and their state, the device map as one strip of modules
/// coloured by node/device (each cell names its module and device), planned, loaded and budget bytes per device (the
/// load's progress) with each node's recent step time and hop latency, tokens/s and the queues. It needs no long-lived connection: every render is from one poll.
/// </summary>
public static class Dashboard
{
    public const string Html = """
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ShardPipe</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; }
  .muted { color: #777; }
  .cards { display: flex; gap: 1em; flex-wrap: wrap; margin: 1em 0; }
  .card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6em 1em; min-width: 9em; }
  .card b { display: block; font-size: 1.4em; }
  .strip { display: flex; flex-wrap: wrap; gap: 2px; margin: .5em 0 1em; }
  .cell { padding: .3em .4em; border-radius: 3px; font-size: 11px; color: #fff; white-space: nowrap; }
  .cell span { display: block; opacity: .85; font-size: 10px; }
  table { border-collapse: collapse; background: #fff; }
  td, th { border: 1px solid #ddd; padding: .3em .7em; text-align: left; }
  .bar { width: 12em; height: .8em; background: #eee; border-radius: 3px; overflow: hidden; }
  .bar div { height: 100%; background: #3b82f6; }
  .state-ready { color: #15803d; } .state-loading, .state-planning, .state-replanning { color: #b45309; } .state-degraded, .state-idle, .state-empty { color: #b91c1c; }
</style>
</head>
<body>
<h1>ShardPipe <span id="model" class="muted"></span></h1>
<div>state <b id="state">…</b> · epoch <span id="epoch">–</span> · recoveries <span id="recoveries">–</span> · <span id="updated" class="muted">waiting for /status</span></div>
<div class="cards">
  <div class="card">tokens/s<b id="tps">–</b></div>
  <div class="card">running / waiting<b id="queue">–</b></div>
  <div class="card">cluster in flight / queued<b id="cluster-queue">–</b></div>
</div>
<h2>Nodes</h2>
<div id="nodes" class="cards"></div>
<h2>Device map</h2>
<div id="map" class="strip"></div>
<h2>Devices</h2>
<table><thead><tr><th>device</th><th>loaded / planned</th><th>budget</th><th></th><th>step p50</th><th>hop p50</th><th>rows / step</th></tr></thead><tbody id="devices"></tbody></table>
<script>
const palette = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
const colours = {};
function colour(device) { if (!(device in colours)) colours[device] = palette[Object.keys(colours).length % palette.length]; return colours[device]; }
function bytes(n) { const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0; while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; } return n.toFixed(i ? 2 : 0) + " " + u[i]; }
function el(tag, attrs, text) { const e = document.createElement(tag); for (const k in attrs || {}) e.setAttribute(k, attrs[k]); if (text !== undefined) e.textContent = text; return e; }
function render(s) {
  document.getElementById("model").textContent = s.model;
  const state = document.getElementById("state"); state.textContent = s.state; state.className = "state-" + s.state;
  document.getElementById("epoch").textContent = s.epoch;
  document.getElementById("recoveries").textContent = s.recoveries;
  document.getElementById("tps").textContent = s.tokens_per_s.toFixed(1);
  document.getElementById("queue").textContent = s.active + " / " + s.queued;
  document.getElementById("cluster-queue").textContent = s.cluster_in_flight + " / " + s.cluster_queued;
  const nodes = document.getElementById("nodes"); nodes.replaceChildren();
  for (const n of s.nodes) {
    const devices = s.devices.filter(d => d.device.split("/")[0] === n);
    const card = el("div", { class: "card", "data-node": n });
    card.append(el("b", {}, n), el("div", { class: "muted" }, devices.map(d => d.device.split("/")[1]).join(", ") || "no devices"), el("div", {}, "up"));
    nodes.append(card);
  }
  const map = document.getElementById("map"); map.replaceChildren();
  for (const [module, device] of Object.entries(s.device_map)) {
    const cell = el("div", { class: "cell", "data-module": module, "data-device": device, title: module + " → " + device });
    cell.style.background = colour(device);
    cell.append(document.createTextNode(module), el("span", {}, device));
    map.append(cell);
  }
  const rows = document.getElementById("devices"); rows.replaceChildren();
  for (const d of s.devices) {
    const tr = el("tr", { "data-device": d.device });
    const bar = el("div", { class: "bar" }); const fill = el("div"); fill.style.width = (d.planned_bytes ? 100 * d.loaded_bytes / d.planned_bytes : 0) + "%"; fill.style.background = colour(d.device); bar.append(fill);
    const progress = el("td"); progress.append(bar);
    const ms = v => v === null || v === undefined ? "–" : v.toFixed(2) + " ms";
    tr.append(el("td", {}, d.device + (d.streamed ? " (streamed)" : "")), el("td", {}, bytes(d.loaded_bytes) + " / " + bytes(d.planned_bytes)), el("td", {}, bytes(d.budget_bytes)), progress,
      el("td", {}, ms(d.step_ms_p50)), el("td", {}, ms(d.hop_ms_p50)), el("td", {}, d.rows_per_step === null || d.rows_per_step === undefined ? "–" : d.rows_per_step.toFixed(1)));
    rows.append(tr);
  }
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}
async function poll() {
  try { const r = await fetch("/status", { cache: "no-store" }); if (r.ok) render(await r.json()); else document.getElementById("updated").textContent = "status " + r.status; }
  catch (e) { document.getElementById("updated").textContent = "unreachable: " + e; }
  setTimeout(poll, 1000);
}
poll();
</script>
</body>
</html>
""";
}
