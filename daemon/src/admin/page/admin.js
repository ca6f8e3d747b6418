// The /admin page: polls the admin JSON API every 2 s with the operator's token and renders it.
// The token comes from `/admin#token=...` (then removed from the address bar) or the token field,
// and is kept in sessionStorage for this tab only. Everything is rendered with textContent.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "exai-admin-token";
const PAGE = 50;

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  lastCompleted: null, // { at: ms, counts: {queue: completed} } from the previous poll
  rates: {},
  jobsOffset: 0,
  detailId: null,
  holders: [], // [{ el, expiresAt }] for the lease countdowns
  timer: null,
};

// `#token=...` gives the token, `#job=<id>` opens a job's details; the token is then removed
// from the address bar (and so from the history).
function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token) {
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
  }
  state.detailId = params.get("job") || null;
  if (token || state.detailId) {
    history.replaceState(null, "", location.pathname + location.search);
  }
}

async function api(path, method = "GET") {
  const headers = {};
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  const res = await fetch("/admin/api/" + path, { method, headers, cache: "no-store" });
  let body = null;
  try { body = await res.json(); } catch (_) { body = null; }
  if (!res.ok) {
    const err = new Error((body && body.error) || res.status + " " + res.statusText);
    err.status = res.status;
    throw err;
  }
  return body;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v;
    else if (k === "onclick") e.addEventListener("click", v);
    else e.setAttribute(k, v);
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

function time(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : "";
}

function setStatus(text, error) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.classList.toggle("error", !!error);
}

// ----- queues --------------------------------------------------------------------------------

function updateRates(queues) {
  const now = Date.now();
  const counts = {};
  for (const [name, q] of Object.entries(queues)) counts[name] = q.completed;
  const prev = state.lastCompleted;
  if (prev && now > prev.at) {
    for (const name of Object.keys(counts)) {
      if (name in prev.counts) {
        const delta = Math.max(0, counts[name] - prev.counts[name]);
        state.rates[name] = delta / ((now - prev.at) / 1000);
      }
    }
  }
  state.lastCompleted = { at: now, counts };
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

  const select = document.getElementById("jobs-queue");
  const names = Object.keys(queues);
  if (select.options.length !== names.length) {
    const keep = select.value || (names.includes("tool_calls") ? "tool_calls" : names[0]);
    select.replaceChildren(...names.map((n) => el("option", {}, n)));
    if (names.includes(keep)) select.value = keep;
  }
  return queues;
}

// ----- jobs ----------------------------------------------------------------------------------

function lastError(job) {
  if (job.dead_reason) return job.dead_reason;
  const errors = job.errors || [];
  return errors.length ? errors[errors.length - 1].error : "";
}

async function renderJobs() {
  const queue = document.getElementById("jobs-queue").value;
  const jobState = document.getElementById("jobs-state").value;
  if (!queue) return;
  const page = await api(`queues/${encodeURIComponent(queue)}/jobs?state=${jobState}&limit=${PAGE}&offset=${state.jobsOffset}`);
  const rows = page.jobs.map((job) => {
    const actions = el("td", {});
    if (job.state === "dead") {
      actions.append(el("button", { type: "button", class: "retry", "data-job-id": job.id,
        onclick: (e) => { e.stopPropagation(); act(`jobs/${encodeURIComponent(job.id)}/retry`, `retried ${job.id}`); } }, "retry"));
    } else if (!["completed", "cancelled"].includes(job.state)) {
      actions.append(el("button", { type: "button", class: "kill", "data-job-id": job.id,
        onclick: (e) => { e.stopPropagation(); act(`jobs/${encodeURIComponent(job.id)}/kill`, `killed ${job.id}`); } }, "kill"));
    }
    return el("tr", { class: "clickable" + (job.id === state.detailId ? " selected" : ""), "data-job-id": job.id,
      onclick: () => showJob(job.id) },
      el("td", { class: "id" }, job.id), el("td", {}, job.state),
      num("attempts", `${job.attempts}/${job.max_attempts}`),
      el("td", {}, time(job.enqueued_at_ms)), el("td", {}, job.worker || ""),
      el("td", { class: "err" }, lastError(job)), actions);
  });
  fill(document.querySelector("#jobs tbody"), rows, `no ${jobState} jobs in ${queue}`, 7);
  document.getElementById("jobs-page").textContent =
    page.jobs.length ? `${state.jobsOffset + 1}–${state.jobsOffset + page.jobs.length}` : "";
  document.getElementById("jobs-prev").disabled = state.jobsOffset === 0;
  document.getElementById("jobs-next").disabled = page.jobs.length < PAGE;
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
        el("td", {}, time(job.finished_at_ms)), el("td", { class: "err" }, lastError(job)),
        el("td", {}, el("button", { type: "button", class: "retry", "data-job-id": job.id,
          onclick: (e) => { e.stopPropagation(); act(`jobs/${encodeURIComponent(job.id)}/retry`, `retried ${job.id}`); } }, "retry"))));
    }
  }
  fill(document.querySelector("#dead tbody"), rows, "no dead jobs", 6);
}

