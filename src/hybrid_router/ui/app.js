// The dashboard: reads the router's JSON API and follows its event streams with the
// caller's key. Everything shown is built as DOM text nodes, never as markup: prompts,
// answers and errors are user text.
"use strict";

// The router's root, wherever the page is mounted (/ui/ -> /).
const API = new URL("../", location.href);
const KEY_ITEM = "hybrid-router.api-key";
const REFRESH_GAP_MS = 500; // at most two rounds of reads a second however many events arrive
const POLL_MS = 1000; // without the all-jobs stream (not an admin), as `hybrid-router watch`
const RECONNECT_MS = 1500;
const JOBS_SHOWN = 50;
const FAILED_JOBS_SHOWN = 5;
const FAILURES_SHOWN = 10;
const EXECUTIONS_SHOWN = 500; // of a job's, in queue order (the counts cover them all)
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

const view = {
  key: sessionStorage.getItem(KEY_ITEM),
  me: null,
  queues: null,
  queuesAt: 0, // performance.now() when `queues` arrived: the countdowns run from there
  jobs: [],
  selected: null, // {job_id, owner}
  job: null,
  failedJobs: new Map(), // "owner/id" -> failed executions (finished jobs never change)
  failures: [],
  streams: [],
  jobStream: null,
  timers: false,
};

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ DOM, safely

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "style") Object.assign(node.style, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child)); // strings become text nodes
  }
  return node;
}

function fill(parent, ...children) {
  parent.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

function badge(text) {
  return el("span", { class: `badge ${text}` }, text);
}

// GPUs as a bar: busy, then warm, then free, against `limit`.
function gpuBar(busy, warm, limit, label) {
  const share = (n) => `${limit > 0 ? Math.min(100, (100 * n) / limit) : 0}%`;
  return el(
    "div",
    { class: "bar", role: "img", "aria-label": label, title: label },
    el("span", { class: "busy", style: { width: share(busy) } }),
    el("span", { class: "warm", style: { width: share(warm) } }),
  );
}

function gpuLegend(busy, warm, limit, what) {
  const free = Math.max(0, limit - busy - warm);
  return [
    el("span", { class: "swatch busy" }), `${busy} busy`,
    el("span", { class: "swatch warm" }), `${warm} warm`,
    el("span", { class: "swatch free" }), `${free} free`,
    ` of ${limit} GPUs${what}`,
  ];
}

function seconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 10) return `${Math.max(0, s).toFixed(1)} s`;
  const whole = Math.max(0, Math.round(s));
  if (whole < 60) return `${whole} s`;
  const m = Math.floor(whole / 60);
  return `${m}m ${String(whole % 60).padStart(2, "0")}s`;
}

function clock(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "";
}

// ------------------------------------------------------------------ the API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(accept) {
  const h = { Accept: accept };
  if (view.key) h.Authorization = `Bearer ${view.key}`;
  return h;
}

async function failure(response) {
  let code = `HTTP_${response.status}`;
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    code = body.code || code;
    message = body.message || message;
  } catch {
    // not JSON: keep the status
  }
  return new ApiError(response.status, code, message);
}

async function api(path, { method = "GET", query } = {}) {
  const url = new URL(path, API);
  for (const [k, v] of Object.entries(query || {})) if (v) url.searchParams.set(k, v);
  const response = await fetch(url, { method, headers: headers("application/json") });
  if (!response.ok) {
    const error = await failure(response);
    if (error.status === 401) askForKey(error.message);
    throw error;
  }
  return response.json();
}

// Server-sent events over fetch(): EventSource cannot send the key in a header.
async function follow(path, query, onEvent, signal, onOpen) {
  const url = new URL(path, API);
  for (const [k, v] of Object.entries(query || {})) if (v) url.searchParams.set(k, v);
  const response = await fetch(url, { headers: headers("text/event-stream"), signal });
  if (!response.ok) throw await failure(response);
  onOpen();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) kind = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(kind, JSON.parse(data.join("\n")));
    }
  }
}

