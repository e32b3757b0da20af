// The live board. Reads /board/stream (server-sent events) with fetch(), not EventSource, so that
// an admin key can go in the Authorization header rather than in the URL; shows each snapshot,
// draws its chart as SVG (no library: the page loads nothing from elsewhere); a click on an order
// fetches /orders/{id}/events and shows its timeline. The dead letters are read from
// /board/dead-letters when their counts change; a replay is a dry run first, whose messages the
// operator confirms, then a replay of exactly those message ids. Every piece of data is written
// with textContent, never parsed as HTML.
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

// The dead-letter counts of the last snapshot, to know when to read the messages again.
let deadLetterCounts = null;
let deadLettersLoading = false;
// The dry run waiting for the operator's confirmation: { queue, ids }.
let pendingReplay = null;

const $ = (id) => document.getElementById(id);
// The SVG namespace, from the page's own <svg> elements (the HTML parser puts them there), so
// that the script names no URL at all.
const SVG_NS = document.querySelector("svg.chart").namespaceURI;

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
  if (snapshot.chart) showChart(snapshot.chart);
  if (snapshot.stuck) showStuck(snapshot.stuck, snapshot.at);
  noteDeadLetterCounts(snapshot.queues || []);
  if (selectedOrder && !timelineSettled && !timelineLoading) refreshTimeline();
}

function svg(tag, attributes) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
  return node;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

// One line chart: the series share the x axis (the chart's buckets) and a y axis from 0.
function drawChart(node, points, series, format) {
  const width = 460;
  const height = 150;
  const left = 46;
  const right = 8;
  const top = 8;
  const bottom = 20;
  const values = series.flatMap((line) => points.map(line.value)).filter((v) => v !== null);
  const top_value = niceMax(Math.max(0, ...values));
  const x = (i) => left + (i * (width - left - right)) / Math.max(1, points.length - 1);
  const y = (v) => top + (height - top - bottom) * (1 - v / top_value);
  const chart = node.querySelector("svg.chart");
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  chart.replaceChildren();
  for (const fraction of [0, 0.5, 1]) {
    const value = top_value * fraction;
    chart.append(
      svg("line", { x1: left, x2: width - right, y1: y(value), y2: y(value), class: "grid" }),
    );
    const label = svg("text", { x: left - 6, y: y(value) + 4, class: "axis", "text-anchor": "end" });
    label.textContent = format(value);
    chart.append(label);
  }
  if (points.length) {
    const span = (new Date(points[points.length - 1].at) - new Date(points[0].at)) / 1000;
    for (const [i, text] of [[0, `-${Math.round(span / 60)} min`], [points.length - 1, "now"]]) {
      const label = svg("text", { x: x(i), y: height - 4, class: "axis", "text-anchor": i ? "end" : "start" });
      label.textContent = text;
      chart.append(label);
    }
  }
  for (const line of series) {
    // A gap where a bucket has no value (no order finished in it: no latency).
    let path = "";
    let drawing = false;
    points.forEach((point, i) => {
      const value = line.value(point);
      if (value === null || value === undefined) {
        drawing = false;
        return;
      }
      path += `${drawing ? "L" : "M"}${x(i).toFixed(1)},${y(value).toFixed(1)}`;
      drawing = true;
    });
    const drawn = svg("path", { d: path || "M0,0", class: `series ${line.className}` });
    drawn.dataset.series = line.className;
    chart.append(drawn);
    if (line.dots) {
      // Latency has a value only where orders finished: a lone bucket would be no line at all.
      points.forEach((point, i) => {
        const value = line.value(point);
        if (value !== null && value !== undefined) {
          chart.append(svg("circle", { cx: x(i), cy: y(value), r: 2.5, class: `dot ${line.className}` }));
        }
      });
    }
  }
  node.dataset.points = String(points.length);
}

