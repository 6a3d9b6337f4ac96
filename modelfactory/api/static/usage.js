// Usage: a tenant's compute and inference bill for a month, as a table and a CSV download.
import { api } from "./api.js";
import { fmtTime, h, link, num, stat, table } from "./dom.js";
import { current, downloadButton, me, showError } from "./session.js";

export async function pageUsage(view, page) {
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
