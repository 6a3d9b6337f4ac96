// The REST API under /api/v1, with the API key kept in sessionStorage: every failure becomes an ApiError
// carrying the server's {"error", "fields", "rows"}.
import { h } from "./dom.js";

export const API = "/api/v1";
export const KEY = "mf.key";

export class ApiError extends Error {
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

export async function api(path, opts = {}) {
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

export async function download(path, filename) {
  const blob = await api(path, { as: "blob" });
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: filename, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
