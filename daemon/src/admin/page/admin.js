// The /admin page: polls the admin JSON API every 2 s with the operator's token and renders it.
// The token comes from `/admin#token=...` (then removed from the address bar) or the token field,
// and is kept in sessionStorage for this tab only. Everything is rendered with textContent.
// Charts are drawn with uPlot (vendor/uplot, served by the daemon itself). Times are UTC.
"use strict";

const REFRESH_MS = 2000;
const HISTORY_REFRESH_MS = 15000;
const THROUGHPUT_WINDOW_S = 300;
const TOKEN_KEY = "exai-admin-token";
const PAGE = 50;
const BULK_MAX = 1000;

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  lastCompleted: null, // { at: ms, counts: {queue: completed} } from the previous poll
  rates: {},
  throughput: { xs: [], series: {} }, // seconds; queue -> completed/s per sample
  historyAt: 0, // when the history was last read (ms), 0: read at the next refresh
  jobsOffset: 0,
  detailId: null,
  picked: new Set(), // job ids selected for a bulk action (of the shown queue and state)
  pageIds: [],
  holders: [], // [{ el, expiresAt }] for the lease countdowns
  charts: {},
  timer: null,
};

// `#token=...` gives the token, `#job=<id>` opens a job's details, `#queue=<name>` and
// `#state=<state>` choose the jobs shown; the fragment is then removed from the address bar (and
// so the token from the history).
function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token) {
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
  }
  state.detailId = params.get("job") || null;
  state.wantQueue = params.get("queue") || null;
  const jobState = params.get("state");
  const select = document.getElementById("jobs-state");
  if (jobState && [...select.options].some((o) => o.value === jobState)) select.value = jobState;
  if (location.hash) {
    history.replaceState(null, "", location.pathname + location.search);
  }
}

async function api(path, method = "GET", body = undefined) {
  const headers = {};
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch("/admin/api/" + path, init);
  let answer = null;
  try { answer = await res.json(); } catch (_) { answer = null; }
  if (!res.ok) {
    const err = new Error((answer && answer.error) || res.status + " " + res.statusText);
    err.status = res.status;
    throw err;
  }
  return answer;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "onclick") e.addEventListener("click", v);
    else if (k === "onchange") e.addEventListener("change", v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function num(field, value) {
  return el("td", { class: "num", "data-field": field }, value);
}

function fill(tbody, rows, empty, cols) {
  tbody.replaceChildren(...rows);
  if (rows.length === 0) tbody.append(el("tr", { class: "empty" }, el("td", { colspan: cols, class: "note" }, empty)));
}

// A date and time in UTC, to the second: `2026-12-07 15:48:02Z`.
function when(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  return isNaN(d) ? "" : d.toISOString().slice(0, 19).replace("T", " ") + "Z";
}

// An RFC 3339 time from the API, shown as `when` shows times.
function whenIso(text) {
  return text ? when(Date.parse(text)) : "";
}

function millis(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return ms + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  return Math.floor(ms / 60000) + " min " + Math.round((ms % 60000) / 1000) + " s";
}

function setStatus(text, error) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.classList.toggle("error", !!error);
}

// ----- charts --------------------------------------------------------------------------------

const COLOURS = ["#2463c7", "#1f7a3a", "#b3261e", "#8a5a00", "#6a3fb5", "#00838f"];

// The chart in the element `id`, made by `make(width)` the first time and kept; null when uPlot
// did not load (the page still works without charts).
function chart(id, make) {
  if (!window.uPlot) return null;
  if (!state.charts[id]) {
    const box = document.getElementById(id);
    state.charts[id] = make(Math.max(320, box.clientWidth || 600));
    box.append(state.charts[id].root);
  }
  return state.charts[id];
}

// Axes and scales in UTC, so the charts agree with the tables.
function utc(ts) {
  return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC");
}

// The time axis: `HH:MM` (with `:SS` when `seconds`), and the date (`MM-DD`) on the first tick
// and at midnight, all UTC.
function timeAxis(seconds) {
  return {
    space: 90,
    incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400],
    values: (_u, splits) => splits.map((ts, i) => {
      const iso = new Date(ts * 1000).toISOString();
      const t = iso.slice(11, seconds ? 19 : 16);
      return i === 0 || iso.slice(11, 16) === "00:00" ? iso.slice(5, 10) + " " + t : t;
    }),
  };
}

