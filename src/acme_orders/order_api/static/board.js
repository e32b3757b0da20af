// The live board. Reads /board/stream (server-sent events) with fetch(), not EventSource, so that
// an admin key can go in the Authorization header rather than in the URL; shows each snapshot;
// a click on an order fetches /orders/{id}/events and shows its timeline. Every piece of data is
// written with textContent, never parsed as HTML.
"use strict";

const STATUSES = ["pending", "reserved", "paid", "payment_failed", "out_of_stock", "cancelled"];
const FINAL = new Set(["paid", "payment_failed", "out_of_stock", "cancelled"]);
const KEY_STORAGE = "acme-orders-board-key";
const RETRY_MS = 2000;

let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";
let selectedOrder = null;
let lastStatuses = new Map();
// Whether the timeline shown has nothing left to happen; until then it is fetched again with each
// snapshot (one request at a time).
let timelineSettled = true;
let timelineLoading = false;

const $ = (id) => document.getElementById(id);

function authHeaders() {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function setConnection(state, text) {
  const node = $("connection");
  node.dataset.state = state;
  node.textContent = text;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function problemOf(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

function askForKey(problem) {
  $("key-problem").textContent = problem;
  $("key-form").hidden = false;
  $("key").focus();
  setConnection("problem", "needs an admin key");
}

// Split the stream into server-sent events and hand over the data of each `snapshot`.
async function readEvents(body, onSnapshot) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (type === "snapshot" && data.length) onSnapshot(JSON.parse(data.join("\n")));
    }
  }
}

async function follow() {
  for (;;) {
    try {
      const response = await fetch("/board/stream", { headers: authHeaders(), cache: "no-store" });
      if (response.status === 401 || response.status === 403) {
        askForKey(await problemOf(response));
        return; // until a key is entered
      }
      if (!response.ok) throw new Error(await problemOf(response));
      setConnection("live", "live");
      await readEvents(response.body, show);
      setConnection("connecting", "reconnecting…");
    } catch (error) {
      setConnection("problem", `reconnecting: ${error.message}`);
    }
    await sleep(RETRY_MS);
  }
}

function formatSeconds(seconds) {
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  return `${Math.round(seconds / 60)} min`;
}

function show(snapshot) {
  if (snapshot.at) $("updated-at").textContent = new Date(snapshot.at).toLocaleTimeString();
  if (snapshot.database) setConnection("problem", `database ${snapshot.database}`);
  else setConnection("live", "live");
  if (snapshot.counts) showCounts(snapshot.counts);
  if (snapshot.outbox) {
    $("outbox-backlog").textContent = snapshot.outbox.backlog;
    const oldest = snapshot.outbox.oldest_seconds;
    $("outbox-oldest").textContent = oldest === null ? "" : `oldest ${formatSeconds(oldest)}`;
  }
  if (snapshot.orders) showOrders(snapshot.orders, snapshot.at);
  showQueues(snapshot.queues || [], snapshot.broker);
  if (selectedOrder && !timelineSettled && !timelineLoading) refreshTimeline();
}

function showCounts(counts) {
  for (const status of STATUSES) {
    $(`count-${status}`).textContent = counts.by_status[status] ?? 0;
  }
  const hours = counts.window_seconds / 3600;
  const window = hours === 1 ? "the last hour" : `the last ${hours} hours`;
  $("counts-note").textContent =
    `Counts: orders placed in ${window} (at most the newest ${counts.limit.toLocaleString("en")}` +
    `${counts.capped ? ", reached" : ""}), recounted every ${counts.every_seconds} s.`;
}

function showOrders(orders, at) {
  const body = document.querySelector("#orders tbody");
  const now = at ? new Date(at).getTime() : Date.now();
  const statuses = new Map();
  const rows = orders.map((order) => {
    statuses.set(order.id, order.status);
    const row = element("tr");
    row.dataset.orderId = order.id;
    row.dataset.status = order.status;
    const previous = lastStatuses.get(order.id);
    if (previous !== undefined && previous !== order.status) row.classList.add("changed");
    if (order.id === selectedOrder) row.classList.add("selected");
    row.append(
      element("td", "id", order.id.slice(0, 8)),
      element("td", "", order.customer_id),
      element("td", "number", order.total),
      element("td", "number", `${formatSeconds(Math.max(0, now - new Date(order.created_at)) / 1000)} ago`),
    );
    const cell = element("td");
    cell.append(element("span", `status ${order.status}`, order.status.replaceAll("_", " ")));
    row.append(cell);
    row.addEventListener("click", () => selectOrder(order.id));
    return row;
  });
  body.replaceChildren(...rows);
  $("no-orders").hidden = orders.length > 0;
  lastStatuses = statuses;
}

