// supd's dashboard: one page, hash routes, one EventSource per view. No framework, no build.
// Live data comes from the server's stream (/api/events: the daemon's event bus, and a
// `snapshot` at most once a second); a list is refetched at most once a second, and only
// when an event says it changed. Nothing here polls.
"use strict";

const $ = (sel) => document.querySelector(sel);
const main = $("#main");
const FINAL = new Set(["succeeded", "failed", "timed_out", "cancelled"]);
const MIN_REFETCH_MS = 1000;

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
const pill = (s) => `<span class="pill s-${esc(s)}" data-state="${esc(s)}">${esc(s)}</span>`;
const when = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "");
const secs = (s) => (s == null ? "" : s < 1 ? `${(s * 1000).toFixed(0)} ms` : `${s.toFixed(2)} s`);
const money = (c) => (c == null ? "" : `$${Number(c).toFixed(4)}`);
const short = (id) => esc(id);
function na(d) { return `<p class="na" data-na>${esc(d.reason)}${d.later ? ` (comes with ${esc(d.later)})` : ""}</p>`; }

async function api(path, opts) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin" }, opts || {}));
  if (r.status === 401) { banner("This dashboard needs its token: run <code>supctl web</code> and open the URL it prints."); throw new Error("401"); }
  return r.json();
}

function banner(html) { const b = $("#banner"); b.innerHTML = html; b.hidden = !html; }

// ---- the live stream ---------------------------------------------------------------------

let source = null;
function listen(params, handlers) {
  if (source) source.close();
  const live = $("#live");
  source = new EventSource("/api/events" + (params ? "?" + params : ""));
  source.addEventListener("hello", () => { live.textContent = "● live"; live.className = "live on"; });
  source.onerror = () => { live.textContent = "○ reconnecting"; live.className = "live"; };
  source.addEventListener("reload", (e) => {
    source.close();
    live.textContent = "○ stopped"; live.className = "live";
    banner(`This page fell behind the live stream and was dropped. <a href="javascript:location.reload()">Reload</a> to catch up.`);
  });
  source.addEventListener("snapshot", (e) => { const d = JSON.parse(e.data); showHealth(d); handlers.snapshot && handlers.snapshot(d); });
  source.onmessage = (e) => handlers.event && handlers.event(JSON.parse(e.data));
}

function showHealth(d) {
  const h = d.health && d.health.status;
  if (h) { const el = $("#health"); el.className = `pill s-${h}`; el.textContent = h; }
}

// A refetch that happens at most once a second, however many events ask for it.
function throttled(fn) {
  let last = 0, timer = null;
  return () => {
    if (timer) return;
    const wait = Math.max(0, last + MIN_REFETCH_MS - Date.now());
    timer = setTimeout(async () => { timer = null; last = Date.now(); await fn(); }, wait);
  };
}

// ---- charts (plain SVG) ------------------------------------------------------------------

function chart(title, points, opts) {
  const W = 320, H = 110, P = 22;
  const series = opts.series;
  const max = Math.max(1e-9, ...points.flatMap((p) => series.map((s) => p[s.key] || 0)));
  const x = (i) => P + (i * (W - P - 4)) / Math.max(1, points.length - 1);
  const y = (v) => H - P - ((v || 0) / max) * (H - P - 8);
  let body = "";
  if (opts.bars) {
    const bw = Math.max(1, (W - P - 4) / points.length - 1);
    points.forEach((p, i) => {
      const v = p[series[0].key] || 0;
      if (v) body += `<rect x="${x(i) - bw / 2}" y="${y(v)}" width="${bw}" height="${H - P - y(v)}" fill="${series[0].color}"><title>${esc(when(p.t))}: ${v}</title></rect>`;
    });
  } else {
    for (const s of series) {
      const pts = points.map((p, i) => (p[s.key] == null ? null : `${x(i)},${y(p[s.key])}`)).filter(Boolean);
      if (pts.length) body += `<polyline fill="none" stroke="${s.color}" stroke-width="1.5" points="${pts.join(" ")}"/>`;
      points.forEach((p, i) => { if (p[s.key] != null) body += `<circle cx="${x(i)}" cy="${y(p[s.key])}" r="2" fill="${s.color}"/>`; });
    }
  }
  const fmt = opts.fmt || ((v) => String(+v.toPrecision(3)));
  const legend = series.map((s, i) => `<text x="${W - 70 * (series.length - i)}" y="10" fill="${s.color}">■ ${esc(s.label)}</text>`).join("");
  const top = max > 1e-6 ? fmt(max) : "";
  return `<div class="chart" data-chart="${esc(opts.id)}"><div class="t">${esc(title)}</div>
    <svg viewBox="0 0 ${W} ${H}" width="100%" role="img" aria-label="${esc(title)}">
    ${legend}<line x1="${P}" y1="${H - P}" x2="${W}" y2="${H - P}" stroke="#ccc"/>
    <text x="0" y="${y(max) + 4}">${esc(top)}</text><text x="0" y="${H - P}">0</text>
    <text x="${P}" y="${H - 6}">-60 min</text><text x="${W - 30}" y="${H - 6}">now</text>${body}</svg></div>`;
}

// ---- overview -------------------------------------------------------------------------------

