// The dashboard's SVG charts: pool utilisation, orders per hour, an order's stage graph.
import { cls, fmtTime, parseTime, s } from "./dom.js";

export function utilisationChart(points) {
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

export function ordersChart(perHour) {
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

// The stage DAG: columns by depth (longest path from a root), a box per node coloured by state, arrows for edges.
export function dagSvg(nodes, edges) {
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
