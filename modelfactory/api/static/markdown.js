// A tiny markdown renderer: headings, paragraphs, bold, code spans, code blocks, bullet lists, pipe tables.
// It builds DOM nodes, so nothing in the source is ever interpreted as HTML.
import { h, link } from "./dom.js";

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

export function markdown(src, opts = {}) {
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