function card(label, value, id, cls) {
  return `<div class="card" data-card="${esc(id)}"><div class="n ${cls || ""}">${value}</div><div class="l">${esc(label)}</div></div>`;
}

function overviewNumbers(d) {
  const st = d.status || {}, pool = st.pool || {}, tasks = st.tasks || {}, stats = d.stats || {}, hour = d.hour || {};
  const b = (st.breaker || {}).state || "?";
  return `<div class="cards">
    ${card("health", pill((d.health || {}).status || "?"), "health")}
    ${card("phase", esc(st.phase || "?"), "phase")}
    ${card("queued", esc(tasks.queued ?? "?"), "queued")}
    ${card("running", esc(tasks.running ?? "?"), "running")}
    ${card("children ready / size", `${esc((pool.idle ?? 0) + (pool.busy ?? 0))} / ${esc(pool.size ?? "?")}`, "children")}
    ${card("breaker", pill(b), "breaker")}
    ${card("rate-limit gate", gateText(d.gate), "gate")}
    ${card("finished, last hour", esc(hour.finished ?? 0), "finished_hour")}
    ${card("p50 / p95, last hour", `${esc(secs(hour.p50_s) || "–")} / ${esc(secs(hour.p95_s) || "–")}`, "latency")}
    ${card("succeeded / failed (since start)", `${esc(stats.tasks_succeeded ?? 0)} / ${esc(stats.tasks_failed ?? 0)}`, "totals")}
    ${card("tokens", esc((stats.input_tokens ?? 0) + (stats.output_tokens ?? 0)), "tokens")}
    ${card("cost", esc(money(stats.cost_usd ?? 0)), "cost")}
  </div>`;
}

// The rate-limit gate: open, or closed until the time its 429 said (Claude tasks wait; exec ones run).
function gateText(g) {
  if (!g || !g.state) return `<span class="na">?</span>`;
  const pillG = `<span class="pill g-${esc(g.state)}" data-state="${esc(g.state)}">${esc(g.state)}</span>`;
  return g.state === "closed" ? `${pillG} <span class="sub" data-gate-reset>until ${esc(when(g.resets_at))}</span>` : pillG;
}

// Exclusive keys held or waited for: their limit, their holders, how many tasks wait.
function keysTable(keys) {
  const names = Object.keys(keys || {});
  if (!names.length) return `<p class="na" id="keys">no key is held or waited for</p>`;
  const rows = names.map((k) => { const v = keys[k];
    return `<tr data-key="${esc(k)}"><td class="mono"><a href="#/tasks?key=${encodeURIComponent(k)}">${esc(k)}</a></td>
      <td>${esc((v.held_by || []).length)} / ${esc(v.limit)}</td>
      <td class="mono">${(v.held_by || []).map((t) => `<a href="#/task/${esc(t)}">${short(t)}</a>`).join(" ")}</td><td>${esc(v.waiting)}</td></tr>`; }).join("");
  return `<table id="keys"><tr><th>key</th><th>held / limit</th><th>held by</th><th>tasks waiting</th></tr>${rows}</table>`;
}

function overviewCharts(d) {
  const s = d.series || [];
  return `<div class="charts">
    ${chart("throughput: tasks finished per minute", s, { id: "throughput", bars: true, series: [{ key: "finished", label: "finished", color: "#1565c0" }] })}
    ${chart("latency per minute (s)", s, { id: "latency", series: [{ key: "p50_s", label: "p50", color: "#2e7d32" }, { key: "p95_s", label: "p95", color: "#ef6c00" }] })}
    ${chart("tokens per minute", s, { id: "tokens", bars: true, series: [{ key: "tokens", label: "tokens", color: "#6a1b9a" }] })}
    ${chart("cost per minute (USD)", s, { id: "cost", bars: true, series: [{ key: "cost_usd", label: "USD", color: "#00838f" }], fmt: (v) => "$" + v.toPrecision(2) })}
  </div>`;
}

function childrenTable(st) {
  // the slots, then the spares (booted ahead, given no task): a spare's row is data-spare, not data-child
  const row = (c, attr) => `<tr ${attr}="${esc(c.slot)}"><td class="mono">${esc(c.slot)}</td><td>${pill(c.state)}</td>
    <td class="mono">${esc(c.pid ?? "")}</td><td class="mono">${c.task ? `<a href="#/task/${esc(c.task)}">${short(c.task)}</a>` : ""}</td>
    <td>${esc(c.tasks_done)}</td><td>${c.rss_bytes ? (c.rss_bytes / 2 ** 20).toFixed(0) + " MiB" : ""}</td><td>${esc(c.fatal_reason || "")}</td></tr>`;
  const rows = (st.children || []).map((c) => row(c, "data-child")).join("") +
    (st.spares || []).map((c) => row(c, "data-spare")).join("");
  return `<table id="children"><tr><th>slot</th><th>state</th><th>pid</th><th>task</th><th>done</th><th>RSS</th><th>why fatal</th></tr>${rows}</table>`;
}

