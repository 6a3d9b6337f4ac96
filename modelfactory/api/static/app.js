// modelfactory dashboard: plain ES2020, no framework. It talks only to the REST API under /api/v1 with the
// API key kept in sessionStorage. Text from the API is always inserted with textContent / text nodes.
"use strict";

const API = "/api/v1";
const KEY = "mf.key";
const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];
let me = null; // {tenant, admin} of the logged-in key
let current = { seq: 0, timers: [] }; // the page on screen: route() starts a new one

// ---------------------------------------------------------------------------------------------------------
// DOM helpers

function h(tag, props, ...kids) {
  const el = document.createElement(tag);
  let value;
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k === "value") value = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid !== null && kid !== undefined && kid !== false) el.append(kid instanceof Node ? kid : String(kid));
  }
  if (value !== undefined) el.value = value;
  return el;
}

const SVGNS = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  for (const kid of kids.flat(Infinity)) if (kid !== null && kid !== undefined) el.append(kid instanceof Node ? kid : String(kid));
  return el;
}

function table(headers, rows, empty = "Nothing here yet.") {
  const body = rows.length
    ? rows.map((r) => (r instanceof Node ? r : h("tr", {}, r.map((c) => h("td", {}, c)))))
    : [h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, empty))];
  return h("table", {}, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))), h("tbody", {}, body));
}

function cls(state) {
  return String(state || "none").toLowerCase().replace(/[^a-z0-9_-]/g, "");
}

function badge(state, props = {}) {
  return h("span", { ...props, class: `badge s-${cls(state)}` }, state ?? "–");
}

const link = (href, text) => h("a", { href }, text);

function parseTime(iso) {
  if (!iso) return null;
  const naive = !/([zZ]|[+-]\d\d:?\d\d)$/.test(iso); // the API's datetimes are UTC
  const d = new Date(naive ? `${iso}Z` : iso);
  return Number.isNaN(d.getTime()) ? null : d;
}

function fmtTime(iso) {
  const d = parseTime(iso);
  if (!d) return iso ? String(iso) : "–";
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function ago(iso) {
  const d = parseTime(iso);
  if (!d) return "–";
  const sec = Math.max(0, (Date.now() - d.getTime()) / 1000);
  if (sec < 90) return `${sec.toFixed(sec < 10 ? 1 : 0)} s ago`;
  if (sec < 5400) return `${Math.round(sec / 60)} min ago`;
  return fmtTime(iso);
}

function num(v, digits = 2) {
  if (v === null || v === undefined || v === "") return "–";
  const n = Number(v);
  return Number.isFinite(n) ? n.toFixed(digits) : String(v);
}

const mb = (bytes) => (bytes === null || bytes === undefined ? "–" : (Number(bytes) / 1e6).toFixed(2));

// ---------------------------------------------------------------------------------------------------------
// API access: every failure becomes an ApiError carrying the server's {"error", "fields", "rows"}

class ApiError extends Error {
  constructor(status, body) {
    let message = body && body.error;
    let fields = (body && body.fields) || [];
    if (!message && body && body.detail !== undefined) { // FastAPI's own errors, should one slip through
      if (Array.isArray(body.detail)) {
        fields = body.detail.map((d) => ({ loc: (d.loc || []).join("."), msg: d.msg }));
        message = "invalid request";
      } else message = String(body.detail);
    }
    super(message || `HTTP ${status}`);
    this.status = status;
    this.fields = fields;
    this.rows = (body && body.rows) || [];
  }
}

async function api(path, opts = {}) {
  const headers = { ...(opts.headers || {}) };
  const key = opts.key !== undefined ? opts.key : sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  let body = opts.body;
  if (opts.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(opts.json);
  }
  let res;
  try {
    res = await fetch(API + path, { method: opts.method || (body !== undefined ? "POST" : "GET"), headers, body });
  } catch (e) {
    throw new ApiError(0, { error: `cannot reach the server: ${e.message}` });
  }
  if (!res.ok) {
    const text = await res.text();
    let data;
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: text.trim() || `${res.status} ${res.statusText}` };
    }
    throw new ApiError(res.status, data && typeof data === "object" ? data : { error: String(data) });
  }
  if (opts.as === "blob") return res.blob();
  if (opts.as === "text") return res.text();
  if (res.status === 204) return null;
  return (res.headers.get("content-type") || "").includes("json") ? res.json() : res.text();
}

function errorBox(err) {
  const box = h("div", { class: "error", role: "alert", "data-testid": "error" }, h("strong", {}, err.message || String(err)));
  if (err.fields && err.fields.length) {
    box.append(h("ul", { class: "field-errors", "data-testid": "field-errors" },
      err.fields.map((f) => h("li", {}, h("code", {}, f.loc ?? "?"), ": ", f.msg ?? ""))));
  }
  if (err.rows && err.rows.length) {
    box.append(h("ul", { class: "row-errors", "data-testid": "row-errors" },
      err.rows.map((r) => h("li", {}, h("code", {}, r.where ?? "?"), ": ", r.message ?? ""))));
  }
  return box;
}

// Show an error (or clear it with null) in a slot element; a 401 means the key is gone: back to the login page.
function showError(slot, err) {
  slot.replaceChildren(...(err ? [errorBox(err)] : []));
  if (err && err.status === 401 && sessionStorage.getItem(KEY)) logout(err.message);
}