function showQueues(queues, problem) {
  const body = document.querySelector("#queues tbody");
  const unknown = (value) => (value === null || value === undefined ? "?" : value);
  body.replaceChildren(
    ...queues.map((queue) => {
      const row = element("tr");
      row.dataset.queue = queue.queue;
      const dead = element("td", queue.dead_letters ? "number alert" : "number", unknown(queue.dead_letters));
      row.append(
        element("td", "", queue.queue),
        element("td", "", queue.service),
        element("td", "number", unknown(queue.ready)),
        dead,
      );
      return row;
    }),
  );
  $("broker-problem").hidden = !problem;
  $("broker-problem").textContent = problem ? `${problem} (queue figures unknown)` : "";
}

function selectOrder(orderId) {
  selectedOrder = orderId;
  for (const row of document.querySelectorAll("#orders tbody tr")) {
    row.classList.toggle("selected", row.dataset.orderId === orderId);
  }
  refreshTimeline();
}

function after(moment, start) {
  const ms = new Date(moment) - start;
  return `${ms >= 0 ? "+" : ""}${ms.toLocaleString("en")} ms`;
}

async function refreshTimeline() {
  const orderId = selectedOrder;
  if (!orderId) return;
  timelineLoading = true;
  try {
    timelineSettled = await loadTimeline(orderId);
  } finally {
    timelineLoading = false;
  }
}

// Shows the order's timeline; returns whether nothing more will happen to it.
async function loadTimeline(orderId) {
  const panel = $("timeline");
  panel.hidden = false;
  $("timeline-order").textContent = orderId;
  let response;
  try {
    response = await fetch(`/orders/${encodeURIComponent(orderId)}/events`, {
      headers: authHeaders(),
      cache: "no-store",
    });
  } catch (error) {
    $("timeline-status").textContent = `could not load the timeline: ${error.message}`;
    return false;
  }
  if (orderId !== selectedOrder) return false; // another order was clicked meanwhile
  if (!response.ok) {
    $("timeline-status").textContent = await problemOf(response);
    $("timeline-events").replaceChildren();
    return response.status === 404;
  }
  const timeline = await response.json();
  const start = new Date(timeline.placed_at);
  panel.dataset.status = timeline.status;
  $("timeline-status").textContent =
    `${timeline.status.replaceAll("_", " ")}${FINAL.has(timeline.status) ? "" : " (so far)"}, ` +
    `placed ${start.toLocaleTimeString()}; times since placement, by the database's clock`;
  $("timeline-events").replaceChildren(
    ...timeline.events.map((event) => {
      const item = element("li", event.published_at ? "event" : "event unpublished");
      item.dataset.eventType = event.event_type;
      const body = element("div", "event-body");
      const title = element("div", "event-title");
      title.append(element("span", "type", event.event_type), element("span", "key", event.routing_key));
      const published = event.published_at
        ? `published ${after(event.published_at, start)}`
        : "waiting in the outbox";
      const meta = element("div", "event-meta", `by ${event.emitted_by ?? "?"} · ${published}`);
      const handled = element("ul", "handled");
      if (!event.handled_by.length) handled.append(element("li", "", "no consumer"));
      for (const handling of event.handled_by) {
        const text = handling.processed_at
          ? `${handling.service}: handled ${after(handling.processed_at, start)}`
          : `${handling.service}: not handled yet`;
        handled.append(element("li", handling.processed_at ? "done" : "waiting", text));
      }
      body.append(title, meta, handled);
      item.append(element("span", "time", after(event.recorded_at, start)), body);
      return item;
    }),
  );
  if (!timeline.events.length) {
    $("timeline-events").append(element("li", "", "no events left in the outbox"));
  }
  return (
    FINAL.has(timeline.status) &&
    timeline.events.every(
      (event) => event.published_at && event.handled_by.every((handling) => handling.processed_at),
    )
  );
}

$("key-form").addEventListener("submit", (submitted) => {
  submitted.preventDefault();
  apiKey = $("key").value.trim();
  sessionStorage.setItem(KEY_STORAGE, apiKey);
  $("key-form").hidden = true;
  follow();
});

follow();