function taskRows(tasks) {
  return tasks.map((t) => `<tr data-task="${esc(t.id)}"><td class="mono"><a href="#/task/${esc(t.id)}">${short(t.id)}</a></td>
    <td>${esc(t.kind)}</td><td class="state">${pill(t.state)}</td><td>${esc(t.attempts)}</td><td class="mono">${esc(t.child || "")}</td>
    <td>${esc(when(t.submitted_at))}</td><td>${esc(secs(t.duration_s))}</td>
    <td>${esc(t.error ? t.error.kind : "")}</td><td class="mono">${esc((t.prompt || (t.argv || []).join(" ") || "").slice(0, 80))}</td></tr>`).join("");
}
const TASK_HEAD = `<tr><th>id</th><th>kind</th><th>state</th><th>attempts</th><th>child</th><th>submitted</th><th>duration</th><th>error</th><th>what</th></tr>`;

// A task event patches its row at once (a new one is added), then the list is refetched (throttled).
function patchRow(table, e, refetch) {
  const parts = (e.topic || "").split("/");
  if (parts[0] !== "task") return;
  const id = parts[1], what = parts[2];
  let tr = table.querySelector(`tr[data-task="${CSS.escape(id)}"]`);
  if (!tr && what === "queued") {
    table.querySelector("tr").insertAdjacentHTML("afterend", taskRows([{ id, kind: e.kind, state: "queued", attempts: 0, submitted_at: e.ts }]));
    tr = table.querySelector(`tr[data-task="${CSS.escape(id)}"]`);
  }
  const state = what === "started" ? "running" : what === "finished" ? e.state : what === "retry" ? "queued" : null;
  if (tr && state) tr.querySelector(".state").innerHTML = pill(state);
  if (what !== "progress" && what !== "process") refetch();
}

async function overview() {
  const my = gen;  // a later route makes this page stale: it must not take over the stream
  main.innerHTML = `<h2>Overview</h2><div id="numbers"></div><h2>Last hour</h2><div id="charts"></div>
    <h2>Children</h2><div id="kids"></div><h2>Exclusive keys</h2><div id="keybox"></div><h2>Recent tasks</h2><table id="recent">${TASK_HEAD}</table>`;
  const paint = (d) => {
    $("#numbers").innerHTML = overviewNumbers(d);
    $("#charts").innerHTML = overviewCharts(d);
    $("#kids").innerHTML = childrenTable(d.status || {});
    $("#keybox").innerHTML = keysTable(d.keys);
  };
  const d = await api("/api/overview");
  if (my !== gen) return;
  paint(d); showHealth(d);
  $("#recent").innerHTML = TASK_HEAD + taskRows(d.recent || []);
  const refetch = throttled(async () => { const r = await api("/api/overview"); $("#recent").innerHTML = TASK_HEAD + taskRows(r.recent || []); });
  if (my !== gen) return;
  listen("", { snapshot: paint, event: (e) => patchRow($("#recent"), e, refetch) });
}

// ---- tasks ----------------------------------------------------------------------------------

function query() { const q = location.hash.split("?")[1] || ""; return new URLSearchParams(q); }

async function tasksPage() {
  const my = gen;  // a later route makes this page stale: it must not take over the stream
  const q = query();
  const opt = (vals, cur) => vals.map((v) => `<option ${v === cur ? "selected" : ""}>${esc(v)}</option>`).join("");
  main.innerHTML = `<h2>Tasks</h2><form class="filters" id="filters">
    <label>state<select name="state"><option value="">any</option>${opt(["queued", "blocked", "running", "succeeded", "failed", "timed_out", "cancelled"], q.get("state"))}</select></label>
    <label>kind<select name="kind"><option value="">any</option>${opt(["claude", "exec"], q.get("kind"))}</select></label>
    <label>batch<input name="batch" size="34" value="${esc(q.get("batch") || "")}"></label>
    <label>label<input name="label" size="14" value="${esc(q.get("label") || "")}"></label>
    <label>key<input name="key" size="14" value="${esc(q.get("key") || "")}"></label>
    <button>filter</button></form><div id="filter-na"></div><table id="tasks">${TASK_HEAD}</table>`;
  $("#filters").onsubmit = (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(ev.target)) if (v) p.set(k, v);
    location.hash = "#/tasks" + (p.toString() ? "?" + p : "");
  };
  const load = async () => {
    const d = await api("/api/tasks?" + q.toString());
    if (my !== gen) return;
    if (d.ok === false) { $("#filter-na").innerHTML = `<p class="na">${esc(d.error)}</p>`; return; }
    $("#tasks").innerHTML = TASK_HEAD + taskRows(d.tasks || []);
    $("#filter-na").innerHTML = "";
  };
  await load();
  const refetch = throttled(load);
  const filtered = ["state", "kind", "batch", "label", "key"].some((k) => q.get(k));
  if (my !== gen) return;
  listen("", { event: (e) => (filtered ? ((e.topic || "").startsWith("task/") && !e.topic.endsWith("/progress") && refetch()) : patchRow($("#tasks"), e, refetch)) });
}

// ---- one task ------------------------------------------------------------------------------