// The time series of a chart, shown in the legend as the tables show times.
const TIME_SERIES = { value: (_u, ts) => (ts === null || ts === undefined ? "–" : when(ts * 1000)) };

function resizeCharts() {
  for (const [id, u] of Object.entries(state.charts)) {
    const w = document.getElementById(id).clientWidth;
    if (w > 0) u.setSize({ width: w, height: u.height });
  }
}

// ----- queues and the live throughput --------------------------------------------------------

function updateRates(queues) {
  const now = Date.now();
  const counts = {};
  for (const [name, q] of Object.entries(queues)) counts[name] = q.completed;
  const prev = state.lastCompleted;
  if (prev && now > prev.at) {
    const t = state.throughput;
    t.xs.push(now / 1000);
    for (const name of Object.keys(counts)) {
      let rate = null;
      if (name in prev.counts) {
        const delta = Math.max(0, counts[name] - prev.counts[name]);
        rate = delta / ((now - prev.at) / 1000);
        state.rates[name] = rate;
      }
      (t.series[name] = t.series[name] || new Array(t.xs.length - 1).fill(null)).push(rate);
    }
    while (t.xs.length && t.xs[0] < now / 1000 - THROUGHPUT_WINDOW_S) {
      t.xs.shift();
      for (const s of Object.values(t.series)) s.shift();
    }
  }
  state.lastCompleted = { at: now, counts };
}

function renderThroughput(names) {
  const t = state.throughput;
  const u = chart("throughput-chart", (width) => new uPlot({
    width, height: 180, tzDate: utc,
    scales: { y: { range: (_u, _min, max) => [0, Math.max(1, max)] } },
    series: [TIME_SERIES, ...names.map((name, i) => ({
      label: name, stroke: COLOURS[i % COLOURS.length], width: 2, spanGaps: true, points: { show: false },
      value: (_u, v) => v === null || v === undefined ? "–" : v.toFixed(2) + "/s",
    }))],
    axes: [timeAxis(true), { label: "completed/s", size: 60 }],
  }, [[], ...names.map(() => [])]));
  if (!u) return;
  u.setData([t.xs, ...names.map((n) => t.series[n] || t.xs.map(() => null))]);
  document.getElementById("throughput-chart").dataset.samples = String(t.xs.length);
}

function renderQueues(report) {
  const queues = report.queues;
  updateRates(queues);
  const rows = Object.entries(queues).map(([name, q]) => {
    const rate = state.rates[name];
    const toggle = q.paused
      ? el("button", { type: "button", onclick: () => act(`queues/${encodeURIComponent(name)}/resume`, `resumed ${name}`) }, "resume")
      : el("button", { type: "button", onclick: () => act(`queues/${encodeURIComponent(name)}/pause`, `paused ${name}`) }, "pause");
    return el("tr", { "data-queue": name },
      el("td", {}, name),
      num("queued", q.queued), num("scheduled", q.scheduled), num("running", q.running),
      num("retrying", q.retrying), num("dead", q.dead), num("completed", q.completed),
      num("cancelled", q.cancelled),
      num("rate", rate === undefined ? "–" : rate.toFixed(2)),
      el("td", { "data-field": "paused", class: q.paused ? "paused" : "active" }, q.paused ? "paused" : "active"),
      el("td", {}, toggle));
  });
  fill(document.querySelector("#queues tbody"), rows, "no queues", 11);

  const names = Object.keys(queues);
  for (const id of ["jobs-queue", "history-queue", "search-queue"]) {
    const select = document.getElementById(id);
    if (select.options.length !== names.length) {
      const keep = select.value || (names.includes(state.wantQueue) ? state.wantQueue : null) ||
        (names.includes("tool_calls") ? "tool_calls" : names[0]);
      select.replaceChildren(...names.map((n) => el("option", {}, n)));
      if (names.includes(keep)) select.value = keep;
    }
  }
  renderThroughput(names);
  return queues;
}

// ----- history -------------------------------------------------------------------------------