// ----- semaphores ----------------------------------------------------------------------------

function renderSemaphores(report) {
  const rows = [];
  const now = performance.now();
  state.holders = [];
  for (const [name, s] of Object.entries(report.semaphores)) {
    const head = [el("td", {}, name), num("in_use", s.in_use), num("limit", s.limit === null ? "–" : s.limit)];
    if (s.holders.length === 0) {
      rows.push(el("tr", { "data-semaphore": name }, ...head, el("td", { colspan: 4, class: "note" }, "no holders")));
      continue;
    }
    s.holders.forEach((h, i) => {
      const countdown = el("td", { class: "num", "data-field": "expires_in" });
      state.holders.push({ el: countdown, expiresAt: now + h.expires_in_ms });
      const cells = i === 0 ? head : [el("td"), el("td"), el("td")];
      rows.push(el("tr", { "data-semaphore": name, "data-lease": h.lease, class: "holder" }, ...cells,
        el("td", { "data-field": "holder" }, h.holder || ""),
        el("td", { class: "id", "data-field": "job_id" }, h.job_id || ""),
        el("td", { class: "id", title: h.lease }, shortLease(h.lease)), countdown));
    });
  }
  fill(document.querySelector("#semaphores tbody"), rows, "no semaphores", 7);
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
    tbody.replaceChildren();
    return;
  }
  const report = stored.report || {};
  const finished = report.finished_at || stored.stored_at;
  const when = finished ? new Date(finished).toLocaleString() : "unknown time";
  summary.textContent = `finished ${when}` +
    (stored.tick ? ` (cron tick ${stored.tick})` : " (run by hand)") +
    (report.dry_run ? " — dry run: nothing removed" : "");
  const sweeps = report.sweeps || {};
  // A sweep whose provider is not configured did not run: its report says why (`skipped`).
  tbody.replaceChildren(...Object.entries(sweeps).map(([name, s]) => s.skipped
    ? el("tr", { "data-sweep": name }, el("td", {}, name),
      el("td", { colspan: 3, class: "note", "data-field": "skipped" }, `skipped: ${s.skipped}`))
    : el("tr", { "data-sweep": name }, el("td", {}, name), num("found", s.found), num("removed", s.removed),
      el("td", { class: "num", "data-field": "bytes" }, bytes(s.bytes)))));
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
    await Promise.all([renderJobs(), renderDead(byName), renderStorage(), renderCleanup()]);
    if (state.detailId) await showJob(state.detailId);
    setStatus("updated " + new Date().toLocaleTimeString());
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
    refresh();
  });
  const resetPage = () => { state.jobsOffset = 0; refresh(); };
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
  document.getElementById("job-detail-close").addEventListener("click", () => {
    state.detailId = null;
    document.getElementById("job-detail").hidden = true;
  });
  setInterval(tickCountdowns, 250);
  refresh();
}

init();