function timeline(t, seen) {
  const W = 640, H = 46;
  const t0 = t.submitted_at, t1 = t.finished_at || Date.now() / 1000;
  const span = Math.max(0.001, t1 - t0);
  const x = (v) => 10 + ((v - t0) / span) * (W - 20);
  let body = `<line x1="10" y1="20" x2="${W - 10}" y2="20" stroke="#ccc"/>`;
  const mark = (v, label, color) => { body += `<circle cx="${x(v)}" cy="20" r="4" fill="${color}"/><text x="${Math.min(x(v), W - 60)}" y="40">${esc(label)}</text>`; };
  for (const a of seen) {
    const end = a.end || t1;
    body += `<rect x="${x(a.start)}" y="14" width="${Math.max(2, x(end) - x(a.start))}" height="12" fill="${a.error ? "#ef9a9a" : "#90caf9"}"><title>attempt ${esc(a.n)}${a.error ? ": " + esc(a.error) : ""}</title></rect>`;
  }
  mark(t0, "submitted", "#777");
  if (t.started_at) mark(t.started_at, `attempt ${t.attempts} started`, "#1565c0");
  if (t.finished_at) mark(t.finished_at, t.state, FINAL.has(t.state) && t.state === "succeeded" ? "#2e7d32" : "#c62828");
  return `<svg id="timeline" viewBox="0 0 ${W} ${H}" width="100%">${body}</svg>`;
}

function fields(t) {
  const rows = [["id", t.id], ["kind", t.kind], ["state", pill(t.state)], ["attempts", t.attempts], ["child", t.child],
    ["exit code", t.exit_code], ["error", t.error ? `${t.error.kind}: ${t.error.message}` : ""],
    ["trace id", t.trace_id], ["span id", t.span_id], ["parent span id", t.parent_span_id],
    ["submitted", when(t.submitted_at)], ["started", when(t.started_at)], ["finished", when(t.finished_at)],
    ["duration", secs(t.duration_s)], ["priority", t.priority], ["session", t.session_id], ["turns", t.num_turns],
    ["tokens", t.usage ? `${t.usage.input_tokens} in / ${t.usage.output_tokens} out` : ""], ["cost", money(t.cost_usd)],
    ["batch", t.batch && `<a href="#/batch/${esc(t.batch)}">${esc(t.batch)}</a>`],
    ["key", t.key && `<a href="#/tasks?key=${encodeURIComponent(t.key)}">${esc(t.key)}</a>`],
    ["workflow", t.workflow && `<a href="#/workflow/${esc(t.workflow)}">${esc(t.workflow)}</a>`], ["step", t.step],
    ["prompt", t.prompt], ["argv", t.argv ? t.argv.join(" ") : ""]];
  const html = new Set(["state", "batch", "key", "workflow"]);  // built above with their values escaped
  return `<dl class="fields" id="fields">${rows.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => `<dt>${esc(k)}</dt><dd data-field="${esc(k)}">${html.has(k) ? v : esc(v)}</dd>`).join("")}</dl>`;
}

// A stored transcript line (`supctl logs`): a Claude task's stream-json lines read as text.
function claudeText(o) {
  if (o.type === "system") return `[system/${o.subtype}]${o.subtype === "init" ? ` model=${o.model}` : ""}`;
  if (o.type === "assistant" || o.type === "user") {
    const c = (o.message || {}).content;
    if (typeof c === "string") return `${o.type}: ${c}`;
    return (c || []).map((b) => b.type === "text" ? `${o.type}: ${b.text}` : b.type === "tool_use" ? `tool call ${b.name}: ${JSON.stringify(b.input || {})}`
      : b.type === "tool_result" ? `tool result${b.is_error ? " (error)" : ""}: ${typeof b.content === "string" ? b.content : JSON.stringify(b.content)}`.slice(0, 600) : `[${b.type}]`).join("\n");
  }
  if (o.type === "result") return `[result ${o.subtype}${o.is_error ? " error" : ""}] turns=${o.num_turns}: ${o.result || ""}`;
  return `[${o.type}]`;
}
function storedLine(l, kind) {
  let text = l.stream === "supd" ? `-- ${l.text}` : `${l.stream}: ${l.text}`;
  if (kind === "claude" && l.stream === "stdout" && l.text.startsWith("{")) {
    try { text = claudeText(JSON.parse(l.text)); } catch (e) { /* not JSON: the raw line */ }
  }
  return `<div class="line stored"><span class="ev">${esc(when(l.at))} #${esc(l.attempt)}</span> ${esc(text)}</div>`;
}

function diffBox(d, id) {
  if (!d || d.available === false) return `<p class="na">${esc(d ? d.reason : "")}</p>`;
  const size = d.head ? `${d.files_changed} file${d.files_changed === 1 ? "" : "s"} changed, +${d.insertions} −${d.deletions}` : esc(d.pending || "");
  return `<dl class="fields" id="worktree"><dt>repository</dt><dd>${esc(d.repo)}</dd><dt>branch</dt><dd data-field="branch">${esc(d.branch)}</dd>
    <dt>base</dt><dd>${esc(d.base || "")}</dd><dt>head</dt><dd>${esc(d.head || "")}</dd><dt>diff</dt><dd data-field="diffstat">${esc(size)}</dd>
    ${d.error ? `<dt>git</dt><dd>${esc(d.error)}</dd>` : ""}<dt>the diff</dt><dd><code>${esc(d.command)}</code></dd></dl>`;
}