async function download(path, filename) {
  const blob = await api(path, { as: "blob" });
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: filename, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function downloadButton(label, path, filename, slot) {
  return h("button", {
    type: "button", class: "secondary",
    onclick: async () => {
      try {
        await download(path(), filename());
        showError(slot, null);
      } catch (e) {
        showError(slot, e);
      }
    },
  }, label);
}

// ---------------------------------------------------------------------------------------------------------
// A tiny markdown renderer: headings, paragraphs, bold, code spans, code blocks, bullet lists, pipe tables.
// It builds DOM nodes, so nothing in the source is ever interpreted as HTML.

function inline(text, opts = {}) {
  const out = [];
  const re = /(`+)([\s\S]*?)\1|\*\*(.+?)\*\*|!\[([^\]]*)\]\(([^)]*)\)|\[([^\]]+)\]\(([^)]*)\)/g;
  let last = 0;
  let m;
  while ((m = re.exec(text))) {
    if (m.index > last) out.push(text.slice(last, m.index));
    if (m[1]) out.push(h("code", {}, m[2].trim()));
    else if (m[3] !== undefined) out.push(h("strong", {}, inline(m[3], opts)));
    else if (m[5] !== undefined) out.push((opts.image && opts.image(m[5], m[4])) || h("em", {}, `[${m[4] || "image"}]`));
    else out.push(m[7].startsWith("#") ? link(m[7], m[6]) : m[6]); // only in-app links become links
    last = re.lastIndex;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

function splitRow(line) {
  let t = line.trim();
  if (t.startsWith("|")) t = t.slice(1);
  if (t.endsWith("|") && !t.endsWith("\\|")) t = t.slice(0, -1);
  return t.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
}

function markdown(src, opts = {}) {
  const root = h("div", { class: "md" });
  const lines = String(src || "").replace(/\r\n?/g, "\n").split("\n");
  const isSep = (l) => /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/.test(l || "");
  const bullet = /^\s*[-*+]\s+(.*)$/;
  const starts = (l, next) => /^(#{1,6})\s/.test(l) || l.startsWith("```") || bullet.test(l) ||
    (/^\s*\|/.test(l) && isSep(next));
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (!line.trim()) {
      i++;
    } else if (line.startsWith("```")) {
      const code = [];
      for (i++; i < lines.length && !lines[i].startsWith("```"); i++) code.push(lines[i]);
      i++;
      root.append(h("pre", {}, h("code", {}, code.join("\n"))));
    } else if ((m = /^(#{1,6})\s+(.*?)\s*#*\s*$/.exec(line))) {
      root.append(h(`h${Math.min(6, m[1].length + 1)}`, {}, inline(m[2], opts))); // h1 of a card → h2 on the page
      i++;
    } else if (/^\s*\|/.test(line) && isSep(lines[i + 1])) {
      const head = splitRow(line);
      const rows = [];
      for (i += 2; i < lines.length && /^\s*\|/.test(lines[i]); i++) rows.push(splitRow(lines[i]));
      root.append(h("table", { class: "md-table" },
        h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, inline(c, opts))))),
        h("tbody", {}, rows.map((r) => h("tr", {}, head.map((_, j) => h("td", {}, inline(r[j] || "", opts))))))));
    } else if (bullet.test(line)) {
      const ul = h("ul");
      for (; i < lines.length && (m = bullet.exec(lines[i])); i++) ul.append(h("li", {}, inline(m[1], opts)));
      root.append(ul);
    } else {
      const para = [line.trim()];
      for (i++; i < lines.length && lines[i].trim() && !starts(lines[i], lines[i + 1]); i++) para.push(lines[i].trim());
      root.append(h("p", {}, inline(para.join(" "), opts)));
    }
  }
  return root;
}

// ---------------------------------------------------------------------------------------------------------
// Login, navigation and routing

function logout(message) {
  sessionStorage.removeItem(KEY);
  me = null;
  stopPage();
  renderLogin(message);
}

function renderLogin(message) {
  document.getElementById("nav").replaceChildren();
  document.getElementById("who").replaceChildren();
  const slot = h("div", {}, message ? errorBox({ message }) : null);
  const input = h("input", { type: "password", id: "api-key", name: "key", autocomplete: "off", required: true,
    placeholder: "mfk_…", "data-testid": "login-key" });
  const form = h("form", { class: "card login" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste an API key: a tenant's key, or the admin key."),
    h("label", { for: "api-key" }, "API key"), input,
    h("button", { type: "submit", "data-testid": "login-submit" }, "Sign in"), slot);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = input.value.trim();
    try {
      me = await api("/me", { key });
      sessionStorage.setItem(KEY, key);
      go(location.hash || "#/");
    } catch (e) {
      slot.replaceChildren(errorBox(e));
    }
  });
  document.getElementById("main").replaceChildren(form);
  input.focus();
}

const NAV = [["#/", "Overview"], ["#/orders", "Orders"], ["#/models", "Models"], ["#/jobs", "Jobs"],
  ["#/usage", "Usage"], ["#/datasets", "Datasets"]];