// A stream kept open until `stop()`: reconnects after an error or its end (unless `once`).
function keepFollowing(path, query, onEvent, { once = false, onState = () => {} } = {}) {
  const control = new AbortController();
  const stream = {
    stop: () => control.abort(),
  };
  (async () => {
    while (!control.signal.aborted) {
      try {
        await follow(path, query, onEvent, control.signal, () => onState(true));
        if (once) return;
      } catch (error) {
        if (control.signal.aborted) return;
        if (error instanceof ApiError && [401, 403, 404].includes(error.status)) {
          onState(false, error);
          return;
        }
      }
      onState(false);
      scheduleRefresh(); // whatever happened while disconnected
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
    }
  })();
  return stream;
}

// ------------------------------------------------------------------ refreshing

let refreshing = null;
let reading = false;
let again = false;
let lastRefresh = 0;

// Coalesces bursts of events into one read of what they changed: an event arriving while
// a read is waiting its turn is covered by it; one arriving during the read, by the next.
function scheduleRefresh() {
  if (refreshing) {
    again = again || reading;
    return;
  }
  const wait = Math.max(0, lastRefresh + REFRESH_GAP_MS - performance.now());
  refreshing = new Promise((resolve) => setTimeout(resolve, wait))
    .then(() => {
      reading = true;
      return refresh();
    })
    .finally(() => {
      reading = false;
      refreshing = null;
      lastRefresh = performance.now();
      if (again) {
        again = false;
        scheduleRefresh();
      }
    });
}

async function refresh() {
  try {
    const filter = $("state-filter").value;
    const [queues, jobs, failed] = await Promise.all([
      api("queue/status"),
      api("jobs", { query: { limit: String(JOBS_SHOWN), status: filter } }),
      api("jobs", { query: { limit: String(FAILED_JOBS_SHOWN), status: "failed" } }),
      view.selected ? refreshJob() : null,
    ]);
    view.queues = queues;
    view.queuesAt = performance.now();
    view.jobs = jobs.jobs;
    await refreshFailures(failed.jobs);
    hideError();
    render();
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) showError(error);
  }
}

async function refreshJob() {
  const { job_id, owner } = view.selected;
  try {
    view.job = await api(`jobs/${encodeURIComponent(job_id)}`, {
      query: { ...ownerQuery(owner), executions_limit: String(EXECUTIONS_SHOWN) },
    });
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) view.job = null;
    else throw error;
  }
}

function ownerQuery(owner) {
  // Only an admin may name an owner; ids are unique per owner.
  return view.me && view.me.role === "admin" ? { owner } : {};
}

// Failed jobs are finished: each is read once, for its failed executions' errors.
async function refreshFailures(jobs) {
  for (const job of jobs) {
    const key = `${job.owner}/${job.job_id}`;
    if (view.failedJobs.has(key)) continue;
    const full = await api(`jobs/${encodeURIComponent(job.job_id)}`, {
      query: { ...ownerQuery(job.owner), executions_limit: String(EXECUTIONS_SHOWN) },
    });
    const failed = full.executions
      .filter((e) => e.status === "failed" || e.status === "expired")
      .map((e) => ({ job, execution: e }));
    view.failedJobs.set(key, failed);
  }
  view.failures = [...view.failedJobs.values()]
    .flat()
    .sort((a, b) => (b.execution.finished_at || "").localeCompare(a.execution.finished_at || ""))
    .slice(0, FAILURES_SHOWN);
}

// ------------------------------------------------------------------ rendering

function render() {
  renderAccount();
  renderRegions();
  renderJobs();
  renderJob();
  renderFailures();
}