function showChart(chart) {
  const points = chart.points;
  drawChart($("throughput-chart"), points, [
    { className: "placed", value: (p) => p.placed_per_second },
    { className: "finished", value: (p) => p.finished_per_second },
  ], (v) => (v >= 10 ? v.toFixed(0) : v.toFixed(1)));
  // How many buckets saw an order finish: what a test (or a curious operator) can wait on.
  $("throughput-chart").dataset.finishedBuckets = String(
    points.filter((p) => p.finished_per_second > 0).length,
  );
  drawChart($("latency-chart"), points, [
    { className: "p50", value: (p) => p.p50_seconds, dots: true },
    { className: "p99", value: (p) => p.p99_seconds, dots: true },
  ], (v) => formatSeconds(v));
  const last = [...points].reverse().find((p) => p.finished_per_second > 0);
  // Over the last minute: one bucket alone jumps with every batch.
  const lastMinute = points.slice(-Math.max(1, Math.round(60 / chart.step_seconds)));
  const finishedRate =
    lastMinute.reduce((sum, p) => sum + p.finished_per_second, 0) / Math.max(1, lastMinute.length);
  $("throughput-now").textContent = points.length
    ? `${finishedRate.toFixed(1)} finished/s over the last minute`
    : "";
  $("latency-now").textContent = last
    ? `p50 ${formatSeconds(last.p50_seconds)} · p99 ${formatSeconds(last.p99_seconds)}`
    : "no order finished";
  $("chart-note").textContent =
    `The last ${Math.round(chart.window_seconds / 60)} minutes in ${chart.step_seconds} s buckets, ` +
    `from the orders' own times (at most the newest ${chart.limit.toLocaleString("en")}` +
    `${chart.capped ? ", reached: older buckets lack some" : ""}).`;
}

function showStuck(stuck, at) {
  const body = document.querySelector("#stuck tbody");
  const now = at ? new Date(at).getTime() : Date.now();
  body.replaceChildren(
    ...stuck.orders.map((order) => {
      const row = element("tr");
      row.dataset.orderId = order.id;
      row.dataset.stage = order.stage;
      const cell = element("td");
      cell.append(element("span", `status ${order.status}`, order.status.replaceAll("_", " ")));
      row.append(
        element("td", "id", order.id.slice(0, 8)),
        cell,
        element("td", "number", formatSeconds(Math.max(0, now - new Date(order.placed_at)) / 1000)),
        element("td", `where stage-${order.stage}`, order.where),
      );
      row.addEventListener("click", () => selectOrder(order.id));
      return row;
    }),
  );
  $("stuck-after").textContent = `not final ${formatSeconds(stuck.after_seconds)} after placement`;
  $("no-stuck").hidden = stuck.orders.length > 0;
  $("stuck-more").hidden = stuck.orders.length < stuck.limit;
  $("stuck-more").textContent = `the oldest ${stuck.limit} shown`;
}

function noteDeadLetterCounts(queues) {
  const counts = JSON.stringify(queues.map((queue) => [queue.queue, queue.dead_letters]));
  if (counts === deadLetterCounts || deadLettersLoading) return;
  deadLetterCounts = counts;
  loadDeadLetters();
}

async function postJson(path, body) {
  // JSON, from this page's own origin: what the API takes for a replay (CSRF: no other site's
  // page can send it without a preflight the API never grants).
  return fetch(path, {
    method: "POST",
    headers: { ...authHeaders(), "Content-Type": "application/json" },
    body: JSON.stringify(body),
    cache: "no-store",
  });
}

async function loadDeadLetters() {
  deadLettersLoading = true;
  try {
    const response = await fetch("/board/dead-letters", { headers: authHeaders(), cache: "no-store" });
    if (!response.ok) {
      $("dead-letters-problem").hidden = false;
      $("dead-letters-problem").textContent = await problemOf(response);
      deadLetterCounts = null; // try again with the next snapshot
      return;
    }
    $("dead-letters-problem").hidden = true;
    showDeadLetters((await response.json()).queues);
  } catch (error) {
    deadLetterCounts = null;
    $("dead-letters-problem").hidden = false;
    $("dead-letters-problem").textContent = `could not read the dead letters: ${error.message}`;
  } finally {
    deadLettersLoading = false;
  }
}

function letterLine(letter) {
  const item = element("li", "letter");
  item.dataset.messageId = letter.message_id ?? "";
  const when = letter.dead_lettered_at ? new Date(letter.dead_lettered_at).toLocaleTimeString() : "?";
  const head = element("div", "letter-head");
  head.append(
    element("span", "type", letter.event_type ?? "(no type)"),
    element("span", "id", `message ${(letter.message_id ?? "(none)").slice(0, 8)}`),
    element("span", "id", `order ${(letter.order_id ?? "(none)").slice(0, 8)}`),
    element("span", "note", when),
  );
  item.append(head, element("div", "reason", letter.reason));
  return item;
}

