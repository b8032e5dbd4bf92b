// The page of `happen view`: a feed of transactions and, for the selected
// one, its causal graph as a sequence of events between nodes, in causal
// (time) order. Failed flows are red, the slowest flow's time is marked.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
let selected = new URLSearchParams(location.search).get("tx");
let refreshTimer = null;

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function duration(flow) {
  const d = flow.elapsed; // {secs, nanos}
  const us = d.secs * 1e6 + d.nanos / 1e3;
  return us >= 1000 ? (us / 1000).toFixed(1) + " ms" : Math.round(us) + " µs";
}

async function loadFeed() {
  const list = await (await fetch("/api/transactions")).json();
  const feed = document.getElementById("feed");
  feed.replaceChildren();
  for (const tx of list) {
    const li = document.createElement("li");
    li.dataset.tx = tx.correlationId;
    if (tx.failed) li.classList.add("failed");
    if (tx.correlationId === selected) li.classList.add("selected");
    li.innerHTML = `<div class="root"></div><div class="meta"></div>`;
    li.querySelector(".root").textContent = tx.root || "(no root recorded)";
    li.querySelector(".meta").textContent = `${tx.events} events · ${tx.correlationId.slice(-12)}`;
    li.onclick = () => select(tx.correlationId);
    feed.appendChild(li);
  }
  if (!selected && list.length > 0) select(list[0].correlationId);
}

function select(id) {
  selected = id;
  history.replaceState(null, "", "?tx=" + encodeURIComponent(id));
  for (const li of document.querySelectorAll("#feed li")) {
    li.classList.toggle("selected", li.dataset.tx === id);
  }
  loadTransaction();
}

async function loadTransaction() {
  if (!selected) return;
  const response = await fetch("/api/transactions/" + encodeURIComponent(selected));
  if (!response.ok) return;
  draw(await response.json());
}

function draw(tx) {
  const events = tx.events;
  document.getElementById("empty").style.display = events.length ? "none" : "";
  document.getElementById("title").textContent =
    events.length ? `${events[0].event_type}: ${events.length} events` : "Nothing recorded";
  document.getElementById("subtitle").textContent = "transaction " + tx.correlation_id +
    (tx.dropped ? ` (incomplete: the recorder dropped ${tx.dropped} records)` : "");

  // The nodes, in order of first appearance.
  const nodes = [];
  const see = (n) => { if (!nodes.includes(n)) nodes.push(n); };
  const byId = new Map(events.map((e) => [e.causal.id, e]));
  for (const e of events) { see(e.causal.sender); e.delivered_to.forEach(see); }

  // One row per (event, receiver); a response goes back to its requester.
  const rows = [];
  for (const e of events) {
    const cause = e.causal.causationId && byId.get(e.causal.causationId);
    if (e.delivered_to.length === 0 && e.event_type === "happen.response" && cause) {
      rows.push({ e, to: cause.causal.sender, response: true });
    }
    for (const to of e.delivered_to) {
      // Several handlers of one node may run for one event: a failed one
      // is the one to show.
      const flows = e.flows.filter((f) => f.node === to);
      rows.push({ e, to, flow: flows.find((f) => f.error) || flows[0] });
    }
    if (e.delivered_to.length === 0 && !(e.event_type === "happen.response" && cause)) {
      rows.push({ e, to: null });
    }
  }
  let slowest = null;
  for (const r of rows) {
    if (r.flow && (!slowest || micros(r.flow) > micros(slowest.flow))) slowest = r;
  }

  const colWidth = 190, top = 50, rowHeight = 46, left = 20;
  const x = (n) => left + nodes.indexOf(n) * colWidth + colWidth / 2;
  const width = left * 2 + nodes.length * colWidth;
  const height = top + rows.length * rowHeight + 40;
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  const defs = el("defs");
  for (const [id, color] of [["arrow", "#2f6fbf"], ["arrow-failed", "#c62828"], ["arrow-response", "#8a96a8"]]) {
    const marker = el("marker", { id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
    marker.appendChild(el("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: color }));
    defs.appendChild(marker);
  }
  svg.appendChild(defs);
  for (const n of nodes) {
    svg.appendChild(el("line", { class: "lifeline", x1: x(n), x2: x(n), y1: top, y2: height - 10 }));
    const g = el("g", { class: "node", "data-node": n });
    g.appendChild(el("rect", { x: x(n) - colWidth / 2 + 8, y: 8, width: colWidth - 16, height: 30, rx: 6 }));
    g.appendChild(el("text", { x: x(n), y: 28, "text-anchor": "middle" }, n));
    svg.appendChild(g);
  }
  rows.forEach((r, i) => {
    const y = top + 24 + i * rowHeight;
    const from = x(r.e.causal.sender);
    const to = r.to === null ? from + 60 : x(r.to);
    const failed = r.flow && r.flow.error;
    const classes = ["edge"];
    if (r.response) classes.push("response");
    if (failed) classes.push("failed");
    if (r === slowest) classes.push("slowest");
    const g = el("g", {
      class: classes.join(" "),
      "data-edge": `${r.e.causal.sender}→${r.to ?? ""} ${r.e.event_type}`,
      "data-event": r.e.causal.id,
    });
    const marker = failed ? "arrow-failed" : r.response ? "arrow-response" : "arrow";
    const self = r.to === r.e.causal.sender;
    if (self) {
      g.appendChild(el("path", { d: `M ${from} ${y} h 40 v 16 h -38`, fill: "none", stroke: "#2f6fbf", "marker-end": `url(#${marker})` }));
    } else {
      g.appendChild(el("line", { x1: from, x2: to, y1: y, y2: y, "marker-end": `url(#${marker})` }));
    }
    const mid = self ? from + 46 : (from + to) / 2;
    const label = `${i + 1}. ${r.e.event_type}` + (r.to === null ? " (no receiver recorded)" : "");
    g.appendChild(el("text", { x: mid, y: y - 6, "text-anchor": self ? "start" : "middle" }, label));
    if (r.flow) {
      const text = failed ? `FAILED: ${r.flow.error}` : duration(r.flow);
      g.appendChild(el("text", { class: "time", x: mid, y: y + 14, "text-anchor": self ? "start" : "middle" }, text));
    }
    g.appendChild(el("title", {}, `${r.e.event_type}\nid ${r.e.causal.id}\ncause ${r.e.causal.causationId || "none (root)"}\npath ${r.e.causal.path.join(" > ")}`));
    svg.appendChild(g);
  });
}

function micros(flow) { return flow.elapsed.secs * 1e6 + flow.elapsed.nanos / 1e3; }

function soon(fn) {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(fn, 150);
}

// Live updates through server-sent events, connected a moment after the
// first drawing (so that a headless browser taking a snapshot sees a page
// that has finished loading); on connecting, everything is read again, so
// nothing made in between is missed.
function connectLive() {
  const live = new EventSource("/api/live");
  live.onopen = () => soon(refresh);
  live.onmessage = (message) => {
    const record = JSON.parse(message.data);
    soon(() => refresh(record.causal.correlationId));
  };
}

async function refresh(correlationId) {
  await loadFeed();
  if (correlationId === undefined || correlationId === selected) await loadTransaction();
}

setTimeout(connectLive, 1000);
loadFeed().then(loadTransaction);