function renderAccount() {
  const a = view.queues.account;
  const label = `account: ${a.gpus_in_use} busy, ${a.gpus_warm} warm of ${a.gpu_limit} GPUs`;
  $("account-bar").replaceWith(
    Object.assign(gpuBar(a.gpus_in_use, a.gpus_warm, a.gpu_limit, label), { id: "account-bar" }),
  );
  const legend = gpuLegend(a.gpus_in_use, a.gpus_warm, a.gpu_limit, " (account limit)");
  const rule = SHARE_RULES[a.free_gpus_go];
  if (rule) legend.push(`; free GPUs go ${rule}`);
  fill($("account-text"), legend);
}

// Where the account's free GPUs go when only its limit binds, as the scheduler planned.
const SHARE_RULES = {
  oldest: "to the oldest execution",
  "lane-work": "to the model with the most work per container",
  reclaim: "back to the region that freed them",
};

function warmLeft(container) {
  if (container.warm_left_s === null) return null;
  const elapsed = (performance.now() - view.queuesAt) / 1000;
  return Math.max(0, container.warm_left_s - elapsed);
}

function renderRegions() {
  const cards = Object.values(view.queues.queues).map((q) => {
    const byModel = new Map();
    for (const c of q.containers || []) {
      if (!byModel.has(c.model)) byModel.set(c.model, []);
      byModel.get(c.model).push(c);
    }
    const containers = [...byModel].map(([model, list]) =>
      el(
        "li",
        {},
        el("span", { class: "model" }, model),
        list.map((c) =>
          el(
            "span",
            { class: "container", title: `${c.provider}, ${c.gpus} GPU` },
            c.state === "busy"
              ? `● busy (${c.in_flight} call${c.in_flight === 1 ? "" : "s"})`
              : `○ ${c.state}, ${seconds(warmLeft(c))} left`,
          ),
        ),
      ),
    );
    const admin = view.me.role === "admin";
    const control = (action, label, disabled) =>
      el("button", { type: "button", disabled, onclick: () => setRegion(q.region, action) }, label);
    return el(
      "article",
      { class: "region", "data-region": q.region },
      el("header", {}, el("h3", {}, q.region), badge(q.mode)),
      el(
        "p",
        { class: "legend" },
        `queued ${q.queue_size} · running ${q.running_count}`,
        q.max_running ? ` (at most ${q.max_running})` : "",
        ` · done ${q.completed} · failed ${q.failed}`,
      ),
      gpuBar(q.gpus_in_use, q.gpus_warm, q.gpu_limit, `${q.region}: GPUs`),
      el("p", { class: "legend" }, gpuLegend(q.gpus_in_use, q.gpus_warm, q.gpu_limit, "")),
      containers.length
        ? el("ul", { class: "containers", "aria-label": "containers" }, containers)
        : el("p", { class: "muted" }, "No containers up."),
      admin &&
        el(
          "div",
          { class: "controls" },
          control("pause", "Pause", q.mode === "paused"),
          control("drain", "Drain", q.mode === "draining"),
          control("resume", "Resume", q.mode === "open"),
        ),
    );
  });
  fill($("regions"), cards);
}

function progressBar(p) {
  const share = (n) => `${p.total ? (100 * n) / p.total : 0}%`;
  const done = p.succeeded;
  const bad = p.failed + p.cancelled + p.expired;
  return el(
    "div",
    { class: "bar small", title: `${done + bad} of ${p.total} finished` },
    el("span", { class: "done", style: { width: share(done) } }),
    el("span", { class: "failed", style: { width: share(bad) } }),
    el("span", { class: "running", style: { width: share(p.running) } }),
  );
}

