// Orders: the list, the YAML order form, and one order's stages, report and Pareto front.
import { api } from "./api.js";
import { dagSvg } from "./charts.js";
import { badge, cls, errorBox, fmtTime, h, link, table } from "./dom.js";
import { markdown } from "./markdown.js";
import { current, every, go, me, showError } from "./session.js";

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

export async function pageOrders(view, page) {
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

const paretoUrls = new Map(); // order id -> blob URL of its Pareto plot, fetched once

export async function pageOrder(view, page, id) {
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