async function renderHistory(force) {
  if (!force && Date.now() - state.historyAt < HISTORY_REFRESH_MS) return;
  const queue = document.getElementById("history-queue").value;
  const minutes = document.getElementById("history-minutes").value;
  if (!queue) return;
  const res = await api(`queues/${encodeURIComponent(queue)}/history?minutes=${minutes}`);
  state.historyAt = Date.now();
  const h = res.history;
  const xs = h.map((m) => m.ts);
  const pick = (f) => h.map(f);
  const counts = [xs, pick((m) => m.completed), pick((m) => m.failed), pick((m) => m.retried), pick((m) => m.dead)];
  const nz = (v) => (v === null || v === undefined ? null : v);
  const times = [xs, pick((m) => nz(m.wait_ms.p50)), pick((m) => nz(m.wait_ms.p95)),
    pick((m) => nz(m.run_ms.p50)), pick((m) => nz(m.run_ms.p95))];

  const bars = window.uPlot && uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.8, 12] }) : undefined;
  const cu = chart("history-counts", (width) => new uPlot({
    width, height: 200, tzDate: utc,
    series: [TIME_SERIES,
      { label: "completed", stroke: "#1f7a3a", fill: "rgba(31,122,58,0.25)", paths: bars, points: { show: false } },
      { label: "failed", stroke: "#b3261e", width: 2, points: { show: false } },
      { label: "retried", stroke: "#8a5a00", width: 1, dash: [4, 4], points: { show: false } },
      { label: "dead", stroke: "#6a1b9a", width: 2, points: { show: false } }],
    axes: [timeAxis(false), { label: "attempts", size: 60 }],
  }, counts));
  const tu = chart("history-times", (width) => new uPlot({
    width, height: 200, tzDate: utc,
    // Log scale; with nothing measured yet, 1 ms to 1 s.
    scales: { y: { distr: 3, range: (_u, min, max) => (min > 0 && max > 0 ? [min / 2, max * 2] : [1, 1000]) } },
    series: [TIME_SERIES,
      { label: "wait p50", stroke: "#90caf9", value: (_u, v) => millis(v) },
      { label: "wait p95", stroke: "#2463c7", width: 2, value: (_u, v) => millis(v) },
      { label: "run p50", stroke: "#a5d6a7", value: (_u, v) => millis(v) },
      { label: "run p95", stroke: "#1f7a3a", width: 2, value: (_u, v) => millis(v) }],
    axes: [timeAxis(false), { label: "ms", size: 60 }],
  }, times));
  if (cu) cu.setData(counts);
  // A log scale has no place for 0 ms: plotted as 1 ms (the tables and tooltips say "0 ms").
  if (tu) tu.setData(times.map((s, i) => (i === 0 ? s : s.map((v) => (v === null ? null : Math.max(1, v))))));

  const sum = (i) => counts[i].reduce((a, b) => a + b, 0);
  const box = document.getElementById("history-counts");
  box.dataset.queue = queue;
  box.dataset.points = String(xs.length);
  box.dataset.completed = String(sum(1));
  box.dataset.failed = String(sum(2));
  box.dataset.dead = String(sum(4));
  document.getElementById("history-times").dataset.points =
    String(times.slice(1).reduce((n, s) => n + s.filter((v) => v !== null).length, 0));
  document.getElementById("history-summary").textContent =
    `${queue}, ${xs.length} minutes from ${when(xs[0] * 1000)}: ${sum(1)} completed, ` +
    `${sum(2)} failed (${sum(3)} retried, ${sum(4)} dead)`;
}

// ----- workers -------------------------------------------------------------------------------

async function renderWorkers() {
  const res = await api("workers");
  const rows = res.workers.map((w) => el("tr", { "data-worker-id": w.id, "data-pid": w.pid },
    el("td", { class: "id" }, w.id), el("td", { "data-field": "host" }, w.host), num("pid", w.pid),
    el("td", { "data-field": "queues" }, w.queues.join(", ")), num("concurrency", w.concurrency),
    num("running", w.running), el("td", {}, whenIso(w.started_at)),
    el("td", { "data-field": "last_seen" }, whenIso(w.last_seen))));
  fill(document.querySelector("#workers tbody"), rows, "no live workers", 8);
}

// ----- jobs and bulk actions -----------------------------------------------------------------

function lastError(job) {
  if (job.dead_reason) return job.dead_reason;
  const errors = job.errors || [];
  return errors.length ? errors[errors.length - 1].error : "";
}

function jobsView() {
  return {
    queue: document.getElementById("jobs-queue").value,
    state: document.getElementById("jobs-state").value,
  };
}