function renderNav(hash) {
  const section = "#/" + (hash.split("/")[1] || "");
  document.getElementById("nav").replaceChildren(...NAV.map(([href, text]) =>
    h("a", { href, class: href === section ? "active" : null }, text)));
  document.getElementById("who").replaceChildren(
    h("span", { class: "whoami", "data-testid": "whoami" }, me.admin ? "admin" : me.tenant || "?"),
    h("a", { href: "#/", class: "logout", onclick: (ev) => { ev.preventDefault(); logout(); } }, "log out"));
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function stopPage() {
  current.timers.forEach(clearInterval);
  current = { seq: current.seq + 1, timers: [] };
}

// Run fn every ms while this page is on screen; stop() ends it early.
function every(page, ms, fn) {
  if (page.seq !== current.seq) return () => {};
  const id = setInterval(() => (page.seq === current.seq ? fn() : clearInterval(id)), ms);
  current.timers.push(id);
  return () => clearInterval(id);
}

const ROUTES = [
  [/^#?\/?$/, pageOverview],
  [/^#\/orders\/?$/, pageOrders],
  [/^#\/orders\/(\d+)$/, pageOrder],
  [/^#\/models\/?$/, pageModels],
  [/^#\/models\/(.+)$/, pageModel],
  [/^#\/jobs\/?$/, pageJobs],
  [/^#\/usage\/?$/, pageUsage],
  [/^#\/datasets\/?$/, pageDatasets],
];

async function route() {
  stopPage();
  const page = current;
  if (!sessionStorage.getItem(KEY)) return renderLogin();
  const main = document.getElementById("main");
  if (!me) {
    try {
      me = await api("/me");
    } catch (e) {
      if (e.status === 401) return logout(e.message);
      main.replaceChildren(errorBox(e));
      return;
    }
  }
  const hash = (location.hash || "#/").split("?")[0];
  renderNav(hash);
  const view = h("div", { class: "view" });
  main.replaceChildren(view);
  const found = ROUTES.find(([re]) => re.test(hash));
  if (!found) {
    view.append(h("h1", {}, "Not found"), h("p", {}, "No page at ", h("code", {}, hash), ". ", link("#/", "Overview")));
    return;
  }
  const args = found[0].exec(hash).slice(1).map(decodeURIComponent);
  try {
    await found[1](view, page, ...args);
  } catch (e) {
    if (page.seq === current.seq) {
      view.append(errorBox(e));
      if (e.status === 401) logout(e.message);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Overview: the pool

function utilisationChart(points) {
  const W = 760, H = 220, L = 44, R = 12, T = 14, B = 28;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": "pool utilisation" });
  const y = (pct) => T + (H - T - B) * (1 - Math.max(0, Math.min(100, pct)) / 100);
  for (const pct of [0, 25, 50, 75, 100]) {
    svg.append(s("line", { x1: L, x2: W - R, y1: y(pct), y2: y(pct), class: "grid" }),
      s("text", { x: L - 6, y: y(pct) + 4, "text-anchor": "end", class: "axis" }, `${pct}%`));
  }
  const pts = (points || []).map((p) => ({ ...p, t: parseTime(p.t) })).filter((p) => p.t);
  if (!pts.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "no samples yet"));
    return svg;
  }
  const t0 = pts[0].t.getTime();
  const span = Math.max(1, pts[pts.length - 1].t.getTime() - t0);
  const x = (p) => L + (W - L - R) * (pts.length === 1 ? 1 : (p.t.getTime() - t0) / span);
  const pct = (used, cap) => (cap > 0 ? (100 * used) / cap : 0);
  const line = (f) => pts.map((p) => `${x(p).toFixed(1)},${y(f(p)).toFixed(1)}`).join(" ");
  const cpu = line((p) => pct(p.cpu_used, p.cpu_capacity));
  svg.append(s("polygon", { points: `${x(pts[0])},${y(0)} ${cpu} ${x(pts[pts.length - 1])},${y(0)}`, class: "area-cpu" }),
    s("polyline", { points: cpu, class: "line-cpu" }));
  if (pts.some((p) => p.gpu_capacity > 0)) {
    svg.append(s("polyline", { points: line((p) => pct(p.gpu_used, p.gpu_capacity)), class: "line-gpu" }));
  }
  const p2 = (n) => String(n).padStart(2, "0");
  const hm = (d) => `${p2(d.getHours())}:${p2(d.getMinutes())}` + (span < 600e3 ? `:${p2(d.getSeconds())}` : "");
  svg.append(s("text", { x: L, y: H - 8, class: "axis" }, hm(pts[0].t)),
    s("text", { x: W - R, y: H - 8, "text-anchor": "end", class: "axis" }, hm(pts[pts.length - 1].t)));
  const last = pts[pts.length - 1];
  svg.append(s("title", {}, `CPU ${pct(last.cpu_used, last.cpu_capacity).toFixed(0)}% at ${fmtTime(last.t.toISOString())}`));
  return svg;
}

function ordersChart(perHour) {
  // orders finished per hour (done, with the failed stacked on top) over the window, one bar per hour
  const W = 760, H = 160, L = 44, R = 12, T = 14, B = 28;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "bars", role: "img", "aria-label": "orders per hour",
    style: "width:100%;max-width:900px;height:auto;display:block;background:#fff;border:1px solid #e3e7ec;border-radius:8px" });
  const hours = (perHour || []).map((b) => ({ ...b, t: parseTime(b.hour) })).filter((b) => b.t);
  const top = Math.max(1, ...hours.map((b) => b.done + b.failed));
  const y = (n) => T + (H - T - B) * (1 - n / top);
  for (const n of [0, top]) {
    svg.append(s("line", { x1: L, x2: W - R, y1: y(n), y2: y(n), stroke: "#edf0f3" }),
      s("text", { x: L - 6, y: y(n) + 4, "text-anchor": "end", fill: "#6b7785", "font-size": 11 }, String(n)));
  }
  if (!hours.length) return svg;
  const w = (W - L - R) / hours.length;
  hours.forEach((b, i) => {
    const x = L + i * w + 1, bw = Math.max(1, w - 2);
    const title = s("title", {}, `${fmtTime(b.hour)}: ${b.done} done, ${b.failed} failed, ${b.submitted} submitted`);
    if (b.done) svg.append(s("rect", { x, y: y(b.done), width: bw, height: y(0) - y(b.done), fill: "#2f5fd0" }, title));
    if (b.failed) {
      svg.append(s("rect", { x, y: y(b.done + b.failed), width: bw, height: y(b.done) - y(b.done + b.failed), fill: "#c0392b" },
        title.cloneNode(true)));
    }
  });
  const p2 = (n) => String(n).padStart(2, "0");
  const hm = (d) => `${p2(d.getHours())}:00`;
  svg.append(s("text", { x: L, y: H - 8, fill: "#6b7785", "font-size": 11 }, hm(hours[0].t)),
    s("text", { x: W - R, y: H - 8, "text-anchor": "end", fill: "#6b7785", "font-size": 11 }, hm(hours[hours.length - 1].t)));
  return svg;
}

function factoryOutput(out) {
  const orders = out.orders || {};
  const models = out.models || [], queue = out.queue || [], kinds = out.cpu_hours || [];
  return h("section", { "data-testid": "factory-output" },
    h("h2", {}, `Factory output, last ${num(out.hours, 0)} hours`),
    h("div", { class: "stats" },
      stat("orders done", String(orders.done ?? 0)), stat("orders per hour", num(orders.done_per_hour, 2)),
      stat("orders failed", String(orders.failed ?? 0)),
      stat("models registered", String(models.reduce((n, m) => n + m.models, 0))),
      stat("CPU-hours", num(kinds.reduce((n, k) => n + k.cpu_hours, 0), 1))),
    h("div", { class: "legend" }, "Orders finished per hour (blue: done, red: failed)"),
    ordersChart(orders.per_hour),
    h("h3", {}, "Models produced per tenant"),
    table(["tenant", `models (${num(out.hours, 0)} h)`, "models (all time)"],
      models.map((m) => [m.tenant, String(m.models), String(m.models_total)]), "No models yet."),
    h("h3", {}, "Queue by tenant"),
    table(["tenant", "queued jobs", "running jobs", "queued CPUs", "queued GPUs"],
      queue.map((q) => [q.tenant, String(q.queued), String(q.running), num(q.queued_cpu, 1), num(q.queued_gpu, 1)]),
      "Nothing queued or running."),
    h("h3", {}, "CPU-hours by stage kind"),
    table(["stage kind", "CPU-hours", "GPU-hours", "of which preempted, lost or failed", "attempts"],
      kinds.map((k) => [k.kind, num(k.cpu_hours, 2), num(k.gpu_hours, 2), num(k.lost_cpu_hours, 2), String(k.attempts)]),
      "No attempts ended in this window."));
}

function stat(label, value) {
  return h("div", { class: "stat" }, h("div", { class: "stat-value" }, value), h("div", { class: "stat-label" }, label));
}

async function pageOverview(view, page) {
  const errors = h("div");
  const body = h("div");
  view.append(h("h1", {}, "Compute pool"), errors, body);
  const draw = async () => {
    try {
      const [pool, util, out] = await Promise.all([api("/pool"), api("/pool/utilisation?minutes=60"),
        api("/pool/output?hours=24")]);
      if (page.seq !== current.seq) return;
      const cap = pool.capacity || {}, used = pool.used || {}, jobs = pool.jobs || {};
      const workers = pool.workers || [];
      body.replaceChildren(
        h("div", { class: "stats" },
          stat("workers up", String(workers.filter((w) => w.state === "up").length)),
          stat("running jobs", String(jobs.running ?? 0)), stat("queued jobs", String(jobs.queued ?? 0)),
          stat("CPU used", `${num(used.cpu, 1)} / ${num(cap.cpu, 1)}`),
          stat("GPU used", `${num(used.gpu, 1)} / ${num(cap.gpu, 1)}`)),
        h("h2", {}, "Utilisation, last hour"),
        h("div", { class: "legend" }, h("span", { class: "key-cpu" }, "CPU used / capacity"),
          (util.points || []).some((p) => p.gpu_capacity > 0) ? h("span", { class: "key-gpu" }, "GPU") : null),
        utilisationChart(util.points),
        factoryOutput(out),
        h("h2", {}, "Workers"),
        table(["id", "host", "state", "cpu", "gpu", "memory (GB)", "running jobs", "last heartbeat"],
          workers.map((w) => [String(w.id), w.host ?? "–", badge(w.state), num(w.cpu, 1), num(w.gpu, 0),
            num(w.memory_gb, 1), Array.isArray(w.running) ? w.running.join(", ") || "–" : String(w.running ?? 0),
            h("span", { title: fmtTime(w.last_heartbeat) }, ago(w.last_heartbeat))]), "No workers registered."));
      showError(errors, null);
    } catch (e) {
      showError(errors, e);
    }
  };
  await draw();
  every(page, 2000, draw);
}

// ---------------------------------------------------------------------------------------------------------
// Orders

function orderTemplate(families) {
  // the template below is a teacher -> student order: start from a "compress" family, name the others
  const sorted = [...(families || [])].sort((a, b) => (a.pipeline === "compress" ? 0 : 1) - (b.pipeline === "compress" ? 0 : 1));
  const names = sorted.map((f) => f.name);
  const first = names[0] || "<task family>";
  const others = names.slice(1);
  return `# A new order: labelled data in, a small fast model out.
name: my-model                  # becomes the registry model name
tenant: ${me && me.tenant ? me.tenant : "acme"}
task: ${first}${others.length ? `       # or ${others.join(", ")}` : ""}
data: {dataset: my-dataset}     # a registered dataset (see Datasets): name or name@version
teacher: {model: /path/to/hf-model-dir, epochs: 2}
student: {layers: 2, epochs: 3}
split: {val: 0.1, test: 0.1}
# targets: {min_accuracy_ratio: 0.95, max_latency_ms: 5, max_size_mb: 20}
# deploy: true
`;
}

function ordersTable(orders) {
  return table(["order", "name", "tenant", "state", "created", "finished", "model"], orders.map((o) => [
    link(`#/orders/${o.order}`, `#${o.order}`), o.name, o.tenant, badge(o.state), fmtTime(o.created),
    fmtTime(o.finished), o.model ? link(`#/models/${encodeURIComponent(o.model)}`, o.model) : "–"]), "No orders yet.");
}

async function pageOrders(view, page) {
  const listErrors = h("div");
  const list = h("div");
  const formErrors = h("div");
  const spec = h("textarea", { id: "order-spec", rows: 14, spellcheck: "false", "data-testid": "order-spec" });
  spec.value = orderTemplate();
  api("/tasks").then((families) => { if (!spec.dataset.edited) spec.value = orderTemplate(families); }, () => {});
  spec.addEventListener("input", () => { spec.dataset.edited = "1"; });
  const priority = h("select", { id: "order-priority", "data-testid": "order-priority" },
    ["batch", "standard", "urgent"].map((p) => h("option", { value: p, selected: p === "standard" }, p)));
  const submit = h("button", { type: "submit", "data-testid": "order-submit" }, "Submit order");
  const form = h("form", { class: "card" }, h("h2", {}, "New order"),
    h("label", { for: "order-spec" }, "Order spec (YAML)"), spec,
    h("div", { class: "row" }, h("label", { for: "order-priority" }, "Priority"), priority, submit), formErrors);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    try {
      const res = await api(`/orders?priority=${encodeURIComponent(priority.value)}`,
        { method: "POST", body: spec.value, headers: { "Content-Type": "application/yaml" } });
      showError(formErrors, null);
      go(`#/orders/${res.order}`);
    } catch (e) {
      showError(formErrors, e);
    } finally {
      submit.disabled = false;
    }
  });
  view.append(h("h1", {}, "Orders"), listErrors, list, form);
  const draw = async () => {
    try {
      const orders = await api("/orders");
      if (page.seq === current.seq) list.replaceChildren(ordersTable(orders));
      showError(listErrors, null);
    } catch (e) {
      showError(listErrors, e);
    }
  };
  await draw();
  every(page, 5000, draw);
}

// The stage DAG: columns by depth (longest path from a root), a box per node coloured by state, arrows for edges.
function dagSvg(nodes, edges) {
  const names = nodes.map((n) => n.node);
  const parents = new Map(names.map((n) => [n, []]));
  for (const [a, b] of edges || []) if (parents.has(b) && parents.has(a)) parents.get(b).push(a);
  const depth = new Map();
  const depthOf = (n, seen = new Set()) => {
    if (depth.has(n)) return depth.get(n);
    if (seen.has(n)) return 0; // a cycle should not happen; do not loop on one
    seen.add(n);
    const d = parents.get(n).reduce((acc, p) => Math.max(acc, depthOf(p, seen) + 1), 0);
    depth.set(n, d);
    return d;
  };
  const cols = [];
  for (const n of names) (cols[depthOf(n)] ||= []).push(n);
  const rowOf = new Map();
  cols.forEach((col) => { // fewer crossings: order a column by where its parents sit (stable sort)
    if (!col) return;
    const at = (n) => { const ps = parents.get(n).filter((q) => rowOf.has(q)); return ps.length ? ps.reduce((a, q) => a + rowOf.get(q), 0) / ps.length : 0; };
    col.sort((a, b) => at(a) - at(b)).forEach((n, i) => rowOf.set(n, i));
  });
  const BH = 44, GX = 30, GY = 12, P = 10;
  // each column as wide as its longest name (bold 12px: about 7 px a character)
  const widths = cols.map((col) => Math.max(88, 22 + 7 * Math.max(0, ...(col || []).map((n) => n.length))));
  const lefts = widths.map((_, i) => P + widths.slice(0, i).reduce((a, w) => a + w + GX, 0));
  const rows = Math.max(1, ...cols.map((c) => (c ? c.length : 0)));
  const W = P * 2 + widths.reduce((a, w) => a + w, 0) + (cols.length - 1) * GX, H = P * 2 + rows * BH + (rows - 1) * GY;
  const pos = new Map();
  cols.forEach((col, ci) => (col || []).forEach((n, ri) => {
    const offset = ((rows - col.length) * (BH + GY)) / 2; // centre short columns
    pos.set(n, { x: lefts[ci], y: P + offset + ri * (BH + GY), w: widths[ci] });
  }));
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "dag", role: "img", "aria-label": "stage graph" },
    s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      s("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }))));
  for (const [a, b] of edges || []) {
    const p = pos.get(a), q = pos.get(b);
    if (!p || !q) continue;
    const x1 = p.x + p.w, y1 = p.y + BH / 2, x2 = q.x - 2, y2 = q.y + BH / 2, mx = (x1 + x2) / 2;
    svg.append(s("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, class: "edge", "marker-end": "url(#arrow)" }));
  }
  for (const n of nodes) {
    const p = pos.get(n.node);
    svg.append(s("g", { class: `node s-${cls(n.state)}`, transform: `translate(${p.x},${p.y})` },
      s("title", {}, `${n.node} (${n.stage}): ${n.state}${n.worker ? " on " + n.worker : ""}`),
      s("rect", { width: p.w, height: BH, rx: 6 }),
      s("text", { x: 10, y: 18, class: "node-name" }, n.node),
      s("text", { x: 10, y: 34, class: "node-state" }, n.state + (n.attempts > 1 ? ` · attempt ${n.attempts}` : ""))));
  }
  return svg;
}

const paretoUrls = new Map(); // order id -> blob URL of its Pareto plot, fetched once

async function pageOrder(view, page, id) {
  const errors = h("div");
  const body = h("div");
  view.append(errors, body);
  let stop = () => {};
  const cancel = async (btn) => {
    btn.disabled = true;
    try {
      await api(`/orders/${id}/cancel`, { method: "POST" });
      await draw();
    } catch (e) {
      showError(errors, e);
      btn.disabled = false;
    }
  };
  const draw = async () => {
    let o;
    try {
      o = await api(`/orders/${id}`);
      showError(errors, null);
    } catch (e) {
      showError(errors, e);
      if (e.status === 404) stop();
      return e.status === 404 ? "missing" : null;
    }
    if (page.seq !== current.seq) return o.state;
    if (o.state !== "running") stop();
    const nodes = o.nodes || [];
    const meta = [["tenant", o.tenant], ["priority", o.priority], ["dataset", o.dataset],
      ["created", fmtTime(o.created)], ["finished", fmtTime(o.finished)], ["on pool", o.on_pool ? "yes" : "no"]];
    const parts = [
      h("div", { class: "page-head" },
        h("h1", {}, `Order #${o.order}: `, o.name),
        h("span", { class: `badge big s-${cls(o.state)}`, "data-testid": "order-state" }, o.state),
        o.state === "running" ? h("button", { type: "button", class: "danger", onclick: (ev) => cancel(ev.target) }, "Cancel order") : null),
      h("dl", { class: "meta" }, meta.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "–")])),
      o.error ? h("div", { class: "callout bad" }, h("strong", {}, "Error: "), o.error) : null,
      o.model ? h("p", { class: "model-ref" }, "Registered model: ",
        h("a", { href: `#/models/${encodeURIComponent(o.model)}`, "data-testid": "model-link" }, o.model)) : null,
      h("h2", {}, "Stages"),
      nodes.length ? h("div", { class: "dag-wrap" }, dagSvg(nodes, o.edges)) : h("p", { class: "muted" }, "No stages planned yet."),
      table(["node", "stage", "job", "state", "attempt", "worker", "note"], nodes.map((n) => [
        n.node, n.stage, n.job ? link(`#/jobs?job=${n.job}`, `#${n.job}`) : "–", badge(n.state), String(n.attempts ?? "–"),
        n.worker ?? "–", n.last_error || n.waiting || (n.resumed_from_step ? `resumed from step ${n.resumed_from_step}` : "")])),
    ];
    let img = null;
    if (o.has_pareto) {
      img = h("img", { class: "pareto", alt: "Pareto front of the recipe search" });
      const cached = paretoUrls.get(id);
      if (cached) img.src = cached;
      else {
        api(`/orders/${id}/pareto.png`, { as: "blob" }).then((blob) => {
          const url = URL.createObjectURL(blob);
          paretoUrls.set(id, url);
          img.src = url;
        }, (e) => img.replaceWith(errorBox(e)));
      }
    }
    if (o.report_markdown) {
      let placed = false;
      const image = (src) => (img && /pareto\.png$/.test(src) && !placed ? ((placed = true), img) : null);
      parts.push(h("h2", {}, "Report"), h("div", { class: "card report" }, markdown(o.report_markdown, { image })));
      if (img && !placed) parts.push(h("h2", {}, "Pareto front"), img);
    } else if (img) parts.push(h("h2", {}, "Pareto front"), img);
    body.replaceChildren(...parts.filter(Boolean));
    return o.state;
  };
  const state = await draw();
  if (state === "running" || state === null) stop = every(page, 2000, draw);
}

// ---------------------------------------------------------------------------------------------------------
// Models

const modelHref = (name, version) => `#/models/${encodeURIComponent(`${name}@${version}`)}`;

// teacher, teacher_int8 and `student` = the deployed model (as `mf models show --json` gives them). The registry
// keeps every candidate by name plus "deployed" (which one ships, e.g. "student_int8") and "ratios".
function contractMetrics(metrics) {
  const m = metrics || {};
  const isRow = (v) => v && typeof v === "object" && ("accuracy" in v || "size_bytes" in v);
  const out = {};
  for (const k of ["teacher", "teacher_int8"]) if (isRow(m[k])) out[k] = m[k];
  const deployed = typeof m.deployed === "string" && isRow(m[m.deployed]) ? m.deployed : "student";
  if (isRow(m[deployed])) out.student = m[deployed];
  for (const [k, v] of Object.entries(m)) {
    const name = k === "student" && deployed !== "student" ? "student_fp32" : k;
    if (isRow(v) && k !== deployed && !(name in out)) out[name] = v;
  }
  return out;
}

function deployedMetrics(metrics) {
  return contractMetrics(metrics).student || {};
}

async function pageModels(view) {
  const models = await api("/models");
  view.append(h("h1", {}, "Models"), table(
    ["model", "aliases", "task", "tenant", "accuracy", "size (MB)", "p50 (ms)", "created"],
    models.map((m) => {
      const st = deployedMetrics(m.metrics);
      return [link(modelHref(m.name, m.version), `${m.name}@${m.version}`),
        (m.aliases || []).map((a) => h("span", { class: "tag" }, a)), m.task, m.tenant,
        num(st.accuracy, 4), mb(st.size_bytes), num(st.latency_ms_p50, 2), fmtTime(m.created)];
    }), "No models registered yet."));
}

function lineageValue(v) {
  if (v === null || v === undefined) return "–";
  const isStep = (x) => x && typeof x === "object" && !Array.isArray(x) && Object.keys(x).length === 1;
  if (Array.isArray(v) && v.length && v.every(isStep)) { // a recipe: distill(layers=1, ...) → quantize(mode=dynamic)
    return h("code", { class: "recipe" }, v.map((step) => Object.entries(step).map(([kind, params]) =>
      `${kind}(${Object.entries(params || {}).filter(([, x]) => x !== null).map(([k, x]) => `${k}=${typeof x === "object" ? JSON.stringify(x) : x}`).join(", ")})`)).join(" → "));
  }
  if (typeof v === "object") {
    const flat = JSON.stringify(v);
    return flat.length <= 100 ? h("code", {}, flat) : h("pre", { class: "inline-json" }, JSON.stringify(v, null, 2));
  }
  return h("code", {}, String(v));
}

async function pageModel(view, page, ref) {
  const m = await api(`/models/${encodeURIComponent(ref)}`);
  const errors = h("div");
  const metrics = contractMetrics(m.metrics);
  const keys = Object.keys(metrics);
  const r = m.ratios || (m.metrics || {}).ratios;
  const deployed = m.deployed || (m.metrics || {}).deployed;
  const summary = r && r.accuracy_ratio ? h("p", {}, "The deployed student",
    typeof deployed === "string" ? [" (", h("code", {}, deployed), ")"] : null, " keeps ",
    h("strong", {}, `${(100 * r.accuracy_ratio).toFixed(1)}%`), " of the teacher's accuracy, ",
    h("strong", {}, `${num(r.size_reduction, 1)}x`), " smaller, ", h("strong", {}, `${num(r.latency_speedup, 1)}x`),
    " faster (batch 1).") : null;
  const version = h("input", { type: "number", min: 1, id: "promote-version", value: m.version, required: true });
  const alias = h("input", { type: "text", id: "promote-alias", value: "prod", required: true, pattern: "[a-z][a-z0-9._\\-]*" });
  const promoteMsg = h("div");
  const promote = h("form", { class: "row" }, h("label", { for: "promote-version" }, "version"), version,
    h("label", { for: "promote-alias" }, "alias"), alias, h("button", { type: "submit" }, "Promote"));
  promote.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const r = await api(`/models/${encodeURIComponent(m.name)}/aliases`,
        { json: { version: Number(version.value), alias: alias.value.trim() } });
      promoteMsg.replaceChildren(h("p", { class: "ok" }, `${r.name}@${r.alias} → version ${r.version}`));
      setTimeout(() => page.seq === current.seq && route(), 800);
    } catch (e) {
      showError(promoteMsg, e);
    }
  });
  const lineage = Object.entries(m.lineage || {});
  view.append(
    h("div", { class: "page-head" },
      h("h1", { "data-testid": "model-name" }, `${m.name}@${m.version}`),
      (m.aliases || []).map((a) => h("span", { class: "tag" }, a)),
      downloadButton("Download ONNX", () => `/models/${encodeURIComponent(`${m.name}@${m.version}`)}/onnx`,
        () => `${m.name}-v${m.version}.onnx`, errors)),
    errors,
    h("dl", { class: "meta" }, [["task", m.task], ["tenant", m.tenant], ["created", fmtTime(m.created)]]
      .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "–")])),
    h("h2", {}, "Metrics (held-out test split)"),
    // The baselines (majority class, the classical model) were measured on the same test split: a user sees at
    // once whether the deep models earn their cost.
    table(["model", "accuracy", "macro-F1", "size (MB)", "p50 batch-1 (ms)", "p50 raw input (ms)", "throughput (rows/s)"],
      [...keys.map((k) => [h("strong", {}, k), metrics[k]]),
        ...Object.entries(m.baselines || {}).map(([k, x]) => [h("em", { "data-testid": `baseline-${k}` }, `baseline: ${k}`), x])]
        .map(([name, x]) => [name, num(x.accuracy, 4), num(x.macro_f1, 4), mb(x.size_bytes), num(x.latency_ms_p50, 3),
          num(x.latency_e2e_ms_p50, 3), num(x.throughput, 0)]), "No metrics."),
    ...(summary ? [summary] : []),
    h("h2", {}, "Aliases"),
    h("div", { class: "card" }, promote, promoteMsg,
      table(["version", "aliases", "created"], (m.versions || []).map((v) => [
        link(modelHref(m.name, v.version), `${m.name}@${v.version}`),
        (v.aliases || []).map((a) => h("span", { class: "tag" }, a)), fmtTime(v.created)]), "No versions.")),
    h("h2", {}, "Lineage"),
    lineage.length ? h("dl", { class: "meta lineage" }, lineage.map(([k, v]) => [h("dt", {}, k), h("dd", {}, lineageValue(v))]))
      : h("p", { class: "muted" }, "No lineage recorded."),
    h("h2", {}, "Model card"),
    h("div", { class: "card report" }, m.card ? markdown(m.card) : h("p", { class: "muted" }, "No model card.")));
}

