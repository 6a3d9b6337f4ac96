// Datasets: the registered ones and the upload form.
import { api } from "./api.js";
import { fmtTime, h, table } from "./dom.js";
import { current, showError } from "./session.js";

export async function pageDatasets(view, page) {
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