// A worktree task's diff (`supctl diff`, the Diff verb): monospace, added and removed lines coloured.
function diffLine(t) {
  const c = t.startsWith("+++") || t.startsWith("---") || t.startsWith("diff ") || t.startsWith("index ") ? "meta"
    : t.startsWith("+") ? "add" : t.startsWith("-") ? "del" : t.startsWith("@@") ? "hunk" : t.startsWith("[supd: ") ? "cut" : "";
  return `<span${c ? ` class="${c}"` : ""}>${esc(t)}</span>`;
}
function diffText(r) {
  if (!r.ok) return `<p class="na" id="diff-error">${esc(r.error)}</p>`;
  if (!r.text) return `<p class="na" id="diff-empty">the branch has no changes against its base</p>`;
  const rows = r.text.replace(/\n$/, "").split("\n").map(diffLine).join("\n");
  const cut = r.left_out_bytes ? `<p class="na" id="diff-cut">cut: ${esc(r.left_out_bytes)} more bytes were left out (<code>git diff ${esc(r.base)} ${esc(r.head)}</code> in the repository prints all of it)</p>` : "";
  return `<pre class="diff" id="diff-text">${rows}</pre>${cut}`;
}

function line(l) { return `<div class="line"><span class="ev">${esc(when(l.ts))} ${esc(l.event)}</span> ${esc(l.summary)}</div>`; }