// ---------------------------------------------------------------------------------------------------------
// Jobs

async function pageJobs(view, page) {
  const wanted = new URLSearchParams(location.hash.split("?")[1] || "").get("job");
  const errors = h("div");
  const list = h("div");
  const detail = h("div");
  const filter = h("select", { id: "job-state" }, h("option", { value: "" }, "all states"),
    STATES.map((st) => h("option", { value: st }, st)));
  let selected = wanted ? Number(wanted) : null;

  const showJob = async (id) => {
    selected = id;
    try {
      const [job, logs] = await Promise.all([api(`/jobs/${id}`), api(`/jobs/${id}/logs?tail=200`, { as: "text" })]);
      if (page.seq !== current.seq) return;
      const active = job.state === "queued" || job.state === "running";
      detail.replaceChildren(h("div", { class: "card" },
        h("div", { class: "page-head" }, h("h2", {}, `Job #${job.id}: `, job.name ?? ""), badge(job.state),
          active ? h("button", { type: "button", class: "danger", onclick: async () => {
            try {
              await api(`/jobs/${id}/cancel`, { method: "POST" });
              await drawList();
              await showJob(id);
            } catch (e) {
              showError(errors, e);
            }
          } }, "Cancel job") : null,
          h("button", { type: "button", class: "secondary", onclick: () => showJob(id) }, "Refresh")),
        job.order_id ? h("p", {}, "Order ", link(`#/orders/${job.order_id}`, `#${job.order_id}`)) : null,
        job.last_error ? h("div", { class: "callout bad" }, job.last_error) : null,
        h("h3", {}, "Log (last 200 lines)"), h("pre", { class: "log", "data-testid": "job-log" }, logs || "(empty)"),
        (job.events || []).length ? [h("h3", {}, "Events"), table(["at", "from", "to", "reason", "attempt", "worker"],
          job.events.map((e) => [fmtTime(e.at), e.from ?? "–", e.to, e.reason ?? "", String(e.attempt ?? ""), e.worker ?? "–"]))] : null));
      showError(errors, null);
    } catch (e) {
      showError(errors, e);
    }
  };

  const drawList = async () => {
    try {
      const q = filter.value ? `?state=${encodeURIComponent(filter.value)}` : "";
      const jobs = await api(`/jobs${q}`);
      if (page.seq !== current.seq) return;
      list.replaceChildren(table(["id", "tenant", "name", "priority", "state", "attempts", "worker", "note"],
        jobs.map((j) => {
          const tr = h("tr", { class: `clickable${j.id === selected ? " selected" : ""}`, onclick: () => { showJob(j.id); drawList(); } },
            [h("a", { href: "#/jobs", onclick: (ev) => ev.preventDefault() }, `#${j.id}`), j.tenant, j.name, j.priority, badge(j.state),
              String(j.attempts ?? 0), j.worker || j.lease_worker || "–", j.waiting || j.last_error || ""].map((c) => h("td", {}, c)));
          return tr;
        }), "No jobs."));
    } catch (e) {
      showError(errors, e);
    }
  };
  filter.addEventListener("change", drawList);
  view.append(h("h1", {}, "Jobs"), h("div", { class: "row" }, h("label", { for: "job-state" }, "State"), filter,
    h("button", { type: "button", class: "secondary", onclick: drawList }, "Refresh")), errors, detail, list);
  await drawList();
  if (selected) await showJob(selected);
}