function renderPicked() {
  const { state: jobState } = jobsView();
  const n = state.picked.size;
  document.getElementById("bulk-picked").textContent = n ? `${n} selected` : "none selected";
  document.getElementById("bulk-retry").disabled = n === 0 || jobState !== "dead";
  document.getElementById("bulk-delete").disabled = n === 0;
  document.getElementById("bulk-delete-all").textContent =
    jobState === "dead" ? "delete all dead…" : `delete all ${jobState}…`;
  document.getElementById("jobs-pick-all").checked =
    state.pageIds.length > 0 && state.pageIds.every((id) => state.picked.has(id));
}

async function renderJobs() {
  const { queue, state: jobState } = jobsView();
  if (!queue) return;
  const page = await api(`queues/${encodeURIComponent(queue)}/jobs?state=${jobState}&limit=${PAGE}&offset=${state.jobsOffset}`);
  state.pageIds = page.jobs.map((j) => j.id);
  const rows = page.jobs.map((job) => {
    const actions = el("td", {});
    if (job.state === "dead") {
      actions.append(el("button", { type: "button", class: "retry", "data-job-id": job.id,
        onclick: (e) => { e.stopPropagation(); act(`jobs/${encodeURIComponent(job.id)}/retry`, `retried ${job.id}`); } }, "retry"));
    } else if (!["completed", "cancelled"].includes(job.state)) {
      actions.append(el("button", { type: "button", class: "kill", "data-job-id": job.id,
        onclick: (e) => { e.stopPropagation(); act(`jobs/${encodeURIComponent(job.id)}/kill`, `killed ${job.id}`); } }, "kill"));
    }
    const pick = el("input", { type: "checkbox", class: "pick", "data-job-id": job.id, checked: state.picked.has(job.id),
      onclick: (e) => e.stopPropagation(),
      onchange: (e) => { if (e.target.checked) state.picked.add(job.id); else state.picked.delete(job.id); renderPicked(); } });
    return el("tr", { class: "clickable" + (job.id === state.detailId ? " selected" : ""), "data-job-id": job.id,
      onclick: () => showJob(job.id) },
      el("td", {}, pick),
      el("td", { class: "id" }, job.id), el("td", {}, job.state),
      num("attempts", `${job.attempts}/${job.max_attempts}`),
      el("td", {}, when(job.enqueued_at_ms)), el("td", {}, when(job.finished_at_ms)),
      el("td", {}, job.worker || ""),
      el("td", { class: "err" }, lastError(job)), actions);
  });
  fill(document.querySelector("#jobs tbody"), rows, `no ${jobState} jobs in ${queue}`, 9);
  document.getElementById("jobs-page").textContent =
    page.jobs.length ? `${state.jobsOffset + 1}–${state.jobsOffset + page.jobs.length}` : "";
  document.getElementById("jobs-prev").disabled = state.jobsOffset === 0;
  document.getElementById("jobs-next").disabled = page.jobs.length < PAGE;
  renderPicked();
}

// A bulk action, after the operator confirmed what it does; its counts go to the status line.
async function bulk(path, body, question, done) {
  if (!window.confirm(question)) return;
  try {
    const res = await api(path, "POST", body);
    setStatus(done(res));
    state.picked.clear();
  } catch (e) {
    setStatus(`${path}: ${e.message}`, true);
  }
  refresh();
}

function bulkRetry() {
  const { queue } = jobsView();
  const ids = [...state.picked];
  bulk(`queues/${encodeURIComponent(queue)}/dead/retry`, { ids },
    `Retry ${ids.length} dead job(s) of ${queue}?`,
    (r) => `retried ${r.retried} dead job(s) of ${queue}` + (r.skipped ? ` (${r.skipped} no longer dead)` : ""));
}

function bulkDelete(all) {
  const { queue, state: jobState } = jobsView();
  const ids = [...state.picked];
  const question = all
    ? `Delete every ${jobState} job of ${queue} (up to ${BULK_MAX} at a time)? This cannot be undone.`
    : `Delete ${ids.length} ${jobState} job(s) of ${queue}? This cannot be undone.`;
  bulk(`queues/${encodeURIComponent(queue)}/jobs/delete`, all ? { state: jobState } : { state: jobState, ids },
    question,
    (r) => `deleted ${r.deleted} ${jobState} job(s) of ${queue}` +
      (r.other_state ? `, ${r.other_state} left alone (no longer ${jobState})` : "") + (r.more ? "; more left" : ""));
}