async function taskPage(id) {
  const my = gen;  // a later route makes this page stale: it must not take over the stream
  main.innerHTML = `<h2>Task <span class="mono">${esc(id)}</span></h2><div id="actions"></div><div id="tl"></div>
    <div id="body"></div><h2>Transcript <span class="na" id="transcript-note"></span></h2><div class="transcript" id="transcript"></div>
    <h2>Result</h2><div id="result"></div><h2>Diff</h2><div id="diff"></div><div id="diff-body"></div>`;
  $("#actions").innerHTML = `<button id="cancel" class="danger" disabled>Cancel</button>
    <button id="retry" disabled title="submit it again, as a new task (supctl retry)">Retry</button> <span id="said"></span>`;
  $("#retry").onclick = async () => {
    $("#retry").disabled = true;
    const r = await api(`/api/task/${encodeURIComponent(id)}/retry`, { method: "POST" });
    $("#said").innerHTML = r.ok ? `retried as ${r.ids.map((t) => `<a id="retried" href="#/task/${esc(t)}">${short(t)}</a>`).join(" ")}` : esc(r.error);
  };
  $("#cancel").onclick = async () => {
    $("#cancel").disabled = true;
    const r = await api(`/api/task/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    $("#said").textContent = r.ok ? r.message : r.error;
  };
  const attempts = [];
  let task = null, diffOf = null;
  const showDiff = async (d) => {  // once per head commit: a final task's diff does not change
    if (!d.diff || !d.diff.available || !d.diff.head || !FINAL.has(d.task.state) || diffOf === d.diff.head) return;
    diffOf = d.diff.head;
    const r = await api(`/api/task/${encodeURIComponent(id)}/diff`);
    if (my === gen) $("#diff-body").innerHTML = diffText(r);
  };
  const paint = (d) => {
    if (d.ok === false) { $("#body").innerHTML = `<p class="na">${esc(d.error)}</p>`; return; }
    task = d.task;
    $("#cancel").disabled = FINAL.has(task.state);
    $("#retry").disabled = !FINAL.has(task.state) || task.state === "succeeded" || !!$("#retried");
    $("#diff").innerHTML = diffBox(d.diff, id);
    $("#tl").innerHTML = timeline(task, attempts);
    $("#body").innerHTML = fields(task);
    $("#result").innerHTML = task.result || task.stderr ? `<pre class="result" id="result-text">${esc(task.result || "")}${task.stderr ? "\n--- stderr ---\n" + esc(task.stderr) : ""}</pre>` : `<p class="na">no output yet</p>`;
    showDiff(d);
  };
  const d = await api(`/api/task/${encodeURIComponent(id)}`);
  if (my !== gen) return;
  paint(d);
  if (d.ok !== false) {
    const st = d.stored_transcript || {};
    const stored = st.available ? (st.lines || []) : [];
    // the stored lines (every attempt's, as `supctl logs` prints them), then the live stream goes on
    $("#transcript").innerHTML = stored.length ? stored.map((l) => storedLine(l, d.task.kind)).join("") : (d.transcript || []).map(line).join("");
    $("#transcript-note").textContent = st.available ? `(stored${st.clipped ? ", its last lines" : ""}; live lines follow)` : `(live; ${st.reason || ""})`;
  }
  const refetch = throttled(async () => paint(await api(`/api/task/${encodeURIComponent(id)}?transcript=0`)));
  if (my !== gen) return;
  listen("task=" + encodeURIComponent(id), {
    event: (e) => {
      const what = (e.topic || "").split("/")[2];
      if (what === "progress") {
        const box = $("#transcript");
        box.insertAdjacentHTML("beforeend", line(e));
        box.scrollTop = box.scrollHeight;
        return;
      }
      if (what === "started") attempts.push({ n: e.attempt, start: e.ts });
      if ((what === "retry" || what === "finished") && attempts.length) Object.assign(attempts[attempts.length - 1], { end: e.ts, error: e.error });
      refetch();
    },
  });
}

// ---- batches, workflows, hosts --------------------------------------------------------------

const tokens = (b) => (b.input_tokens || 0) + (b.output_tokens || 0);
const BATCH_HEAD = `<tr><th>batch</th><th>label</th><th>state</th><th>summary</th><th>wall</th><th>tokens</th><th>cost</th><th>submitted</th></tr>`;

// One batch's summary line, as `supctl batch` says it: n succeeded / failed / running, …
function batchSummary(b) {
  const parts = [`${b.succeeded} succeeded`, `${b.failed} failed`];
  if (b.cancelled) parts.push(`${b.cancelled} cancelled`);
  parts.push(`${b.running} running`);
  if (b.queued) parts.push(`${b.queued} queued`);
  return `${parts.join(", ")} of ${b.tasks}${b.budget_spent ? " (cost cap reached)" : ""}`;
}

function batchRow(b) {
  return `<tr data-batch="${esc(b.id)}"><td class="mono"><a href="#/batch/${esc(b.id)}">${esc(b.id)}</a></td>
    <td>${b.label ? `<a href="#/batches?label=${encodeURIComponent(b.label)}">${esc(b.label)}</a>` : ""}</td>
    <td>${pill(b.state)}</td><td class="summary">${esc(batchSummary(b))}</td><td data-wall="${esc(b.wall_s)}">${esc(secs(b.wall_s))}</td>
    <td>${esc(tokens(b))}</td><td>${esc(money(b.cost_usd))}${b.max_cost_usd ? ` / ${esc(money(b.max_cost_usd))}` : ""}</td>
    <td>${esc(when(b.submitted_at))}</td></tr>`;
}

// Batch (and workflow) pages refetch on the events that can change them, at most once a second.
const changes = (e) => /^(task|batch|flow)\//.test(e.topic || "") && !/\/(progress|process)$/.test(e.topic || "");

async function batchesPage() {
  const my = gen;  // a later route makes this page stale: it must not take over the stream
  const q = query();
  main.innerHTML = `<h2>Batches</h2><form class="filters" id="filters">
    <label>label<input name="label" size="20" value="${esc(q.get("label") || "")}"></label><button>filter</button></form>
    <p class="na">Each submit is a batch (its id is its trace id); the newest of the recent tasks', with the daemon's summary.</p>
    <div id="said"></div><table id="batches">${BATCH_HEAD}</table>`;
  $("#filters").onsubmit = (ev) => {
    ev.preventDefault();
    const label = new FormData(ev.target).get("label");
    location.hash = "#/batches" + (label ? "?label=" + encodeURIComponent(label) : "");
  };
  const load = async () => {
    const d = await api("/api/batches?" + q.toString());
    if (my !== gen) return;
    if (d.ok === false) { $("#said").innerHTML = `<p class="na">${esc(d.error)}</p>`; return; }
    $("#batches").innerHTML = BATCH_HEAD + (d.batches || []).map(batchRow).join("");
  };
  await load();
  const refetch = throttled(load);
  if (my !== gen) return;
  listen("", { event: (e) => changes(e) && refetch() });
}

async function batchPage(id) {
  const my = gen;  // a later route makes this page stale: it must not take over the stream
  main.innerHTML = `<h2>Batch <span class="mono">${esc(id)}</span></h2><div id="summary"></div>
    <p><a href="#/tasks?batch=${encodeURIComponent(id)}">its tasks on the tasks page</a></p><table id="batch-tasks"></table>`;
  const load = async () => {
    const d = await api(`/api/batch/${encodeURIComponent(id)}`);
    if (my !== gen) return;
    if (d.ok === false) { $("#summary").innerHTML = `<p class="na">${esc(d.error)}</p>`; return; }
    const b = d.batch;
    $("#summary").innerHTML = `<table id="batch-summary">${BATCH_HEAD}${batchRow(b)}</table>`;
    $("#batch-tasks").innerHTML = `<tr><th>id</th><th>kind</th><th>state</th><th>key</th><th>duration</th><th>error</th><th>cost</th><th>what</th></tr>` +
      (d.tasks || []).map((t) => `<tr data-task="${esc(t.id)}"><td class="mono"><a href="#/task/${esc(t.id)}">${short(t.id)}</a></td>
        <td>${esc(t.kind)}</td><td class="state">${pill(t.state)}</td><td class="mono">${esc(t.key || "")}</td><td>${esc(secs(t.duration_s))}</td>
        <td>${esc(t.error || "")}</td><td>${esc(money(t.cost_usd))}</td><td class="mono">${esc(t.prompt || "")}</td></tr>`).join("");
  };
  await load();
  const refetch = throttled(load);
  if (my !== gen) return;
  listen("", { event: (e) => changes(e) && refetch() });
}

// The DAG of a workflow: steps in layers by their longest path from a root, edges as lines.
// steps: [{id, state, after: [ids]}] (a workflow's steps by name, from `flow status`).
function drawDag(steps) {
  const byId = new Map(steps.map((s) => [s.id, s]));
  const depth = new Map();
  const d = (s, seen = new Set()) => {
    if (depth.has(s.id)) return depth.get(s.id);
    if (seen.has(s.id)) return 0;
    seen.add(s.id);
    const v = Math.max(-1, ...(s.after || []).map((a) => (byId.has(a) ? d(byId.get(a), seen) : -1))) + 1;
    depth.set(s.id, v);
    return v;
  };
  steps.forEach((s) => d(s));
  const layers = [];
  steps.forEach((s) => (layers[depth.get(s.id)] = layers[depth.get(s.id)] || []).push(s));
  const pos = new Map(), BW = 150, BH = 30, GX = 50, GY = 18;
  layers.forEach((layer, i) => layer.forEach((s, j) => pos.set(s.id, { x: 10 + i * (BW + GX), y: 10 + j * (BH + GY) })));
  const W = 20 + layers.length * (BW + GX), H = 20 + Math.max(1, ...layers.map((l) => l.length)) * (BH + GY);
  const color = { succeeded: "#c8e6c9", failed: "#ffcdd2", running: "#bbdefb", cancelled: "#e1bee7", timed_out: "#ffcdd2",
    compensating: "#ffe0b2", compensated: "#fff9c4", undone: "#d7ccc8", undo_failed: "#ffab91", queued: "#e3f2fd", skipped: "#f5f5f5" };
  let svg = "";
  for (const s of steps) for (const a of s.after || []) {
    const p = pos.get(a), q = pos.get(s.id);
    if (p && q) svg += `<line x1="${p.x + BW}" y1="${p.y + BH / 2}" x2="${q.x}" y2="${q.y + BH / 2}" stroke="#999"/>`;
  }
  for (const s of steps) {
    const p = pos.get(s.id);
    svg += `<g data-step="${esc(s.id)}" data-state="${esc(s.state)}"><rect x="${p.x}" y="${p.y}" width="${BW}" height="${BH}" rx="5" fill="${color[s.state] || "#eee"}" stroke="#888"/>
      <text x="${p.x + 6}" y="${p.y + 19}">${esc(s.id)} · ${esc(s.state)}</text></g>`;
  }
  return `<svg class="dag" viewBox="0 0 ${W} ${H}" width="${W}">${svg}</svg>`;
}

const FLOW_HEAD = `<tr><th>workflow</th><th>name</th><th>state</th><th>steps succeeded</th><th>started</th><th>finished</th><th>cost</th><th>error</th></tr>`;

async function workflowsPage() {
  const my = gen;  // a later route makes this page stale: it must not take over the stream
  main.innerHTML = `<h2>Workflows</h2><div id="said"></div><table id="flows">${FLOW_HEAD}</table>`;
  const load = async () => {
    const d = await api("/api/workflows");
    if (my !== gen) return;
    if (d.ok === false) { $("#said").innerHTML = `<p class="na">${esc(d.error)}</p>`; return; }
    $("#flows").innerHTML = FLOW_HEAD + (d.workflows || []).map((w) => `<tr data-flow="${esc(w.id)}">
      <td class="mono"><a href="#/workflow/${esc(w.id)}">${esc(w.id)}</a></td><td>${esc(w.name)}</td><td class="state">${pill(w.state)}</td>
      <td>${esc(w.steps_succeeded)} / ${esc(w.steps)}</td><td>${esc(when(w.started_at))}</td><td>${esc(when(w.finished_at))}</td>
      <td>${esc(money(w.cost_usd))}</td><td>${esc(w.error ? w.error.kind : "")}</td></tr>`).join("");
    if (!(d.workflows || []).length) $("#said").innerHTML = `<p class="na">no workflow yet: <code>supctl flow run FILE</code> starts one</p>`;
  };
  await load();
  const refetch = throttled(load);
  if (my !== gen) return;
  listen("", { event: (e) => changes(e) && refetch() });
}

function stepsTable(w) {
  const rows = (w.steps || []).map((s) => `<tr data-step-row="${esc(s.name)}"><td class="mono">${esc(s.name)}</td><td class="state">${pill(s.state)}</td>
    <td class="mono">${esc((s.after || []).join(", "))}</td>
    <td class="mono">${(s.task_ids || []).map((t) => `<a href="#/task/${esc(t)}">${short(t)}</a>`).join(" ")}</td>
    <td>${esc(when(s.started_at))}</td><td>${esc(when(s.finished_at))}</td>
    <td>${esc(s.error ? `${s.error.kind}: ${s.error.message}` : "")}</td>
    <td class="mono">${esc(s.result == null ? "" : String(s.result).slice(0, 120))}</td></tr>`).join("");
  return `<table id="steps"><tr><th>step</th><th>state</th><th>after</th><th>tasks</th><th>started</th><th>finished</th><th>error</th><th>result</th></tr>${rows}</table>`;
}

function undoList(w) {
  const undo = w.undo || [];
  if (!undo.length) return `<p class="na" id="undo">no undo ran${w.state === "failed" || w.state === "cancelled" ? " (no succeeded step has one)" : ""}</p>`;
  return `<ol id="undo">${undo.map((u) => `<li data-undo="${esc(u.step)}"><span class="mono">${esc(u.step)}</span> ${pill(u.state)}
    ${u.task_id ? `<a class="mono" href="#/task/${esc(u.task_id)}">${short(u.task_id)}</a>` : ""} (${esc(u.attempts)} attempt${u.attempts === 1 ? "" : "s"})</li>`).join("")}</ol>`;
}

async function workflowPage(id) {
  const my = gen;  // a later route makes this page stale: it must not take over the stream
  main.innerHTML = `<h2>Workflow <span class="mono">${esc(id)}</span> <span id="flow-state"></span></h2>
    <div id="actions"><button id="flow-cancel" class="danger" disabled>Cancel workflow</button> <span id="said"></span></div>
    <div id="flow-fields"></div><h2>Steps</h2><div id="dag" class="dagbox"></div><div id="steps-box"></div>
    <h2>Undo (in the order it ran)</h2><div id="undo-box"></div>`;
  $("#flow-cancel").onclick = async () => {
    $("#flow-cancel").disabled = true;
    const r = await api(`/api/workflow/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    $("#said").textContent = r.ok ? r.message : r.error;
  };
  const load = async () => {
    const d = await api(`/api/workflow/${encodeURIComponent(id)}`);
    if (my !== gen) return;
    if (d.ok === false) { $("#flow-fields").innerHTML = `<p class="na">${esc(d.error)}</p>`; return; }
    const w = d.workflow;
    $("#flow-state").innerHTML = pill(w.state);
    $("#flow-cancel").disabled = w.state !== "running";
    $("#flow-fields").innerHTML = `<dl class="fields" id="fields"><dt>name</dt><dd>${esc(w.name)}</dd><dt>trace id</dt><dd>${esc(w.trace_id)}</dd>
      <dt>started</dt><dd>${esc(when(w.started_at))}</dd><dt>finished</dt><dd>${esc(when(w.finished_at))}</dd><dt>cost</dt><dd>${esc(money(w.cost_usd))}</dd>
      ${w.error ? `<dt>error</dt><dd>${esc(w.error.kind)}: ${esc(w.error.message)}</dd>` : ""}</dl>`;
    $("#dag").innerHTML = drawDag((w.steps || []).map((s) => ({ id: s.name, state: s.state, after: s.after || [] })));
    $("#steps-box").innerHTML = stepsTable(w);
    $("#undo-box").innerHTML = undoList(w);
  };
  await load();
  const refetch = throttled(load);
  if (my !== gen) return;
  listen("", { event: (e) => changes(e) && refetch() });
}

// The daemons sharing this one's journal (`supctl hosts`); this one is starred.
function fleetTable(f) {
  if (f.error) return `<p class="na">${esc(f.error)}</p>`;
  if (!f.host) return `<p class="na" id="fleet">one host (no shared journal): no fleet</p>`;
  return `<table id="fleet"><tr><th>host</th><th>pid</th><th>phase</th><th>heartbeat</th><th>children</th><th>running</th></tr>
    ${(f.hosts || []).map((r) => `<tr data-host="${esc(r.host)}"><td class="mono">${r.host === f.host ? "* " : ""}${esc(r.host)}</td><td class="mono">${esc(r.pid)}</td>
    <td>${esc(r.phase)}</td><td>${esc(Number(r.heartbeat_age_s).toFixed(1))} s ago</td><td>${esc(r.children)}</td><td>${esc(r.running)}</td></tr>`).join("")}</table>`;
}

async function hostsPage() {
  const my = gen;  // a later route makes this page stale: it must not take over the stream
  main.innerHTML = `<h2>Hosts</h2><div id="hosts"></div>`;
  const d = await api("/api/hosts");
  if (my !== gen) return;
  const t = d.this || {};
  $("#hosts").innerHTML = `<table id="this-host"><tr><th>this daemon</th><th>phase</th><th>state dir</th><th>children</th><th>queued</th><th>running</th></tr>
    <tr><td class="mono">pid ${esc(t.pid)}</td><td>${esc(t.phase)}</td><td class="mono">${esc(t.state_dir)}</td>
    <td>${esc((t.pool || {}).size)}</td><td>${esc((t.tasks || {}).queued)}</td><td>${esc((t.tasks || {}).running)}</td></tr></table>
    <h2>Fleet</h2>${fleetTable(d.fleet || {})}`;
}

// ---- routes ---------------------------------------------------------------------------------

let gen = 0;
async function route() {
  const my = ++gen;
  const path = location.hash.replace(/^#/, "").split("?")[0] || "/";
  const page = path.startsWith("/task/") ? "tasks" : path.startsWith("/batch/") ? "batches"
    : path.startsWith("/workflow/") ? "workflows" : path.slice(1) || "overview";
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("on", a.dataset.page === page));
  document.body.dataset.page = path.startsWith("/task/") ? "task" : path.startsWith("/batch/") ? "batch"
    : path.startsWith("/workflow/") ? "workflow" : page;
  delete document.body.dataset.ready;
  try {
    if (path.startsWith("/task/")) await taskPage(decodeURIComponent(path.slice(6)));
    else if (path.startsWith("/batch/")) await batchPage(decodeURIComponent(path.slice(7)));
    else if (path.startsWith("/workflow/")) await workflowPage(decodeURIComponent(path.slice(10)));
    else if (path === "/tasks") await tasksPage();
    else if (path === "/batches") await batchesPage();
    else if (path === "/workflows") await workflowsPage();
    else if (path === "/hosts") await hostsPage();
    else await overview();
    if (my === gen) document.body.dataset.ready = path;
  } catch (err) {
    if (my === gen && String(err.message) !== "401") main.innerHTML = `<p class="na">could not load: ${esc(err.message)}</p>`;
  }
}
window.addEventListener("hashchange", route);
route();
