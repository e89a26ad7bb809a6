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
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const state = {
    config: { stuck_after_seconds: 300 },
    lastRevision: 0,
    serverOffsetMs: 0, // sessiond's clock minus the browser's
    serverTimeKnown: false,
    source: null,
    view: "overview",
    sessionId: "",
    pageTokens: [""], // tokens of the pages seen, for "newer"
    nextPageToken: "",
    rows: new Map(), // session id -> {row, revision}
    messageSeqs: new Map(), // seq -> element, in the session view
    messagesNextToken: "",
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

  // Formatting

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

  function money(micros) {
    const dollars = num(micros) / 1e6;
    if (dollars !== 0 && Math.abs(dollars) < 0.0001) return "$" + dollars.toFixed(6);
    if (dollars !== 0 && Math.abs(dollars) < 0.01) return "$" + dollars.toFixed(4);
    return "$" + dollars.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }

  function compact(value) {
    const n = num(value);
    if (Math.abs(n) >= 1e9) return (n / 1e9).toFixed(1) + "B";
    if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + "k";
    return n.toLocaleString("en-US");
  }

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
    if (first) tick();
  }

  // Talking to the dashboard

  async function api(path, params = {}) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value === undefined || value === null || value === "" || value === false) continue;
      query.append(key, String(value));
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

  // Window and filters

  function windowParams() {
    const seconds = $("window").value;
    if (seconds === "all") return {};
    return { started_after: Math.floor((serverNow() - Number(seconds) * 1000) * 1000) };
  }

  function filterParams() {
    const form = $("filters");
    const data = new FormData(form);
    return {
      status: data.get("status"), agent: data.get("agent").trim(), channel: data.get("channel").trim(),
      model: data.get("model").trim(), owner: data.get("owner").trim(), q: data.get("q").trim(),
      order: data.get("order"), asc: data.get("asc") ? "1" : "", stuck: data.get("stuck") ? "1" : "",
    };
  }

  // Counters

  async function loadStats() {
    const answer = await api("stats", windowParams());
    const stats = answer.stats || {};
    const usage = stats.usage || {};
    const set = (id, text) => { $(id).textContent = text; };
    set("counter-active", compact(stats.active_count));
    set("counter-running", compact(stats.running_count));
    set("counter-completed", compact(stats.completed_count));
    set("counter-failed", compact(stats.failed_count));
    set("counter-cancelled", compact(stats.cancelled_count));
    set("counter-abandoned", compact(stats.abandoned_count));
    set("counter-unknown", compact(stats.unknown_count));
    const decided = num(stats.completed_count) + num(stats.failed_count);
    set("counter-success", decided ? (num(stats.success_rate) * 100).toFixed(1) + "%" : "–");
    set("counter-spend", money(usage.cost_micros));
    set("counter-tokens", compact(usage.total_tokens));
    set("counter-sessions", compact(stats.session_count));
    set("counter-messages", compact(stats.message_count));
    return num(answer.revision);
  }

  // Charts (SVG drawn through the DOM)

  function emptyChart(target, text) {
    target.replaceChildren(svg("text", { x: 240, y: 110, "text-anchor": "middle", class: "empty" }, text));
  }

  function drawCostByModel(models) {
    const target = $("chart-cost-by-model");
    target.setAttribute("viewBox", "0 0 480 220");
    const rows = models.filter((m) => num(m.usage && m.usage.cost_micros) > 0 || num(m.usage && m.usage.total_tokens) > 0).slice(0, 7);
    if (!rows.length) { emptyChart(target, "No usage recorded yet"); return; }
    const max = Math.max(...rows.map((m) => num(m.usage.cost_micros)), 1);
    const nodes = [];
    const rowHeight = Math.min(30, 210 / rows.length);
    rows.forEach((model, index) => {
      const y = 6 + index * rowHeight;
      const width = Math.max(2, (num(model.usage.cost_micros) / max) * 250);
      const label = model.model.length > 22 ? model.model.slice(0, 21) + "…" : model.model;
      nodes.push(svg("text", { x: 140, y: y + rowHeight / 2 + 4, "text-anchor": "end" }, label));
      const bar = svg("rect", { x: 148, y: y + 3, width, height: rowHeight - 8, rx: 3, class: "bar" });
      bar.append(svg("title", {}, `${model.model}: ${money(model.usage.cost_micros)}, ${compact(model.usage.total_tokens)} tokens, ${model.session_count} sessions`));
      nodes.push(bar);
      nodes.push(svg("text", { x: 154 + width, y: y + rowHeight / 2 + 4, class: "value" }, money(model.usage.cost_micros)));
    });
    target.replaceChildren(...nodes);
  }

  function drawSpend(buckets) {
    const target = $("chart-spend");
    target.setAttribute("viewBox", "0 0 480 220");
    if (!buckets.length) { emptyChart(target, "No sessions yet"); return; }
    const max = Math.max(...buckets.map((b) => num(b.cost_micros)), 1);
    const left = 56, bottom = 190, top = 12, width = 480 - left - 8;
    const step = width / buckets.length;
    const nodes = [
      svg("line", { x1: left, y1: bottom, x2: 480 - 8, y2: bottom, class: "axis" }),
      svg("line", { x1: left, y1: top, x2: left, y2: bottom, class: "axis" }),
      svg("text", { x: left - 6, y: top + 8, "text-anchor": "end" }, money(max)),
      svg("text", { x: left - 6, y: bottom, "text-anchor": "end" }, "$0"),
    ];
    buckets.forEach((bucket, index) => {
      const height = (num(bucket.cost_micros) / max) * (bottom - top);
      const bar = svg("rect", {
        x: left + index * step + 1, y: bottom - height, width: Math.max(1, step - 2), height: Math.max(0, height), class: "bar",
      });
      const from = new Date(num(bucket.start_micros) / 1000).toISOString().slice(0, 16).replace("T", " ");
      bar.append(svg("title", {}, `${from}Z: ${money(bucket.cost_micros)}, ${compact(bucket.total_tokens)} tokens, ${bucket.session_count} sessions`));
      nodes.push(bar);
    });
    const day = (micros) => new Date(num(micros) / 1000).toISOString().slice(0, 16).replace("T", " ");
    nodes.push(svg("text", { x: left, y: bottom + 16 }, day(buckets[0].start_micros)));
    nodes.push(svg("text", { x: 480 - 8, y: bottom + 16, "text-anchor": "end" }, day(buckets[buckets.length - 1].end_micros)));
    target.replaceChildren(...nodes);
  }

  async function loadCharts() {
    const windowed = windowParams();
    const spendRange = windowed.started_after ? { start: windowed.started_after, end: Math.floor(serverNow() * 1000) } : {};
    const [costs, spend] = await Promise.all([api("cost-by-model", windowed), api("spend", spendRange)]);
    drawCostByModel(costs.models || []);
    drawSpend(spend.buckets || []);
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

  function sessionRow(session) {
    const usage = session.usage || {};
    const link = el("a", { href: "#/sessions/" + encodeURIComponent(session.id), text: session.display_name || session.id });
    const name = el("td", {}, [link]);
    if (session.display_name) name.append(el("span", { className: "session-id", text: session.id }));
    const row = el("tr", { data: { sessionId: session.id } }, [
      name,
      el("td", {}, [statusBadge(session.status)]),
      turnCell(session),
      el("td", { text: session.agent || "-" }),
      el("td", { text: session.channel || "-" }),
      el("td", { text: session.model || "-" }),
      el("td", { text: session.owner_id || "-" }),
      el("td", { className: "num", text: compact(session.message_count) }),
      el("td", { className: "num", text: compact(usage.total_tokens) }),
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
    $("page-info").textContent = `page ${page} · ${num(answer.total_size)} session${num(answer.total_size) === 1 ? "" : "s"}`;
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
    list.append(el("dt", { text: name }), el("dd", { text: value === undefined || value === null || value === "" ? "-" : value }));
  }

  function renderSession(session) {
    // An answer read before an event already shown must not undo it.
    if (num(session.revision) < num(state.sessionRevision)) return;
    state.sessionRevision = num(session.revision);
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
    if (session.parent_id) field(fields, "forked from", `${session.parent_id} @ #${session.fork_seq}`);
    const labels = Object.entries(session.labels || {}).map(([k, v]) => `${k}=${v}`).join("\n");
    field(fields, "labels", labels);
    if (session.goal) field(fields, "goal", session.goal);
    field(fields, "started", fullTime(session.started_at));
    field(fields, "last activity", fullTime(session.last_activity_at));
    field(fields, "ended", fullTime(session.ended_at));
    field(fields, "messages", `${compact(session.message_count)} (${compact(session.turn_count)} turns, ${compact(session.tool_call_count)} tool calls)`);
    field(fields, "tokens", `${compact(usage.total_tokens)} (prompt ${compact(usage.prompt_tokens)}, completion ${compact(usage.completion_tokens)}, reasoning ${compact(usage.reasoning_tokens)}, cache read ${compact(usage.cache_read_tokens)})`);
    field(fields, "cost", money(usage.cost_micros) + (num(session.budget_micros) ? ` of ${money(session.budget_micros)} budget` : ""));
    field(fields, "requests", `${compact(usage.request_count)} (${compact(usage.error_count)} errored)`);

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
        el("td", { className: "num", text: compact(usage.request_count) }),
        el("td", { className: "num", text: compact(usage.prompt_tokens) }),
        el("td", { className: "num", text: compact(usage.completion_tokens) }),
        el("td", { className: "num", text: compact(usage.total_tokens) }),
        el("td", { className: "num", text: money(usage.cost_micros) }),
      ]);
    });
    $("session-usage").tBodies[0].replaceChildren(...rows);
    $("session-usage-empty").hidden = rows.length > 0;
    return num(answer.revision);
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

  async function loadSessionHeader() {
    const answer = await api(`sessions/${encodeURIComponent(state.sessionId)}`);
    renderSession(answer.session);
    return num(answer.revision);
  }

  // Live updates

  const refreshSessions = refresher(loadSessions, 400);
  const refreshStats = refresher(loadStats, 1000);
  const refreshCharts = refresher(loadCharts, 3000);
  const refreshSessionHeader = refresher(loadSessionHeader, 400);
  const refreshSessionUsage = refresher(loadSessionUsage, 1000);
  const refreshMessages = refresher(loadNewestMessages, 300);

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
      return;
    }
    if (event.session_id !== state.sessionId) return;
    if (event.session) renderSession(event.session);
    else { $("session-title").append(" ", el("span", { className: "badge", text: "deleted" })); return; }
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
    for (const event of payload.events || []) applyEvent(event);
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
      const revisions = state.view === "overview"
        ? await Promise.all([loadSessions(), loadStats(), loadCharts()])
        : await Promise.all([loadSessionHeader(), loadSessionUsage(), loadNewestMessages()]);
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

  function selectView() {
    const match = /^#\/sessions\/(.+)$/.exec(location.hash);
    const sessionView = Boolean(match);
    $("view-overview").hidden = sessionView;
    $("view-session").hidden = !sessionView;
    if (sessionView) {
      state.view = "session";
      state.sessionId = decodeURIComponent(match[1]);
      state.sessionRevision = 0;
      state.messageSeqs = new Map();
      state.messagesNextToken = "";
      state.messagesLoadedOlder = false;
      $("messages").replaceChildren();
      $("session-usage").tBodies[0].replaceChildren();
      document.title = `${state.sessionId} · sessiond`;
    } else {
      state.view = "overview";
      document.title = "sessiond dashboard";
    }
    document.body.dataset.view = state.view;
  }

  function route() {
    selectView();
    return state.view === "overview"
      ? Promise.all([refreshSessions.now(), refreshStats.now(), refreshCharts.now()])
      : Promise.all([refreshSessionHeader.now(), refreshSessionUsage.now(), refreshMessages.now()]);
  }

  function setToken(token) {
    const attributes = "; path=/; SameSite=Strict";
    if (token) document.cookie = "token=" + encodeURIComponent(token) + attributes;
    else document.cookie = "token=" + attributes + "; max-age=0";
    $("token-form").hidden = true;
    relist();
  }

  async function start() {
    try { state.config = await api("config"); } catch (error) { showAlert(error); }
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      state.pageTokens = [""];
      refreshSessions.now();
    });
    $("filters").addEventListener("change", () => { state.pageTokens = [""]; refreshSessions(); });
    $("window").addEventListener("change", () => { state.pageTokens = [""]; route(); });
    $("page-next").addEventListener("click", () => { state.pageTokens.push(state.nextPageToken); refreshSessions.now(); });
    $("page-prev").addEventListener("click", () => { if (state.pageTokens.length > 1) state.pageTokens.pop(); refreshSessions.now(); });
    $("messages-older").addEventListener("click", () => loadOlderMessages().catch(showAlert));
    $("token-toggle").addEventListener("click", () => { $("token-form").hidden = !$("token-form").hidden; });
    $("token-form").addEventListener("submit", (event) => { event.preventDefault(); setToken($("token-input").value.trim()); $("token-input").value = ""; });
    $("token-clear").addEventListener("click", () => setToken(""));
    window.addEventListener("hashchange", () => { route(); });
    setInterval(tick, 1000);
    selectView();
    await relist();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
