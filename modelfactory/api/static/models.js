// Models: the registry's versions, one version's metrics (as the API shapes them: teacher, teacher_int8,
// `student` = the deployed model), baselines, aliases, lineage and model card.
import { api } from "./api.js";
import { fmtTime, h, link, mb, num, table } from "./dom.js";
import { markdown } from "./markdown.js";
import { current, downloadButton, route, showError } from "./session.js";

const modelHref = (name, version) => `#/models/${encodeURIComponent(`${name}@${version}`)}`;

export async function pageModels(view) {
  const models = await api("/models");
  view.append(h("h1", {}, "Models"), table(
    ["model", "aliases", "task", "tenant", "accuracy", "size (MB)", "p50 (ms)", "created"],
    models.map((m) => {
      const st = (m.metrics || {}).student || {};
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

export async function pageModel(view, page, ref) {
  const m = await api(`/models/${encodeURIComponent(ref)}`);
  const errors = h("div");
  const metrics = m.metrics || {};
  const keys = Object.keys(metrics);
  const r = m.ratios;
  const deployed = m.deployed;
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