// ---------------------------------------------------------------------------------------------------------
// Usage

async function pageUsage(view, page) {
  const now = new Date();
  const month = h("input", { type: "month", id: "usage-month",
    value: `${now.getUTCFullYear()}-${String(now.getUTCMonth() + 1).padStart(2, "0")}` });
  const tenant = h("select", { id: "usage-tenant" });
  const errors = h("div");
  const body = h("div");
  const query = (extra = "") => {
    const p = new URLSearchParams({ month: month.value });
    if (me.admin && tenant.value) p.set("tenant", tenant.value);
    return `/usage?${p}${extra}`;
  };
  const draw = async () => {
    try {
      const u = await api(query());
      if (page.seq !== current.seq) return;
      const cur = u.currency || "";
      body.replaceChildren(
        h("div", { class: "stats" }, stat("tenant", u.tenant ?? "–"), stat("month", u.month ?? month.value),
          stat("CPU hours", num(u.cpu_hours, 3)), stat("GPU hours", num(u.gpu_hours, 3)), stat(`total ${cur}`, num(u.total, 2))),
        h("h2", {}, "Compute"),
        table(["job", "name", "order", "attempt", "worker", "ended", "outcome", "CPU h", "GPU h", `cost ${cur}`],
          (u.lines || []).map((l) => [String(l.job ?? "–"), l.name ?? "", l.order ? link(`#/orders/${l.order}`, `#${l.order}`) : "–",
            String(l.attempt ?? ""), l.worker ?? "–", fmtTime(l.ended), l.outcome ?? "", num(l.cpu_hours, 4), num(l.gpu_hours, 4), num(l.cost, 4)]),
          "No compute this month."),
        h("h2", {}, "Inference"),
        table(["model", "version", "requests", "rows", "CPU h", `cost ${cur}`, "last"],
          (u.inference || []).map((l) => [l.model, String(l.version ?? ""), String(l.requests ?? 0), String(l.rows ?? 0),
            num(l.cpu_hours, 4), num(l.cost, 4), fmtTime(l.last)]), "No inference this month."));
      showError(errors, null);
    } catch (e) {
      showError(errors, e);
    }
  };
  const controls = h("div", { class: "row" }, h("label", { for: "usage-month" }, "Month"), month);
  if (me.admin) {
    const tenants = await api("/tenants");
    tenant.append(...tenants.map((t) => h("option", { value: t.name }, t.name)));
    controls.append(h("label", { for: "usage-tenant" }, "Tenant"), tenant);
    tenant.addEventListener("change", draw);
  }
  month.addEventListener("change", draw);
  controls.append(downloadButton("CSV", () => query("&format=csv"),
    () => `usage-${(me.admin ? tenant.value : me.tenant) || "all"}-${month.value}.csv`, errors));
  view.append(h("h1", {}, "Usage"), controls, errors, body);
  await draw();
}