function showDeadLetters(queues) {
  const panel = $("dead-letters");
  const parked = queues.filter((queue) => queue.messages.length);
  panel.replaceChildren(
    ...parked.map((queue) => {
      const section = element("div", "dlq");
      section.dataset.queue = queue.queue;
      const title = element("div", "dlq-title");
      const all = element("button", "replay-all", `Replay all ${queue.messages.length}…`);
      all.type = "button";
      all.addEventListener("click", () => dryRun(queue.queue, null));
      title.append(element("span", "", queue.dead_letter_queue), element("span", "note", `${queue.messages.length}${queue.messages.length >= queue.limit ? "+" : ""} parked`), all);
      const list = element("ul", "letters");
      for (const letter of queue.messages) {
        const item = letterLine(letter);
        if (letter.message_id) {
          const one = element("button", "replay-one", "Replay…");
          one.type = "button";
          one.addEventListener("click", () => dryRun(queue.queue, [letter.message_id]));
          item.querySelector(".letter-head").append(one);
        }
        list.append(item);
      }
      section.append(title, list);
      return section;
    }),
  );
  $("no-dead-letters").hidden = parked.length > 0;
}

// A dry run: what a replay would move now, shown for the operator to confirm. Nothing changes.
async function dryRun(queue, ids) {
  const box = $("replay-confirm");
  pendingReplay = null;
  box.hidden = false;
  box.dataset.state = "dry-run";
  $("replay-title").textContent = `Dry run: ${queue}`;
  $("replay-result").textContent = "";
  $("replay-list").replaceChildren();
  $("replay-go").hidden = true;
  const body = ids ? { message_ids: ids, dry_run: true } : { dry_run: true };
  const response = await postJson(`/board/dead-letters/${encodeURIComponent(queue)}/replay`, body);
  if (!response.ok) {
    $("replay-result").textContent = await problemOf(response);
    return;
  }
  const answer = await response.json();
  const movable = answer.messages.filter((letter) => letter.message_id);
  $("replay-list").replaceChildren(...answer.messages.map(letterLine));
  if (!movable.length) {
    $("replay-result").textContent = "Nothing to replay: the messages are no longer there.";
    return;
  }
  pendingReplay = { queue, ids: movable.map((letter) => letter.message_id) };
  $("replay-title").textContent =
    `Dry run: ${movable.length === 1 ? "this message" : `these ${movable.length} messages`} ` +
    `would go from ${answer.dead_letter_queue} back to ${answer.queue}; nothing has moved yet.`;
  $("replay-go").textContent = `Replay ${movable.length}`;
  $("replay-go").hidden = false;
  box.dataset.state = "confirm";
}

async function replayConfirmed() {
  const replay = pendingReplay;
  if (!replay) return;
  pendingReplay = null;
  $("replay-go").hidden = true;
  const response = await postJson(`/board/dead-letters/${encodeURIComponent(replay.queue)}/replay`, {
    message_ids: replay.ids,
    dry_run: false,
  });
  const box = $("replay-confirm");
  if (!response.ok) {
    $("replay-result").textContent = await problemOf(response);
    box.dataset.state = "failed";
    return;
  }
  const answer = await response.json();
  const missing = answer.missing.length ? `; ${answer.missing.length} no longer there` : "";
  $("replay-result").textContent =
    `Replayed ${answer.messages.length} to ${answer.queue}${missing}.`;
  box.dataset.state = "done";
  deadLetterCounts = null;
  loadDeadLetters();
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

// A hop's lag; null: not known (recorded before the consumer noted when it took the event).
function lag(seconds) {
  return seconds === null || seconds === undefined ? "unknown" : `${(seconds * 1000).toLocaleString("en", { maximumFractionDigits: 1 })} ms`;
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
        ? `published ${after(event.published_at, start)} (outbox ${lag(event.outbox_seconds)})`
        : "waiting in the outbox";
      const meta = element("div", "event-meta", `by ${event.emitted_by ?? "?"} · ${published}`);
      const handled = element("ul", "handled");
      if (!event.handled_by.length) handled.append(element("li", "", "no consumer"));
      for (const handling of event.handled_by) {
        const text = handling.processed_at
          ? `${handling.service}: handled ${after(handling.processed_at, start)} ` +
            `(broker ${lag(handling.broker_seconds)}, handling ${lag(handling.handling_seconds)})`
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

$("replay-go").addEventListener("click", replayConfirmed);
$("replay-cancel").addEventListener("click", () => {
  pendingReplay = null;
  $("replay-confirm").hidden = true;
});

follow();