function retryAllDead(queue) {
  bulk(`queues/${encodeURIComponent(queue)}/dead/retry`, undefined,
    `Retry every dead job of ${queue} (up to ${BULK_MAX} at a time)?`,
    (r) => `retried ${r.retried} dead job(s) of ${queue}` + (r.more ? "; more left" : ""));
}

async function showJob(id) {
  state.detailId = id;
  const box = document.getElementById("job-detail");
  document.getElementById("job-detail-id").textContent = id;
  box.hidden = false;
  try {
    const res = await api(`jobs/${encodeURIComponent(id)}`);
    document.getElementById("job-detail-body").textContent = JSON.stringify(res.job, null, 2);
  } catch (e) {
    document.getElementById("job-detail-body").textContent = e.message;
  }
}

async function renderDead(queues) {
  const rows = [];
  for (const [name, q] of Object.entries(queues)) {
    if (!q.dead) continue;
    const page = await api(`queues/${encodeURIComponent(name)}/jobs?state=dead&limit=${PAGE}`);
    for (const job of page.jobs) {
      rows.push(el("tr", { class: "clickable", "data-job-id": job.id, "data-queue": name, onclick: () => showJob(job.id) },
        el("td", {}, name), el("td", { class: "id" }, job.id),
        num("attempts", `${job.attempts}/${job.max_attempts}`),
        el("td", {}, when(job.finished_at_ms)), el("td", { class: "err" }, lastError(job)),
        el("td", {}, el("button", { type: "button", class: "retry", "data-job-id": job.id,
          onclick: (e) => { e.stopPropagation(); act(`jobs/${encodeURIComponent(job.id)}/retry`, `retried ${job.id}`); } }, "retry"))));
    }
    rows.push(el("tr", { class: "bulk-row", "data-queue": name },
      el("td", { colspan: 5, class: "note" }, `${q.dead} dead in ${name}`),
      el("td", {}, el("button", { type: "button", class: "retry retry-all", "data-queue": name,
        onclick: () => retryAllDead(name) }, "retry all…"))));
  }
  fill(document.querySelector("#dead tbody"), rows, "no dead jobs", 6);
}

// ----- search --------------------------------------------------------------------------------

async function search(e) {
  if (e) e.preventDefault();
  const queue = document.getElementById("search-queue").value;
  const text = document.getElementById("search-text").value;
  const jobState = document.getElementById("search-state").value;
  const scan = document.getElementById("search-scan").value || "1000";
  const summary = document.getElementById("search-summary");
  const tbody = document.querySelector("#search tbody");
  if (!text) { summary.textContent = "type a job id or some payload text"; return; }
  const params = new URLSearchParams({ q: text, scan });
  if (jobState) params.set("state", jobState);
  try {
    const res = await api(`queues/${encodeURIComponent(queue)}/search?${params}`);
    const rows = res.jobs.map((job, i) => el("tr", { class: "clickable", "data-job-id": job.id, onclick: () => showJob(job.id) },
      el("td", { class: "id" }, job.id + (i === 0 && res.by_id ? " (id)" : "")), el("td", {}, job.state),
      num("attempts", `${job.attempts}/${job.max_attempts}`), el("td", {}, when(job.enqueued_at_ms)),
      el("td", { class: "payload" }, JSON.stringify(job.payload).slice(0, 160))));
    fill(tbody, rows, "nothing found", 5);
    summary.classList.remove("error");
    summary.textContent = `${res.jobs.length} found; ${res.scanned} entries scanned` +
      (res.cut ? " — the scan stopped before the end: more may match (raise scan, or name a state)" : ", every entry read");
    summary.dataset.scanned = String(res.scanned);
  } catch (err) {
    if (err.status === 401) throw err;
    tbody.replaceChildren();
    summary.textContent = err.message;
    summary.classList.add("error");
  }
}

// ----- semaphores ----------------------------------------------------------------------------

