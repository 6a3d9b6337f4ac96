// Overview: the pool, its utilisation and the factory's output.
import { api } from "./api.js";
import { ordersChart, utilisationChart } from "./charts.js";
import { ago, badge, fmtTime, h, num, stat, table } from "./dom.js";
import { current, every, showError } from "./session.js";

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

export async function pageOverview(view, page) {
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
