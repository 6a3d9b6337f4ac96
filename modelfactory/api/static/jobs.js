// Jobs: the pool's jobs by state, one job's log and events, cancel.
import { api } from "./api.js";
import { badge, fmtTime, h, link, table } from "./dom.js";
import { current, showError } from "./session.js";

const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];

export async function pageJobs(view, page) {
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