function renderJobs() {
  const admin = view.me.role === "admin";
  const columns = ["Job", "State", "Progress", admin && "Owner", "Regions", "Models", "Created"];
  fill($("jobs-head"), columns.filter(Boolean).map((c) => el("th", {}, c)));
  const rows = view.jobs.map((job) => {
    const p = job.progress;
    const selected =
      view.selected && view.selected.job_id === job.job_id && view.selected.owner === job.owner;
    return el(
      "tr",
      { class: selected ? "selected" : null, "data-job": job.job_id },
      el("td", {}, el("button", { type: "button", class: "link", onclick: () => select(job) }, job.job_id)),
      el("td", {}, badge(job.status)),
      el(
        "td",
        {},
        el(
          "div",
          { class: "progress" },
          progressBar(p),
          `${p.succeeded + p.failed + p.cancelled + p.expired}/${p.total}`,
        ),
      ),
      admin && el("td", {}, job.owner),
      el("td", {}, job.regions.join(", ")),
      el("td", {}, job.models.join(", ")),
      el("td", {}, clock(job.created_at)),
    );
  });
  fill($("jobs-body"), rows);
  $("jobs-empty").hidden = rows.length > 0;
}

function why(e) {
  // Why it waits, as the leader's last round said (`wait_reason`); else its state, or where
  // it runs.
  if (e.wait_reason) return e.wait_reason.message || e.wait_reason.code;
  if (e.status === "queued") return e.attempts > 0 ? "queued again after a failure" : "queued";
  return e.provider || "";
}

function result(e) {
  if (e.error) {
    return el("span", { class: "error" }, `${e.error.code}: ${e.error.message}`);
  }
  if (e.response === null || e.response === undefined) return "";
  const text = String(e.response);
  if (text.length <= 160) return text;
  return el("details", {}, el("summary", {}, `${text.slice(0, 160)}…`), text);
}

function eta(e) {
  if (e.status === "queued" && e.estimated_start_s !== null) return `starts in ${seconds(e.estimated_start_s)}`;
  if (e.estimated_finish_s !== null && e.estimated_finish_s !== undefined && !FINISHED.has(e.status))
    return `done in ${seconds(e.estimated_finish_s)}`;
  if (e.inference_time !== null && e.inference_time !== undefined) return `took ${seconds(e.inference_time)}`;
  return "";
}

function renderJob() {
  const section = $("job");
  const job = view.job;
  section.hidden = !view.selected;
  if (!view.selected) return;
  if (!job) {
    fill($("job-title"), `Job ${view.selected.job_id}`);
    fill($("job-summary"), "Not found.");
    fill($("executions"));
    $("job-cancel").hidden = true;
    return;
  }
  const p = job.progress;
  fill($("job-title"), `Job ${job.job_id} `, badge(job.status));
  fill(
    $("job-summary"),
    `owner ${job.owner} · priority ${job.priority} · ${p.succeeded} succeeded, ${p.running} running, `,
    `${p.queued} queued, ${p.failed + p.expired} failed, ${p.cancelled} cancelled of ${p.total}`,
    job.estimated_finish_s !== null && job.estimated_finish_s !== undefined
      ? ` · done in about ${seconds(job.estimated_finish_s)}`
      : "",
    job.executions.length < p.total ? ` · the first ${job.executions.length} shown` : "",
  );
  $("job-cancel").hidden = FINISHED.has(job.status);
  fill(
    $("executions"),
    job.executions.map((e) =>
      el(
        "tr",
        { "data-execution": e.execution_id },
        el("td", {}, e.region),
        el("td", {}, e.model),
        el("td", {}, String(e.question_index + 1)),
        el("td", {}, badge(e.status)),
        el("td", {}, String(e.attempts)),
        el("td", {}, e.position === null ? "" : String(e.position)),
        el("td", {}, eta(e)),
        el("td", {}, why(e)),
        el("td", { class: "result" }, result(e)),
      ),
    ),
  );
}

function renderFailures() {
  fill(
    $("failures"),
    view.failures.map(({ job, execution: e }) =>
      el(
        "li",
        {},
        `${clock(e.finished_at)} · job `,
        el("button", { type: "button", class: "link", onclick: () => select(job) }, job.job_id),
        ` · ${e.region} · ${e.model}: `,
        e.error ? el("span", { class: "code" }, e.error.code) : e.status,
        e.error ? ` ${e.error.message}` : "",
      ),
    ),
  );
  $("failures-empty").hidden = view.failures.length > 0;
}

