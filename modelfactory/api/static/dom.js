// DOM building and formatting shared by every page. Text from the API is only ever inserted as text nodes.

export function h(tag, props, ...kids) {
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

export const SVGNS = "http://www.w3.org/2000/svg";
export function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  for (const kid of kids.flat(Infinity)) if (kid !== null && kid !== undefined) el.append(kid instanceof Node ? kid : String(kid));
  return el;
}

export function table(headers, rows, empty = "Nothing here yet.") {
  const body = rows.length
    ? rows.map((r) => (r instanceof Node ? r : h("tr", {}, r.map((c) => h("td", {}, c)))))
    : [h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, empty))];
  return h("table", {}, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))), h("tbody", {}, body));
}

export function cls(state) {
  return String(state || "none").toLowerCase().replace(/[^a-z0-9_-]/g, "");
}

export function badge(state, props = {}) {
  return h("span", { ...props, class: `badge s-${cls(state)}` }, state ?? "–");
}

export const link = (href, text) => h("a", { href }, text);

export function parseTime(iso) {
  if (!iso) return null;
  const naive = !/([zZ]|[+-]\d\d:?\d\d)$/.test(iso); // the API's datetimes are UTC
  const d = new Date(naive ? `${iso}Z` : iso);
  return Number.isNaN(d.getTime()) ? null : d;
}

export function fmtTime(iso) {
  const d = parseTime(iso);
  if (!d) return iso ? String(iso) : "–";
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export function ago(iso) {
  const d = parseTime(iso);
  if (!d) return "–";
  const sec = Math.max(0, (Date.now() - d.getTime()) / 1000);
  if (sec < 90) return `${sec.toFixed(sec < 10 ? 1 : 0)} s ago`;
  if (sec < 5400) return `${Math.round(sec / 60)} min ago`;
  return fmtTime(iso);
}

export function num(v, digits = 2) {
  if (v === null || v === undefined || v === "") return "–";
  const n = Number(v);
  return Number.isFinite(n) ? n.toFixed(digits) : String(v);
}

export const mb = (bytes) => (bytes === null || bytes === undefined ? "–" : (Number(bytes) / 1e6).toFixed(2));

export function errorBox(err) {
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

export function stat(label, value) {
  return h("div", { class: "stat" }, h("div", { class: "stat-value" }, value), h("div", { class: "stat-label" }, label));
}