// ---------------------------------------------------------------------------------------------------------
// Datasets

async function pageDatasets(view, page) {
  const list = h("div");
  const errors = h("div");
  const result = h("div");
  const field = (id, label, input) => h("div", { class: "field" }, h("label", { for: id }, label), input);
  const name = h("input", { type: "text", id: "ds-name", name: "name", required: true, pattern: "[a-z0-9][a-z0-9._\\-]*", placeholder: "tickets" });
  const file = h("input", { type: "file", id: "ds-file", name: "file", required: true });
  const text = h("input", { type: "text", id: "ds-text", name: "text", value: "text" });
  const label = h("input", { type: "text", id: "ds-label", name: "label", value: "label" });
  const skip = h("input", { type: "checkbox", id: "ds-skip", name: "skip_bad_rows" });
  const submit = h("button", { type: "submit" }, "Upload");
  const form = h("form", { class: "card" }, h("h2", {}, "Upload a dataset"),
    h("div", { class: "fields" }, field("ds-name", "Name", name), field("ds-file", "File (CSV, TSV, JSONL, Parquet, archive)", file),
      field("ds-text", "Text column", text), field("ds-label", "Label column", label)),
    h("label", { class: "check" }, skip, " skip bad rows"), h("div", {}, submit), result);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const fd = new FormData();
    fd.append("name", name.value.trim());
    if (file.files[0]) fd.append("file", file.files[0]);
    fd.append("text", text.value.trim() || "text");
    fd.append("label", label.value.trim() || "label");
    fd.append("skip_bad_rows", skip.checked ? "true" : "false");
    submit.disabled = true;
    try {
      const r = await api("/datasets", { method: "POST", body: fd });
      result.replaceChildren(h("p", { class: "ok" }, `Added ${r.name}@${r.version}: ${r.rows} rows` +
        (r.skipped ? `, ${r.skipped} bad rows skipped` : "") + "."));
      await draw();
    } catch (e) {
      showError(result, e);
    } finally {
      submit.disabled = false;
    }
  });
  const draw = async () => {
    try {
      const ds = await api("/datasets");
      if (page.seq !== current.seq) return;
      list.replaceChildren(table(["name", "tenant", "versions", "latest", "rows", "created"], ds.map((d) => [
        h("strong", {}, d.name), d.tenant ?? "–", String(d.versions ?? ""), `${d.name}@${d.latest}`, String(d.rows ?? "–"),
        fmtTime(d.created)]), "No datasets yet."));
      showError(errors, null);
    } catch (e) {
      showError(errors, e);
    }
  };
  view.append(h("h1", {}, "Datasets"), errors, list, form);
  await draw();
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);
