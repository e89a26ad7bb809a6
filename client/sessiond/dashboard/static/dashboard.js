// sessiond dashboard: plain DOM code, no framework, no build step.
//
// Safety rule of this file: every value that comes from sessiond (ids, names,
// message text, labels, errors) reaches the page through textContent or an
// attribute that is not markup; innerHTML is never used.
//
// Liveness: the page lists what it shows through /api/, then opens one
// EventSource on /api/events?since=R with the lowest revision it listed.
// Each event refreshes what it touches (rows in place, then the page of the
// table, counters and charts, throttled). The SSE id is the revision, so a
// browser reconnecting on its own sends Last-Event-ID and misses nothing; a
// stream the browser gave up on is reopened with ?since=<last revision>.
//
// The URL is the view: "#/?status=failed&order=cost&window=3600&page=..." for
// the overview (filters, sort, page and time window), "#/sessions/<id>" for a
// session. Changing a filter rewrites the URL (replaceState), so a view can be
// shared and survives a reload.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const FILTER_FIELDS = ["status", "agent", "channel", "model", "owner", "label", "q", "order", "asc", "stuck"];
  const SUGGESTED = ["agent", "channel", "model", "owner"];
  const LIVE_MINUTES = 30;
  const TIMELINE_ROWS = 200;
  const state = {
    config: { stuck_after_seconds: 300 },
    lastRevision: 0,
    serverOffsetMs: 0, // sessiond's clock minus the browser's
    serverTimeKnown: false,
    source: null,
    view: "overview",
    sessionId: "",
    pageTokens: [""], // tokens of the pages seen, for "previous"; also in the URL
    nextPageToken: "",
    rows: new Map(), // session id -> {row, revision}
    messageSeqs: new Map(), // seq -> element, in the session view
    messagesNextToken: "",
    known: { agent: [], channel: [], model: [], owner: [] },
    live: new Map(), // minute (epoch ms / 60000) -> {started, messages, errors}
    errorCounts: new Map(), // session id -> usage.error_count last seen, for live error rates
    signedOut: false,
  };

  // Small DOM helpers

  const $ = (id) => document.getElementById(id);

  function el(tag, options = {}, children = []) {
    const node = document.createElement(tag);
    if (options.className) node.className = options.className;
    if (options.text !== undefined && options.text !== null) node.textContent = String(options.text);
    if (options.title) node.title = String(options.title);
    if (options.href) node.setAttribute("href", options.href);
    if (options.data) for (const [key, value] of Object.entries(options.data)) node.dataset[key] = String(value);
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function svg(tag, attributes = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  // Formatting: one way to write each kind of number, everywhere on the page.

  const word = (enumName) => {
    if (!enumName) return "-";
    const parts = String(enumName).split("_");
    // SESSION_STATUS_ACTIVE -> active, RUNTIME_STATE_RUNNING -> running, ROLE_USER -> user
    const prefixes = { SESSION: 2, RUNTIME: 2, ROLE: 1, MESSAGE: 2, EVENT: 2 };
    const skip = prefixes[parts[0]] || 0;
    const rest = parts.slice(skip).join("_").toLowerCase();
    return rest === "unspecified" ? "-" : rest;
  };
  const num = (value) => Number(value || 0);

  // Counts: every digit, with thousands separators ("6,065", "23,460").
  const count = (value) => Math.round(num(value)).toLocaleString("en-US");

  // Money from integer micro-dollars: cents, or four decimals below a cent.
  function money(micros) {
    const dollars = num(micros) / 1e6;
    if (dollars !== 0 && Math.abs(dollars) < 0.01) return "$" + dollars.toFixed(4);
    return "$" + dollars.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }

  const percent = (fraction) => (num(fraction) * 100).toFixed(1) + "%";

  function duration(ms) {
    let seconds = Math.max(0, Math.floor(ms / 1000));
    const days = Math.floor(seconds / 86400); seconds -= days * 86400;
    const hours = Math.floor(seconds / 3600); seconds -= hours * 3600;
    const minutes = Math.floor(seconds / 60); seconds -= minutes * 60;
    if (days) return `${days}d ${hours}h`;
    if (hours) return `${hours}h ${minutes}m`;
    if (minutes) return `${minutes}m ${seconds}s`;
    return `${seconds}s`;
  }

  const serverNow = () => Date.now() + state.serverOffsetMs;
  const timeMs = (text) => (text ? Date.parse(text) : NaN);

  function ago(text) {
    const at = timeMs(text);
    if (Number.isNaN(at)) return "-";
    return duration(serverNow() - at) + " ago";
  }

  function fullTime(text) {
    const at = timeMs(text);
    return Number.isNaN(at) ? "-" : new Date(at).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function noteServerTime(text) {
    const at = timeMs(text);
    if (Number.isNaN(at)) return;
    const first = !state.serverTimeKnown;
    state.serverOffsetMs = at - Date.now();
    state.serverTimeKnown = true;
    if (first) {
      tick();
      if (state.view === "overview") drawLive(); // its minutes are sessiond's, now known
    }
  }

  // Talking to the dashboard

  async function api(path, params = {}) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      for (const item of Array.isArray(value) ? value : [value]) {
        if (item === undefined || item === null || item === "" || item === false) continue;
        query.append(key, String(item));
      }
    }
    const url = "/api/" + path + (query.toString() ? "?" + query : "");
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error((body.error && body.error.message) || response.statusText);
      error.code = (body.error && body.error.code) || String(response.status);
      throw error;
    }
    return body;
  }

  function showAlert(error) {
    const alert = $("alert");
    if (!error) { alert.hidden = true; alert.textContent = ""; return; }
    if (error.code === "UNAUTHENTICATED") { showSignIn(error); return; }
    alert.textContent = (error.code ? error.code + ": " : "") + error.message;
    alert.hidden = false;
  }

  // A refresher runs fn at most once per interval; a call while it runs
  // schedules one more run, so the last event is never left unrendered.
  function refresher(fn, intervalMs) {
    let running = false, pending = false, timer = null, last = 0;
    const run = async () => {
      timer = null;
      if (running) { pending = true; return; }
      if (state.signedOut) return;
      running = true; pending = false; last = Date.now();
      try { await fn(); showAlert(null); } catch (error) { showAlert(error); }
      finally {
        running = false;
        if (pending) schedule();
      }
    };
    const schedule = () => {
      if (running) { pending = true; return; }
      if (timer) return;
      timer = setTimeout(run, Math.max(0, last + intervalMs - Date.now()));
    };
    schedule.now = run;
    return schedule;
  }

  // The URL: the overview's filters, sort, page and window live in the hash.

  function hashParams() {
    const query = location.hash.replace(/^#\/?/, "");
    return new URLSearchParams(query.startsWith("?") ? query.slice(1) : "");
  }

  function formFromUrl(params) {
    const form = $("filters");
    for (const name of FILTER_FIELDS) {
      const input = form.elements[name];
      const value = params.get(name) || "";
      if (input.type === "checkbox") input.checked = value === "1";
      else if (input.tagName === "SELECT") input.value = value || input.options[0].value;
      else input.value = value;
    }
    const windowValue = params.get("window") || "all";
    $("window").value = [...$("window").options].some((o) => o.value === windowValue) ? windowValue : "all";
    $("range-from").value = params.get("from") || "";
    $("range-to").value = params.get("to") || "";
    $("custom-range").hidden = $("window").value !== "custom";
    state.pageTokens = ["", ...params.getAll("page")];
  }

  function urlFromForm() {
    const params = new URLSearchParams();
    const data = new FormData($("filters"));
    for (const name of FILTER_FIELDS) {
      const value = String(data.get(name) || "").trim();
      if (!value || (name === "order" && value === "last-activity")) continue;
      params.set(name, name === "asc" || name === "stuck" ? "1" : value);
    }
    const windowValue = $("window").value;
    if (windowValue !== "all") params.set("window", windowValue);
    if (windowValue === "custom") {
      if ($("range-from").value) params.set("from", $("range-from").value);
      if ($("range-to").value) params.set("to", $("range-to").value);
    }
    for (const token of state.pageTokens.slice(1)) params.append("page", token);
    const hash = "#/" + (params.toString() ? "?" + params : "");
    if (location.hash !== hash && !(hash === "#/" && !location.hash)) history.replaceState(null, "", hash);
  }

  // Window and filters

  // A datetime-local value read as UTC, in epoch microseconds.
  const utcMicros = (text) => (text ? Date.parse(text + "Z") * 1000 : NaN);

  function windowParams() {
    const choice = $("window").value;
    if (choice === "all") return {};
    if (choice === "custom") {
      const params = {};
      const from = utcMicros($("range-from").value);
      const to = utcMicros($("range-to").value);
      if (!Number.isNaN(from)) params.started_after = Math.floor(from);
      if (!Number.isNaN(to)) params.started_before = Math.floor(to);
      return params;
    }
    return { started_after: Math.floor((serverNow() - Number(choice) * 1000) * 1000) };
  }

  // Filters match exactly on the server; the page matches without regard to
  // case by sending every known value that equals what was typed, ignoring case.
  function resolveCase(name, typed) {
    if (!typed) return [];
    const lower = typed.toLowerCase();
    const matches = (state.known[name] || []).filter((value) => value.toLowerCase() === lower);
    return matches.length ? matches : [typed];
  }

  function filterParams() {
    const data = new FormData($("filters"));
    const text = (name) => String(data.get(name) || "").trim();
    return {
      status: text("status"),
      agent: resolveCase("agent", text("agent")),
      channel: resolveCase("channel", text("channel")),
      model: resolveCase("model", text("model")),
      owner: resolveCase("owner", text("owner")),
      label: text("label").split(",").map((pair) => pair.trim()).filter(Boolean),
      q: text("q"),
      order: text("order"), asc: data.get("asc") ? "1" : "", stuck: data.get("stuck") ? "1" : "",
    };
  }

  async function loadKnownValues() {
    const answer = await api("values");
    for (const name of SUGGESTED) {
      state.known[name] = answer[name] || [];
      $("known-" + name).replaceChildren(...state.known[name].map((value) => el("option", { text: value })));
    }
  }

  // Counters

  async function loadStats() {
    const answer = await api("stats", windowParams());
    const stats = answer.stats || {};
    const usage = stats.usage || {};
    const set = (id, text) => { $(id).textContent = text; };
    set("counter-active", count(stats.active_count));
    set("counter-running", count(stats.running_count));
    set("counter-completed", count(stats.completed_count));
    set("counter-failed", count(stats.failed_count));
    set("counter-cancelled", count(stats.cancelled_count));
    set("counter-abandoned", count(stats.abandoned_count));
    set("counter-unknown", count(stats.unknown_count));
    const decided = num(stats.completed_count) + num(stats.failed_count);
    set("counter-success", decided ? percent(stats.success_rate) : "-");
    set("counter-spend", money(usage.cost_micros));
    set("counter-tokens", count(usage.total_tokens));
    set("counter-sessions", count(stats.session_count));
    set("counter-messages", count(stats.message_count));
    return num(answer.revision);
  }

  // Charts (SVG drawn through the DOM)

  const CHART = { width: 480, height: 220, left: 62, right: 10, top: 22, bottom: 186 };

  function emptyChart(target, text) {
    target.setAttribute("viewBox", `0 0 ${CHART.width} ${CHART.height}`);
    target.replaceChildren(svg("text", { x: CHART.width / 2, y: 110, "text-anchor": "middle", class: "empty" }, text));
  }

  // 0 and 3-5 round steps (1, 2 or 5 times a power of ten) covering max;
  // whole steps for counts.
  function valueTicks(max, whole) {
    if (max <= 0) return [0, 1];
    const rough = max / 4;
    const power = 10 ** Math.floor(Math.log10(rough));
    let step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough);
    if (whole) step = Math.max(1, Math.round(step));
    const ticks = [];
    for (let value = 0; value < max + step; value += step) ticks.push(value);
    return ticks;
  }

  const MINUTE = 60e3, HOUR = 60 * MINUTE, DAY = 24 * HOUR;
  const TIME_STEPS = [MINUTE, 5 * MINUTE, 15 * MINUTE, 30 * MINUTE, HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 30 * DAY];
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  // Round UTC times between startMs and endMs, at most about six of them.
  function timeTicks(startMs, endMs) {
    const step = TIME_STEPS.find((s) => (endMs - startMs) / s <= 6) || 30 * DAY;
    const ticks = [];
    for (let at = Math.ceil(startMs / step) * step; at <= endMs; at += step) ticks.push(at);
    return { ticks, step };
  }

  function timeLabel(ms, step, first) {
    const date = new Date(ms);
    const day = `${MONTHS[date.getUTCMonth()]} ${date.getUTCDate()}`;
    const clock = date.toISOString().slice(11, 16);
    if (step >= DAY) return day;
    return first || clock === "00:00" ? `${day} ${clock}` : clock;
  }

  // Axes with ticks; returns {x(ms), y(value), nodes}.
  function axes(startMs, endMs, maxValue, formatValue, whole = false) {
    const { left, right, top, bottom, width } = CHART;
    const plotWidth = width - left - right;
    const span = Math.max(1, endMs - startMs);
    const yTicks = valueTicks(maxValue, whole);
    const yMax = yTicks[yTicks.length - 1] || 1;
    const x = (ms) => left + ((ms - startMs) / span) * plotWidth;
    const y = (value) => bottom - (value / yMax) * (bottom - top);
    const nodes = [svg("line", { x1: left, y1: bottom, x2: width - right, y2: bottom, class: "axis" })];
    for (const value of yTicks) {
      nodes.push(svg("line", { x1: left, y1: y(value), x2: width - right, y2: y(value), class: value ? "grid" : "axis" }));
      nodes.push(svg("text", { x: left - 6, y: y(value) + 4, "text-anchor": "end" }, formatValue(value)));
    }
    const { ticks, step } = timeTicks(startMs, endMs);
    ticks.forEach((at, index) => {
      nodes.push(svg("line", { x1: x(at), y1: bottom, x2: x(at), y2: bottom + 4, class: "axis" }));
      nodes.push(svg("text", { x: x(at), y: bottom + 16, "text-anchor": "middle" }, timeLabel(at, step, index === 0)));
    });
    return { x, y, nodes };
  }

  function drawCostByModel(models) {
    const target = $("chart-cost-by-model");
    const rows = models.filter((m) => num(m.usage && m.usage.cost_micros) > 0 || num(m.usage && m.usage.total_tokens) > 0).slice(0, 7);
    if (!rows.length) { emptyChart(target, "No usage recorded yet"); return; }
    target.setAttribute("viewBox", `0 0 ${CHART.width} ${CHART.height}`);
    const max = Math.max(...rows.map((m) => num(m.usage.cost_micros)), 1);
    const nodes = [];
    const rowHeight = Math.min(30, 210 / rows.length);
    rows.forEach((model, index) => {
      const y = 6 + index * rowHeight;
      const width = Math.max(2, (num(model.usage.cost_micros) / max) * 250);
      const label = model.model.length > 22 ? model.model.slice(0, 21) + "…" : model.model;
      nodes.push(svg("text", { x: 140, y: y + rowHeight / 2 + 4, "text-anchor": "end" }, label));
      const bar = svg("rect", { x: 148, y: y + 3, width, height: rowHeight - 8, rx: 3, class: "bar" });
      bar.append(svg("title", {}, `${model.model}: ${money(model.usage.cost_micros)}, ${count(model.usage.total_tokens)} tokens, ${count(model.session_count)} sessions`));
      nodes.push(bar);
      nodes.push(svg("text", { x: 154 + width, y: y + rowHeight / 2 + 4, class: "value" }, money(model.usage.cost_micros)));
    });
    target.replaceChildren(...nodes);
  }

  function bucketTitle(bucket) {
    return `${fullTime(new Date(num(bucket.start_micros) / 1000).toISOString())} – ${fullTime(new Date(num(bucket.end_micros) / 1000).toISOString())}`;
  }

  function drawSpend(buckets) {
    const target = $("chart-spend");
    if (!buckets.length) { emptyChart(target, "No sessions yet"); return; }
    target.setAttribute("viewBox", `0 0 ${CHART.width} ${CHART.height}`);
    const start = num(buckets[0].start_micros) / 1000;
    const end = num(buckets[buckets.length - 1].end_micros) / 1000;
    const max = Math.max(...buckets.map((b) => num(b.cost_micros)));
    const { x, y, nodes } = axes(start, end, max, (micros) => (micros ? money(micros) : "$0"));
    for (const bucket of buckets) {
      const left = x(num(bucket.start_micros) / 1000), right = x(num(bucket.end_micros) / 1000);
      const top = y(num(bucket.cost_micros));
      const bar = svg("rect", { x: left + 1, y: top, width: Math.max(1, right - left - 2), height: Math.max(0, CHART.bottom - top), class: "bar" });
      bar.append(svg("title", {}, `${bucketTitle(bucket)}: ${money(bucket.cost_micros)}, ${count(bucket.total_tokens)} tokens, ${count(bucket.session_count)} sessions started`));
      nodes.push(bar);
    }
    target.replaceChildren(...nodes);
  }

  // Series over time ({name, className, points: [[ms, value], ...]}) with a legend:
  // lines, or with slotMs, bars side by side in slots of that width centred on each point.
  function drawLines(target, startMs, endMs, series, emptyText, slotMs = 0) {
    const max = Math.max(0, ...series.flatMap((s) => s.points.map((p) => p[1])));
    if (!series.some((s) => s.points.length)) { emptyChart(target, emptyText); return; }
    target.setAttribute("viewBox", `0 0 ${CHART.width} ${CHART.height}`);
    const { x, y, nodes } = axes(startMs, endMs, Math.max(max, 1), (value) => count(value), true);
    let legendX = CHART.left + 6;
    series.forEach((line, index) => {
      if (slotMs) {
        const barWidth = Math.max(1, (x(startMs + slotMs) - x(startMs) - 2) / series.length);
        for (const [at, value] of line.points) {
          const left = x(at - slotMs / 2) + 1 + index * barWidth;
          const bar = svg("rect", { x: left, y: y(value), width: barWidth, height: Math.max(0, CHART.bottom - y(value)), class: `bar ${line.className}` });
          bar.append(svg("title", {}, `${line.name}: ${count(value)} (from ${fullTime(new Date(at - slotMs / 2).toISOString())})`));
          nodes.push(bar);
        }
      } else {
        const path = line.points.map(([at, value], i) => `${i ? "L" : "M"}${x(at).toFixed(1)},${y(value).toFixed(1)}`).join(" ");
        nodes.push(svg("path", { d: path, class: `line ${line.className}` }));
        for (const [at, value] of line.points) {
          const dot = svg("circle", { cx: x(at), cy: y(value), r: 2.5, class: `dot ${line.className}` });
          dot.append(svg("title", {}, `${line.name}: ${count(value)} (${fullTime(new Date(at).toISOString())})`));
          nodes.push(dot);
        }
      }
      nodes.push(svg("rect", { x: legendX, y: 3, width: 10, height: 3, class: `swatch ${line.className}` }));
      nodes.push(svg("text", { x: legendX + 14, y: 8, class: "legend" }, line.name));
      legendX += 14 + line.name.length * 6 + 18; // about 6 units a character at 11px
    });
    target.replaceChildren(...nodes);
  }

  function drawActivity(buckets) {
    const target = $("chart-activity");
    if (!buckets.length) { emptyChart(target, "No sessions yet"); return; }
    const mid = (b) => (num(b.start_micros) + num(b.end_micros)) / 2000;
    drawLines(target, num(buckets[0].start_micros) / 1000, num(buckets[buckets.length - 1].end_micros) / 1000, [
      { name: "sessions started", className: "series-a", points: buckets.map((b) => [mid(b), num(b.session_count)]) },
      { name: "sessions failed", className: "series-b", points: buckets.map((b) => [mid(b), num(b.failed_count)]) },
      { name: "errored calls", className: "series-c", points: buckets.map((b) => [mid(b), num(b.error_count)]) },
    ], "No sessions yet", (num(buckets[0].end_micros) - num(buckets[0].start_micros)) / 1000);
  }

  // Live rates: what the event stream delivered, counted per minute of sessiond's clock.

  function noteLive(event) {
    const at = timeMs(event.time);
    if (Number.isNaN(at)) return;
    const minute = Math.floor(at / MINUTE);
    const bucket = state.live.get(minute) || { started: 0, messages: 0, errors: 0 };
    const session = event.session || {};
    switch (event.type) {
      case "EVENT_TYPE_SESSION_CREATED": bucket.started += 1; break;
      case "EVENT_TYPE_MESSAGES_APPENDED": {
        const first = event.messages.length ? num(event.messages[0].seq) : num(session.last_seq) + 1;
        bucket.messages += Math.max(0, num(session.last_seq) - first + 1);
        break;
      }
      case "EVENT_TYPE_SESSION_ENDED": if (session.status === "SESSION_STATUS_FAILED") bucket.errors += 1; break;
      case "EVENT_TYPE_RUNTIME_STATE_CHANGED": if (session.runtime_state === "RUNTIME_STATE_ERROR") bucket.errors += 1; break;
      case "EVENT_TYPE_USAGE_RECORDED": {
        const errors = num(session.usage && session.usage.error_count);
        const before = state.errorCounts.get(event.session_id);
        if (before !== undefined && errors > before) bucket.errors += errors - before;
        break;
      }
      default: break;
    }
    if (event.session) state.errorCounts.set(event.session_id, num(session.usage && session.usage.error_count));
    state.live.set(minute, bucket);
    const oldest = Math.floor(serverNow() / MINUTE) - LIVE_MINUTES;
    for (const key of state.live.keys()) if (key < oldest) state.live.delete(key);
  }

  function drawLive() {
    const now = Math.floor(serverNow() / MINUTE);
    const minutes = [];
    for (let minute = now - LIVE_MINUTES + 1; minute <= now; minute += 1) minutes.push(minute);
    const point = (field) => minutes.map((m) => [m * MINUTE + MINUTE / 2, (state.live.get(m) || {})[field] || 0]);
    drawLines($("chart-live"), (now - LIVE_MINUTES + 1) * MINUTE, (now + 1) * MINUTE, [
      { name: "sessions started", className: "series-a", points: point("started") },
      { name: "messages appended", className: "series-d", points: point("messages") },
      { name: "errors", className: "series-c", points: point("errors") },
    ], "Waiting for the event stream");
  }

  async function loadCharts() {
    const windowed = windowParams();
    const spendRange = {};
    if (windowed.started_after || windowed.started_before) {
      spendRange.start = windowed.started_after || 0;
      spendRange.end = windowed.started_before || Math.floor(serverNow() * 1000);
    }
    const [costs, spend] = await Promise.all([api("cost-by-model", windowed), api("spend", spendRange)]);
    drawCostByModel(costs.models || []);
    drawSpend(spend.buckets || []);
    drawActivity(spend.buckets || []);
    drawLive();
    return Math.min(num(costs.revision), num(spend.revision) || num(costs.revision));
  }

  // Sessions table

  function statusBadge(status) {
    const text = word(status);
    return el("span", { className: `badge status-${text}`, text });
  }

  function turnCell(session) {
    const runtime = word(session.runtime_state);
    const cell = el("td");
    cell.append(el("span", { className: `badge runtime-${runtime}`, text: runtime }));
    if (session.runtime_state === "RUNTIME_STATE_RUNNING" && session.turn_started_at) {
      cell.append(" ");
      cell.append(el("span", { className: "turn", data: { turnStarted: session.turn_started_at }, title: "turn started " + fullTime(session.turn_started_at) }));
    }
    return cell;
  }

  const sessionHref = (id) => "#/sessions/" + encodeURIComponent(id);

  function sessionRow(session) {
    const usage = session.usage || {};
    const link = el("a", { href: sessionHref(session.id), text: session.display_name || session.id });
    const name = el("td", {}, [link]);
    if (session.display_name) name.append(el("span", { className: "session-id", text: session.id }));
    const row = el("tr", { data: { sessionId: session.id } }, [
      name,
      el("td", {}, [statusBadge(session.status)]),
      turnCell(session),
      el("td", { text: session.agent || "-" }),
      el("td", { text: session.channel || "-" }),
      el("td", { text: session.model || "-" }),
      el("td", { className: "owner", text: session.owner_id || "-" }),
      el("td", { className: "num", text: count(session.message_count) }),
      el("td", { className: "num", text: count(usage.total_tokens) }),
      el("td", { className: "num", text: money(usage.cost_micros) }),
      el("td", { text: ago(session.last_activity_at), title: fullTime(session.last_activity_at), data: { ago: session.last_activity_at || "" } }),
    ]);
    return row;
  }

  function renderSessions(sessions) {
    state.rows = new Map();
    const rows = sessions.map((session) => {
      const row = sessionRow(session);
      state.rows.set(session.id, { row, revision: num(session.revision) });
      state.errorCounts.set(session.id, num(session.usage && session.usage.error_count));
      return row;
    });
    $("sessions-body").replaceChildren(...rows);
    $("sessions-empty").hidden = rows.length > 0;
    tick();
  }

  async function loadSessions() {
    const token = state.pageTokens[state.pageTokens.length - 1];
    const answer = await api("sessions", { ...filterParams(), ...windowParams(), page_token: token });
    renderSessions(answer.sessions || []);
    state.nextPageToken = answer.next_page_token || "";
    $("page-next").disabled = !state.nextPageToken;
    $("page-prev").disabled = state.pageTokens.length <= 1;
    const page = state.pageTokens.length;
    const total = num(answer.total_size);
    $("page-info").textContent = `page ${count(page)} · ${count(total)} session${total === 1 ? "" : "s"}`;
    return num(answer.revision);
  }

  // Turn timers and "ago" cells tick every second on sessiond's clock.
  function tick() {
    // Durations are measured on sessiond's clock: wait until the stream has told it.
    if (!state.serverTimeKnown) return;
    const stuckMs = num(state.config.stuck_after_seconds) * 1000;
    for (const span of document.querySelectorAll("[data-turn-started]")) {
      const elapsed = serverNow() - timeMs(span.dataset.turnStarted);
      const stuck = elapsed > stuckMs;
      span.textContent = (stuck ? "stuck " : "") + duration(elapsed);
      span.classList.toggle("stuck", stuck);
      const row = span.closest("tr");
      if (row) row.classList.toggle("stuck", stuck);
    }
    for (const cell of document.querySelectorAll("td[data-ago]")) {
      cell.textContent = ago(cell.dataset.ago);
    }
  }

  // Session view

  function field(list, name, value) {
    const dd = value instanceof Node ? el("dd", {}, [value])
      : el("dd", { text: value === undefined || value === null || value === "" ? "-" : value });
    list.append(el("dt", { text: name }), dd);
  }

  function renderSession(session) {
    // An answer read before an event already shown must not undo it.
    if (num(session.revision) < num(state.sessionRevision)) return;
    state.sessionRevision = num(session.revision);
    state.session = session;
    $("session-title").replaceChildren(el("span", { text: session.display_name || session.id }), " ", statusBadge(session.status));
    const usage = session.usage || {};
    const fields = $("session-fields");
    fields.replaceChildren();
    field(fields, "id", session.id);
    field(fields, "status", word(session.status));
    if (session.end_reason) field(fields, "end reason", session.end_reason);
    field(fields, "kind", word(session.kind));
    field(fields, "agent", session.agent);
    field(fields, "model", session.model);
    field(fields, "channel", session.channel);
    field(fields, "room", session.room_id);
    field(fields, "sender", session.sender_id);
    field(fields, "owner", session.owner_id);
    field(fields, "dataset", session.dataset_id);
    if (session.parent_id) {
      field(fields, "forked from", el("span", {}, [
        el("a", { className: "parent-link", href: sessionHref(session.parent_id), text: session.parent_id }),
        ` at message #${count(session.fork_seq)}`,
      ]));
    }
    const labels = Object.entries(session.labels || {}).map(([k, v]) => `${k}=${v}`).join("\n");
    field(fields, "labels", labels);
    if (session.goal) field(fields, "goal", session.goal);
    field(fields, "started", fullTime(session.started_at));
    field(fields, "last activity", fullTime(session.last_activity_at));
    field(fields, "ended", fullTime(session.ended_at));
    field(fields, "messages", `${count(session.message_count)} (${count(session.turn_count)} turns, ${count(session.tool_call_count)} tool calls)`);
    field(fields, "tokens", `${count(usage.total_tokens)} (prompt ${count(usage.prompt_tokens)}, completion ${count(usage.completion_tokens)}, reasoning ${count(usage.reasoning_tokens)}, cache read ${count(usage.cache_read_tokens)})`);
    field(fields, "cost", money(usage.cost_micros) + (num(session.budget_micros) ? ` of ${money(session.budget_micros)} budget` : ""));
    field(fields, "requests", `${count(usage.request_count)} (${count(usage.error_count)} errored)`);

    const runtime = $("session-runtime");
    runtime.replaceChildren();
    runtime.append(el("dt", { text: "state" }), el("dd", {}, [el("span", { className: `badge runtime-${word(session.runtime_state)}`, text: word(session.runtime_state) })]));
    field(runtime, "instance", session.runtime_instance);
    field(runtime, "turn", session.current_turn_id);
    if (session.runtime_state === "RUNTIME_STATE_RUNNING" && session.turn_started_at) {
      runtime.append(el("dt", { text: "running for" }), el("dd", {}, [el("span", { className: "turn", data: { turnStarted: session.turn_started_at } })]));
    }
    tick();
  }

  async function loadSessionUsage() {
    const answer = await api("cost-by-model", { session_id: state.sessionId });
    const rows = (answer.models || []).map((model) => {
      const usage = model.usage || {};
      return el("tr", {}, [
        el("td", { text: model.model }),
        el("td", { className: "num", text: count(usage.request_count) }),
        el("td", { className: "num", text: count(usage.prompt_tokens) }),
        el("td", { className: "num", text: count(usage.completion_tokens) }),
        el("td", { className: "num", text: count(usage.total_tokens) }),
        el("td", { className: "num", text: money(usage.cost_micros) }),
      ]);
    });
    $("session-usage").tBodies[0].replaceChildren(...rows);
    $("session-usage-empty").hidden = rows.length > 0;
    return num(answer.revision);
  }

  async function loadForks() {
    const answer = await api("sessions", { parent_id: state.sessionId, page_size: 50, order: "started" });
    const items = (answer.sessions || []).map((fork) => el("li", {}, [
      el("a", { className: "fork-link", href: sessionHref(fork.id), text: fork.display_name || fork.id }),
      ` at message #${count(fork.fork_seq)} `, statusBadge(fork.status),
    ]));
    if (num(answer.total_size) > items.length) items.push(el("li", { className: "hint", text: `and ${count(num(answer.total_size) - items.length)} more` }));
    $("session-forks").replaceChildren(...items);
    $("session-forks-empty").hidden = items.length > 0;
    return num(answer.revision);
  }

  // The timeline: a band of runtime states over the session's life, turns
  // labelled, usage and messages as marks; then every entry, newest first.

  function timelineText(entry) {
    switch (entry.kind) {
      case "created": return "created";
      case "runtime": return entry.state + (entry.turn_id ? ` (turn ${entry.turn_id})` : "");
      case "usage": return `usage: ${money(entry.cost_micros)}, ${count(entry.total_tokens)} tokens` + (num(entry.errors) ? `, ${count(entry.errors)} errored` : "");
      case "messages": return `${count(entry.count)} message${num(entry.count) === 1 ? "" : "s"} appended`;
      case "status": return `ended: ${entry.status}` + (entry.reason ? ` (${entry.reason})` : "");
      default: return entry.kind;
    }
  }

  function drawTimeline(entries, session) {
    const target = $("timeline-chart");
    const width = 960, height = 96, left = 70, right = 10;
    target.setAttribute("viewBox", `0 0 ${width} ${height}`);
    // From the start to the end, or to the last activity of a session still
    // open: an idle stretch after it would squeeze the rest into a corner.
    const start = timeMs(session.started_at);
    const times = [session.ended_at, session.last_activity_at, ...entries.map((e) => e.time)]
      .map(timeMs).filter((t) => !Number.isNaN(t));
    const end = Math.max(...times, start + 1000);
    if (Number.isNaN(start)) { target.replaceChildren(); return; }
    const x = (ms) => left + ((ms - start) / Math.max(1, end - start)) * (width - left - right);
    const nodes = [
      svg("text", { x: left - 6, y: 22, "text-anchor": "end" }, "runtime"),
      svg("text", { x: left - 6, y: 50, "text-anchor": "end" }, "usage"),
      svg("text", { x: left - 6, y: 70, "text-anchor": "end" }, "messages"),
    ];
    // Runtime segments: each state lasts until the next change.
    let current = { state: "idle", from: start, turn: "" };
    const segments = [];
    for (const entry of entries) {
      if (entry.kind !== "runtime") continue;
      const at = timeMs(entry.time);
      segments.push({ ...current, to: at });
      current = { state: entry.state, from: at, turn: entry.turn_id };
    }
    segments.push({ ...current, to: end });
    for (const segment of segments) {
      if (segment.to <= segment.from) continue;
      const rect = svg("rect", { x: x(segment.from), y: 12, width: Math.max(1, x(segment.to) - x(segment.from)), height: 16, class: `segment runtime-${segment.state}` });
      rect.append(svg("title", {}, `${segment.state}${segment.turn ? " turn " + segment.turn : ""}: ${fullTime(new Date(segment.from).toISOString())} for ${duration(segment.to - segment.from)}`));
      nodes.push(rect);
      if (segment.turn && x(segment.to) - x(segment.from) > 50) {
        nodes.push(svg("text", { x: x(segment.from) + 3, y: 24, class: "segment-label" }, segment.turn));
      }
    }
    for (const entry of entries) {
      const at = timeMs(entry.time);
      if (entry.kind === "usage") {
        const dot = svg("circle", { cx: x(at), cy: 46, r: num(entry.errors) ? 4 : 3, class: num(entry.errors) ? "usage-mark errored" : "usage-mark" });
        dot.append(svg("title", {}, `${fullTime(entry.time)} ${timelineText(entry)}`));
        nodes.push(dot);
      } else if (entry.kind === "messages") {
        const mark = svg("rect", { x: x(at) - 1, y: 62, width: 2, height: 10, class: "message-mark" });
        mark.append(svg("title", {}, `${fullTime(entry.time)} ${timelineText(entry)}`));
        nodes.push(mark);
      } else if (entry.kind === "status") {
        nodes.push(svg("line", { x1: x(at), y1: 8, x2: x(at), y2: 76, class: `end-mark status-${entry.status}` }));
      }
    }
    const { ticks, step } = timeTicks(start, end);
    ticks.forEach((at, index) => {
      nodes.push(svg("text", { x: x(at), y: 90, "text-anchor": "middle" }, timeLabel(at, step, index === 0)));
    });
    target.replaceChildren(...nodes);
  }

  async function loadTimeline() {
    const answer = await api(`sessions/${encodeURIComponent(state.sessionId)}/timeline`);
    const entries = answer.entries || [];
    if (state.session) drawTimeline(entries, state.session);
    const rows = entries.slice(-TIMELINE_ROWS).reverse().map((entry) => el("tr", { data: { kind: entry.kind } }, [
      el("td", { text: fullTime(entry.time) }),
      el("td", { className: "num", text: count(entry.revision) }),
      el("td", { text: timelineText(entry) }),
    ]));
    $("timeline").tBodies[0].replaceChildren(...rows);
    const notes = [];
    if (!answer.complete) notes.push("The oldest events are no longer in the change log (compacted); the timeline starts after them.");
    if (num(answer.dropped)) notes.push(`${count(answer.dropped)} older entries are left out.`);
    if (entries.length > TIMELINE_ROWS) notes.push(`The table shows the newest ${count(TIMELINE_ROWS)} of ${count(entries.length)} entries.`);
    $("timeline-note").textContent = notes.join(" ");
    $("timeline-note").hidden = notes.length === 0;
  }

  function messageElement(message) {
    const role = word(message.role);
    const header = el("header", {}, [
      el("span", { className: "role", text: role }),
      el("span", { text: "#" + message.seq }),
      message.name ? el("span", { text: message.name }) : null,
      el("span", { text: fullTime(message.created_at) }),
      message.status && message.status !== "MESSAGE_STATUS_COMPLETE" ? el("span", { text: word(message.status) }) : null,
      message.tool_call_id ? el("span", { text: "answers " + message.tool_call_id }) : null,
    ]);
    const node = el("article", { className: `message role-${role}`, data: { seq: message.seq } }, [header]);
    node.append(el("div", { className: "content", text: message.content + (message.content_truncated ? " …(cut)" : "") }));
    for (const call of message.tool_calls || []) {
      node.append(el("div", { className: "tool-call", text: `${call.name}(${call.arguments_json})  [${call.id}]` }));
    }
    if (message.reasoning) {
      node.append(el("details", {}, [el("summary", { text: "reasoning" }), el("div", { className: "reasoning", text: message.reasoning })]));
    }
    return node;
  }

  function placeMessage(message) {
    const seq = num(message.seq);
    const node = messageElement(message);
    const existing = state.messageSeqs.get(seq);
    if (existing) { existing.replaceWith(node); state.messageSeqs.set(seq, node); return; }
    // Newest first: before the first element with a lower seq.
    const list = $("messages");
    let before = null;
    for (const child of list.children) {
      if (num(child.dataset.seq) < seq) { before = child; break; }
    }
    list.insertBefore(node, before);
    state.messageSeqs.set(seq, node);
  }

  function removeMessage(seq) {
    const node = state.messageSeqs.get(num(seq));
    if (node) { node.remove(); state.messageSeqs.delete(num(seq)); }
  }

  function updateMessagesChrome() {
    $("messages-empty").hidden = state.messageSeqs.size > 0;
    $("messages-older").hidden = !state.messagesNextToken;
  }

  // The newest page: merged into what is shown, older pages kept.
  async function loadNewestMessages() {
    const answer = await api(`sessions/${encodeURIComponent(state.sessionId)}/messages`);
    const messages = answer.messages || [];
    const seen = new Set(messages.map((m) => num(m.seq)));
    const lowest = answer.next_page_token && messages.length ? Math.min(...seen) : 0;
    for (const seq of [...state.messageSeqs.keys()]) if (seq >= lowest && !seen.has(seq)) removeMessage(seq);
    for (const message of messages) placeMessage(message);
    if (!state.messagesLoadedOlder) state.messagesNextToken = answer.next_page_token || "";
    updateMessagesChrome();
    return num(answer.revision);
  }

  async function loadOlderMessages() {
    if (!state.messagesNextToken) return;
    const answer = await api(`sessions/${encodeURIComponent(state.sessionId)}/messages`, { page_token: state.messagesNextToken });
    state.messagesLoadedOlder = true;
    for (const message of answer.messages || []) placeMessage(message);
    state.messagesNextToken = answer.next_page_token || "";
    updateMessagesChrome();
  }

  // The session itself first: a missing session shows the not-found page
  // instead of empty panels.
  async function loadSessionHeader() {
    try {
      const answer = await api(`sessions/${encodeURIComponent(state.sessionId)}`);
      renderSession(answer.session);
      return num(answer.revision);
    } catch (error) {
      if (error.code === "NOT_FOUND") { showNotFound(); return 0; }
      throw error;
    }
  }

  async function loadSessionView() {
    const header = await loadSessionHeader();
    if (state.view !== "session") return [header];
    return [header, ...await Promise.all([loadSessionUsage(), loadNewestMessages(), loadForks(), loadTimeline()])];
  }

  // Live updates

  const refreshSessions = refresher(loadSessions, 400);
  const refreshStats = refresher(loadStats, 1000);
  const refreshCharts = refresher(loadCharts, 3000);
  const refreshKnown = refresher(loadKnownValues, 10000);
  const refreshSessionHeader = refresher(loadSessionHeader, 400);
  const refreshSessionUsage = refresher(loadSessionUsage, 1000);
  const refreshMessages = refresher(loadNewestMessages, 300);
  const refreshTimeline = refresher(loadTimeline, 2000); // a replay of the change log: not on every event
  const refreshForks = refresher(loadForks, 2000);

  function applyEvent(event) {
    if (state.view === "overview") {
      const known = state.rows.get(event.session_id);
      if (known && event.session && num(event.session.revision) >= known.revision) {
        const row = sessionRow(event.session);
        known.row.replaceWith(row);
        state.rows.set(event.session_id, { row, revision: num(event.session.revision) });
      } else if (known && !event.session) {
        known.row.remove();
        state.rows.delete(event.session_id);
      }
      if (event.type === "EVENT_TYPE_SESSION_CREATED") refreshKnown();
      return;
    }
    if (state.view !== "session") return;
    if (event.session && event.session.parent_id === state.sessionId && event.type === "EVENT_TYPE_SESSION_CREATED") refreshForks();
    if (event.session_id !== state.sessionId) return;
    if (event.session) renderSession(event.session);
    else { $("session-title").append(" ", el("span", { className: "badge", text: "deleted" })); return; }
    refreshTimeline();
    switch (event.type) {
      case "EVENT_TYPE_MESSAGES_APPENDED":
      case "EVENT_TYPE_MESSAGE_UPDATED":
        if (event.messages_truncated) refreshMessages();
        for (const message of event.messages) placeMessage(message);
        updateMessagesChrome();
        break;
      case "EVENT_TYPE_MESSAGE_POPPED":
        if (event.messages.length) event.messages.forEach((m) => removeMessage(m.seq));
        else refreshMessages();
        updateMessagesChrome();
        break;
      case "EVENT_TYPE_MESSAGES_CLEARED":
        refreshMessages();
        break;
      case "EVENT_TYPE_USAGE_RECORDED":
        refreshSessionUsage();
        break;
      default:
        break;
    }
  }

  function onChange(payload) {
    noteServerTime(payload.time);
    for (const event of payload.events || []) { noteLive(event); applyEvent(event); }
    if (state.view === "overview") {
      refreshSessions();
      refreshStats();
      refreshCharts();
    }
  }

  function setConnection(stateName, text) {
    const badge = $("connection");
    badge.dataset.state = stateName;
    badge.textContent = text;
  }

  function noteRevision(event) {
    if (event.lastEventId && /^\d+$/.test(event.lastEventId)) {
      state.lastRevision = Math.max(state.lastRevision, Number(event.lastEventId));
      document.body.dataset.lastRevision = String(state.lastRevision);
    }
  }

  function connect() {
    if (state.source) state.source.close();
    if (state.signedOut) return;
    const source = new EventSource("/api/events?since=" + state.lastRevision);
    state.source = source;
    source.addEventListener("ready", (event) => {
      const payload = JSON.parse(event.data);
      noteServerTime(payload.time);
      noteRevision(event);
      setConnection("live", "live");
    });
    source.addEventListener("change", (event) => {
      noteRevision(event);
      onChange(JSON.parse(event.data));
    });
    source.addEventListener("progress", (event) => {
      noteRevision(event);
      noteServerTime(JSON.parse(event.data).time);
    });
    source.addEventListener("fatal", (event) => {
      const payload = JSON.parse(event.data);
      source.close();
      if (payload.relist) { relist(); return; }
      setConnection("error", "stopped");
      showAlert(payload.error);
    });
    source.onerror = () => {
      if (state.source !== source) return;
      setConnection("reconnecting", "reconnecting…");
      // The browser retries by itself (with Last-Event-ID) unless it gave up.
      if (source.readyState === EventSource.CLOSED) setTimeout(() => { if (state.source === source) connect(); }, 2000);
    };
  }

  // Load everything the current view shows, then watch from the lowest revision read.
  async function relist() {
    try {
      // The known values first: the filters resolve what was typed against them.
      if (state.view === "overview") await loadKnownValues().catch(() => {});
      const revisions = state.view === "overview"
        ? await Promise.all([loadSessions(), loadStats(), loadCharts()])
        : await loadSessionView();
      showAlert(null);
      state.lastRevision = Math.min(...revisions.filter((r) => r > 0), Number.MAX_SAFE_INTEGER);
      if (state.lastRevision === Number.MAX_SAFE_INTEGER) state.lastRevision = 0;
      document.body.dataset.lastRevision = String(state.lastRevision);
    } catch (error) {
      showAlert(error);
    }
    connect();
  }

  // Views

  const VIEWS = ["overview", "session", "signin", "notfound"];

  function showView(name) {
    state.view = name;
    for (const view of VIEWS) $("view-" + view).hidden = view !== name;
    document.body.dataset.view = name;
  }

  function showSignIn(error) {
    const wasSignedOut = state.signedOut;
    state.signedOut = true;
    if (state.source) { state.source.close(); state.source = null; }
    setConnection("error", "signed out");
    showView("signin");
    document.title = "Sign in · sessiond";
    const message = $("signin-error");
    // A key was sent and refused: say so; no key yet: the page says what to do.
    const refused = error && /not known|invalid|refused/i.test(error.message || "");
    message.textContent = refused ? "That key was not accepted: " + error.message : "";
    message.hidden = !refused;
    if (!wasSignedOut) $("signin-token").focus();
  }

  function showNotFound() {
    showView("notfound");
    $("notfound-id").textContent = state.sessionId;
    document.title = "Not found · sessiond";
  }

  function selectView() {
    const match = /^#\/sessions\/(.+)$/.exec(location.hash);
    if (match) {
      showView("session");
      state.sessionId = decodeURIComponent(match[1]);
      state.session = null;
      state.sessionRevision = 0;
      state.messageSeqs = new Map();
      state.messagesNextToken = "";
      state.messagesLoadedOlder = false;
      $("messages").replaceChildren();
      $("session-usage").tBodies[0].replaceChildren();
      $("timeline").tBodies[0].replaceChildren();
      $("timeline-chart").replaceChildren();
      $("session-forks").replaceChildren();
      document.title = `${state.sessionId} · sessiond`;
    } else {
      showView("overview");
      formFromUrl(hashParams());
      document.title = "sessiond dashboard";
    }
  }

  function route() {
    if (state.signedOut) return;
    selectView();
    relist();
  }

  // A filter, sort, window or page change: into the URL, then reload what it changes.
  function filtersChanged({ keepPage = false } = {}) {
    if (!keepPage) state.pageTokens = [""];
    $("custom-range").hidden = $("window").value !== "custom";
    urlFromForm();
  }

  function setToken(token) {
    const attributes = "; path=/; SameSite=Strict";
    if (token) document.cookie = "token=" + encodeURIComponent(token) + attributes;
    else document.cookie = "token=" + attributes + "; max-age=0";
    $("token-form").hidden = true;
    state.signedOut = false;
    setConnection("connecting", "connecting…");
    selectView();
    relist();
  }

  async function start() {
    try { state.config = await api("config"); } catch (error) { showAlert(error); }
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      filtersChanged();
      refreshSessions.now();
    });
    $("filters").addEventListener("change", () => { filtersChanged(); refreshSessions(); });
    const windowChanged = () => {
      filtersChanged();
      if ($("window").value === "custom" && !$("range-from").value) return; // pick a range first
      Promise.all([refreshSessions.now(), refreshStats.now(), refreshCharts.now()]);
    };
    $("window").addEventListener("change", windowChanged);
    $("range-from").addEventListener("change", windowChanged);
    $("range-to").addEventListener("change", windowChanged);
    $("page-next").addEventListener("click", () => { state.pageTokens.push(state.nextPageToken); filtersChanged({ keepPage: true }); refreshSessions.now(); });
    $("page-prev").addEventListener("click", () => { if (state.pageTokens.length > 1) state.pageTokens.pop(); filtersChanged({ keepPage: true }); refreshSessions.now(); });
    $("messages-older").addEventListener("click", () => loadOlderMessages().catch(showAlert));
    $("token-toggle").addEventListener("click", () => { $("token-form").hidden = !$("token-form").hidden; });
    $("token-form").addEventListener("submit", (event) => { event.preventDefault(); setToken($("token-input").value.trim()); $("token-input").value = ""; });
    $("token-clear").addEventListener("click", () => setToken(""));
    $("signin-form").addEventListener("submit", (event) => { event.preventDefault(); setToken($("signin-token").value.trim()); $("signin-token").value = ""; });
    window.addEventListener("hashchange", route);
    setInterval(tick, 1000);
    setInterval(() => { if (state.view === "overview" && state.serverTimeKnown) drawLive(); }, 15000);
    selectView();
    await relist();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