function renderSemaphores(report) {
  const rows = [];
  const now = performance.now();
  state.holders = [];
  for (const [name, s] of Object.entries(report.semaphores)) {
    const head = [el("td", {}, name), num("in_use", s.in_use), num("limit", s.limit === null ? "–" : s.limit),
      num("effective_limit", s.effective_limit == null ? "–" : s.effective_limit)];
    if (s.holders.length === 0) {
      rows.push(el("tr", { "data-semaphore": name }, ...head, el("td", { colspan: 4, class: "note" }, "no holders")));
      continue;
    }
    s.holders.forEach((h, i) => {
      const countdown = el("td", { class: "num", "data-field": "expires_in" });
      state.holders.push({ el: countdown, expiresAt: now + h.expires_in_ms });
      const cells = i === 0 ? head : [el("td"), el("td"), el("td"), el("td")];
      rows.push(el("tr", { "data-semaphore": name, "data-lease": h.lease, class: "holder" }, ...cells,
        el("td", { "data-field": "holder" }, h.holder || ""),
        el("td", { class: "id", "data-field": "job_id" }, h.job_id || ""),
        el("td", { class: "id", title: h.lease }, shortLease(h.lease)), countdown));
    });
  }
  fill(document.querySelector("#semaphores tbody"), rows, "no semaphores", 8);
  tickCountdowns();
}

// A lease token is `<job>:<attempt>:<random>`; the random part's tail tells leases apart.
function shortLease(lease) {
  return lease.length > 12 ? "…" + lease.slice(-8) : lease;
}

function tickCountdowns() {
  const now = performance.now();
  for (const h of state.holders) {
    const left = Math.max(0, h.expiresAt - now);
    h.el.textContent = (left / 1000).toFixed(1) + " s";
  }
}

// ----- storage and cleanup -------------------------------------------------------------------

async function renderStorage() {
  const note = document.getElementById("storage-note");
  const tbody = document.querySelector("#storage tbody");
  try {
    const res = await api("storage");
    tbody.replaceChildren(...Object.entries(res.statuses).map(([status, n]) =>
      el("tr", { "data-status": status }, el("td", {}, status), num("count", n))));
    tbody.append(el("tr", {}, el("th", {}, "total"), num("total", res.total)));
    note.textContent = "";
    note.classList.remove("error");
  } catch (e) {
    if (e.status === 401) throw e;
    tbody.replaceChildren();
    note.textContent = e.message;
    note.classList.add("error");
  }
}