// The countdowns of warm containers tick locally; one that ran out asks for a fresh picture.
function tick() {
  if (!view.queues) return;
  let expired = false;
  for (const q of Object.values(view.queues.queues)) {
    for (const c of q.containers || []) if (c.warm_left_s !== null && warmLeft(c) <= 0) expired = true;
  }
  renderRegions();
  if (expired && performance.now() - view.queuesAt > 1000) scheduleRefresh();
}

// ------------------------------------------------------------------ actions

function showError(error) {
  const banner = $("error");
  banner.textContent = error instanceof ApiError ? `${error.code}: ${error.message}` : String(error);
  banner.hidden = false;
}

function hideError() {
  $("error").hidden = true;
}

async function act(request) {
  try {
    await request();
    scheduleRefresh();
  } catch (error) {
    showError(error);
  }
}

function setRegion(region, action) {
  act(() => api(`regions/${encodeURIComponent(region)}/${action}`, { method: "POST" }));
}

function select(job) {
  view.selected = { job_id: job.job_id, owner: job.owner };
  view.job = null;
  if (view.jobStream) view.jobStream.stop();
  view.jobStream = FINISHED.has(job.status)
    ? null
    : keepFollowing(
        `jobs/${encodeURIComponent(job.job_id)}/events`,
        ownerQuery(job.owner),
        scheduleRefresh,
        { once: true },
      );
  scheduleRefresh();
}

function closeJob() {
  if (view.jobStream) view.jobStream.stop();
  view.jobStream = null;
  view.selected = null;
  view.job = null;
  render();
}

function cancelJob() {
  const { job_id, owner } = view.selected;
  act(() => api(`jobs/${encodeURIComponent(job_id)}`, { method: "DELETE", query: ownerQuery(owner) }));
}

function setLive(on, text) {
  const live = $("live");
  live.classList.toggle("on", on);
  live.textContent = text;
}

// ------------------------------------------------------------------ starting

function askForKey(message) {
  for (const stream of view.streams) stream.stop();
  view.streams = [];
  $("main").hidden = true;
  $("login").hidden = false;
  $("forget").hidden = true;
  $("login-error").textContent = view.key ? message : "";
  setLive(false, "needs a key");
  $("key").focus();
}

async function start() {
  let me;
  try {
    me = await api("me");
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) {
      showError(error);
      setTimeout(start, RECONNECT_MS);
    }
    return;
  }
  view.me = me;
  $("login").hidden = true;
  $("main").hidden = false;
  $("forget").hidden = !me.keys_required;
  fill($("who"), me.keys_required ? `${me.name} (${me.role})` : "open router (no users configured)");
  if (me.role === "admin") {
    // Every job's events: each one may change what the page shows.
    view.streams.push(
      keepFollowing("events", {}, scheduleRefresh, {
        onState: (on) => setLive(on, on ? "live" : "reconnecting…"),
      }),
    );
  } else {
    setLive(true, "live (the queues every second, an open job's events)");
  }
  if (view.timers) return;
  view.timers = true;
  setInterval(() => {
    if (view.me.role !== "admin" || performance.now() - lastRefresh > POLL_MS * 5) scheduleRefresh();
  }, POLL_MS);
  setInterval(tick, 1000);
  scheduleRefresh();
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  view.key = $("key").value.trim();
  $("key").value = "";
  sessionStorage.setItem(KEY_ITEM, view.key);
  start();
});
$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_ITEM);
  location.reload();
});
$("state-filter").addEventListener("change", scheduleRefresh);
$("job-close").addEventListener("click", closeJob);
$("job-cancel").addEventListener("click", cancelJob);
start();