function bytes(n) {
  if (typeof n !== "number") return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

async function renderCleanup() {
  const res = await api("cleanup");
  const summary = document.getElementById("cleanup-summary");
  const tbody = document.querySelector("#cleanup tbody");
  // As the worker stores it: {stored_at, tick (0: run by hand), report: {dry_run, sweeps, …}}.
  const stored = res.report;
  if (!stored) {
    summary.textContent = "no cleanup has run yet";
    summary.classList.remove("error");
    tbody.replaceChildren();
    return;
  }
  const report = stored.report || {};
  const sweeps = report.sweeps || {};
  const failed = Object.entries(sweeps).filter(([, s]) => (s.errors || []).length > 0);
  const errors = failed.reduce((n, [, s]) => n + s.errors.length, 0);
  const finished = report.finished_at || stored.stored_at;
  let text = `finished ${finished ? whenIso(finished) : "at an unknown time"}` +
    (stored.tick ? ` (cron tick ${stored.tick})` : " (run by hand)");
  // A sweep that failed is said first; a dry run removes nothing by design, which is said only
  // when every sweep ran.
  if (errors) text += ` — ${errors} error${errors > 1 ? "s" : ""} in ${failed.map(([n]) => n).join(", ")}`;
  if (report.dry_run) text += errors ? " — dry run" : " — dry run: the plan only, nothing removed";
  summary.textContent = text;
  summary.classList.toggle("error", errors > 0);
  summary.dataset.errors = String(errors);
  // A sweep whose provider is not configured did not run: its report says why (`skipped`).
  tbody.replaceChildren(...Object.entries(sweeps).map(([name, s]) => {
    const errs = s.errors || [];
    const errorCell = el("td", { class: errs.length ? "err" : "note", "data-field": "errors" },
      errs.length ? el("ul", {}, ...errs.map((e) => el("li", {}, e))) : "none");
    return s.skipped
      ? el("tr", { "data-sweep": name }, el("td", {}, name),
        el("td", { colspan: 3, class: "note", "data-field": "skipped" }, `skipped: ${s.skipped}`), errorCell)
      : el("tr", { "data-sweep": name, class: errs.length ? "failed" : undefined }, el("td", {}, name),
        num("found", s.found), num("removed", s.removed),
        el("td", { class: "num", "data-field": "bytes" }, bytes(s.bytes)), errorCell);
  }));
}

// ----- usage ---------------------------------------------------------------------------------

// The token sums per session, tool and model (GET usage), the most recently used first.
async function renderUsage() {
  const res = await api("usage?limit=20");
  const summary = document.getElementById("usage-summary");
  const tbody = document.querySelector("#usage tbody");
  const t = res.total;
  summary.textContent = `${t.calls} calls, ${t.total_tokens} tokens (${t.prompt_tokens} prompt, ` +
    `${t.cached_tokens} cached, ${t.completion_tokens} completion); sums kept ` +
    `${res.retention_secs} s after their last call`;
  const rows = [];
  for (const [by, lines] of [["session", res.sessions], ["tool", res.tools], ["model", res.models]]) {
    for (const l of lines) {
      rows.push(el("tr", { "data-by": by, "data-name": l.name },
        el("td", {}, by), el("td", {}, l.provider ? `${l.name} (${l.provider})` : l.name),
        num("calls", l.calls), num("prompt_tokens", l.prompt_tokens),
        num("cached_tokens", l.cached_tokens), num("completion_tokens", l.completion_tokens),
        num("total_tokens", l.total_tokens), el("td", {}, when(l.last_ms))));
    }
  }
  fill(tbody, rows, "no usage recorded", 8);
}

// ----- the loop ------------------------------------------------------------------------------

async function act(path, done) {
  try {
    await api(path, "POST");
    setStatus(done);
  } catch (e) {
    setStatus(`${path}: ${e.message}`, true);
  }
  refresh();
}

let running = false;

async function refresh() {
  clearTimeout(state.timer);
  state.timer = setTimeout(refresh, REFRESH_MS);
  if (running) return;
  running = true;
  try {
    const [queues, semaphores] = await Promise.all([api("queues"), api("semaphores")]);
    const byName = renderQueues(queues);
    renderSemaphores(semaphores);
    await Promise.all([renderJobs(), renderDead(byName), renderWorkers(), renderHistory(false),
      renderStorage(), renderCleanup(), renderUsage()]);
    if (state.detailId) await showJob(state.detailId);
    setStatus("updated " + when(Date.now()));
    document.body.dataset.loaded = "true";
  } catch (e) {
    if (e.status === 401) setStatus("unauthorized: enter the admin token (EXAI_ADMIN_TOKEN)", true);
    else setStatus("refresh failed: " + e.message, true);
  } finally {
    running = false;
  }
}

function init() {
  readHash();
  const input = document.getElementById("token");
  input.value = state.token;
  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = input.value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    state.historyAt = 0;
    refresh();
  });
  const resetPage = () => { state.jobsOffset = 0; state.picked.clear(); refresh(); };
  document.getElementById("jobs-queue").addEventListener("change", resetPage);
  document.getElementById("jobs-state").addEventListener("change", resetPage);
  document.getElementById("jobs-prev").addEventListener("click", () => {
    state.jobsOffset = Math.max(0, state.jobsOffset - PAGE);
    refresh();
  });
  document.getElementById("jobs-next").addEventListener("click", () => {
    state.jobsOffset += PAGE;
    refresh();
  });
  document.getElementById("jobs-pick-all").addEventListener("change", (e) => {
    for (const id of state.pageIds) {
      if (e.target.checked) state.picked.add(id); else state.picked.delete(id);
    }
    for (const box of document.querySelectorAll("#jobs input.pick")) box.checked = e.target.checked;
    renderPicked();
  });
  document.getElementById("bulk-retry").addEventListener("click", bulkRetry);
  document.getElementById("bulk-delete").addEventListener("click", () => bulkDelete(false));
  document.getElementById("bulk-delete-all").addEventListener("click", () => bulkDelete(true));
  for (const id of ["history-queue", "history-minutes"]) {
    document.getElementById(id).addEventListener("change", () => renderHistory(true).catch((e) => setStatus(e.message, true)));
  }
  document.getElementById("search-form").addEventListener("submit", (e) => search(e).catch((err) => setStatus(err.message, true)));
  document.getElementById("job-detail-close").addEventListener("click", () => {
    state.detailId = null;
    document.getElementById("job-detail").hidden = true;
  });
  window.addEventListener("resize", resizeCharts);
  setInterval(tickCountdowns, 250);
  refresh();
}

init();
