// Login, navigation and routing: the signed-in key's identity (`me`), the page on screen (`current`) and the
// timers that live as long as it does.
import { KEY, api, download } from "./api.js";
import { errorBox, h, link } from "./dom.js";

export let me = null; // {tenant, admin} of the logged-in key
export let current = { seq: 0, timers: [] }; // the page on screen: route() starts a new one
let routes = []; // [regexp, page function] pairs, set by the entry module

export function setRoutes(list) {
  routes = list;
}

// Show an error (or clear it with null) in a slot element; a 401 means the key is gone: back to the login page.
export function showError(slot, err) {
  slot.replaceChildren(...(err ? [errorBox(err)] : []));
  if (err && err.status === 401 && sessionStorage.getItem(KEY)) logout(err.message);
}

export function downloadButton(label, path, filename, slot) {
  return h("button", {
    type: "button", class: "secondary",
    onclick: async () => {
      try {
        await download(path(), filename());
        showError(slot, null);
      } catch (e) {
        showError(slot, e);
      }
    },
  }, label);
}

export function logout(message) {
  sessionStorage.removeItem(KEY);
  me = null;
  stopPage();
  renderLogin(message);
}

export function renderLogin(message) {
  document.getElementById("nav").replaceChildren();
  document.getElementById("who").replaceChildren();
  const slot = h("div", {}, message ? errorBox({ message }) : null);
  const input = h("input", { type: "password", id: "api-key", name: "key", autocomplete: "off", required: true,
    placeholder: "mfk_…", "data-testid": "login-key" });
  const form = h("form", { class: "card login" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste an API key: a tenant's key, or the admin key."),
    h("label", { for: "api-key" }, "API key"), input,
    h("button", { type: "submit", "data-testid": "login-submit" }, "Sign in"), slot);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = input.value.trim();
    try {
      me = await api("/me", { key });
      sessionStorage.setItem(KEY, key);
      go(location.hash || "#/");
    } catch (e) {
      slot.replaceChildren(errorBox(e));
    }
  });
  document.getElementById("main").replaceChildren(form);
  input.focus();
}

export const NAV = [["#/", "Overview"], ["#/orders", "Orders"], ["#/models", "Models"], ["#/jobs", "Jobs"],
  ["#/usage", "Usage"], ["#/datasets", "Datasets"]];

export function renderNav(hash) {
  const section = "#/" + (hash.split("/")[1] || "");
  document.getElementById("nav").replaceChildren(...NAV.map(([href, text]) =>
    h("a", { href, class: href === section ? "active" : null }, text)));
  document.getElementById("who").replaceChildren(
    h("span", { class: "whoami", "data-testid": "whoami" }, me.admin ? "admin" : me.tenant || "?"),
    h("a", { href: "#/", class: "logout", onclick: (ev) => { ev.preventDefault(); logout(); } }, "log out"));
}

export function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

export function stopPage() {
  current.timers.forEach(clearInterval);
  current = { seq: current.seq + 1, timers: [] };
}

// Run fn every ms while this page is on screen; stop() ends it early.
export function every(page, ms, fn) {
  if (page.seq !== current.seq) return () => {};
  const id = setInterval(() => (page.seq === current.seq ? fn() : clearInterval(id)), ms);
  current.timers.push(id);
  return () => clearInterval(id);
}

export async function route() {
  stopPage();
  const page = current;
  if (!sessionStorage.getItem(KEY)) return renderLogin();
  const main = document.getElementById("main");
  if (!me) {
    try {
      me = await api("/me");
    } catch (e) {
      if (e.status === 401) return logout(e.message);
      main.replaceChildren(errorBox(e));
      return;
    }
  }
  const hash = (location.hash || "#/").split("?")[0];
  renderNav(hash);
  const view = h("div", { class: "view" });
  main.replaceChildren(view);
  const found = routes.find(([re]) => re.test(hash));
  if (!found) {
    view.append(h("h1", {}, "Not found"), h("p", {}, "No page at ", h("code", {}, hash), ". ", link("#/", "Overview")));
    return;
  }
  const args = found[0].exec(hash).slice(1).map(decodeURIComponent);
  try {
    await found[1](view, page, ...args);
  } catch (e) {
    if (page.seq === current.seq) {
      view.append(errorBox(e));
      if (e.status === 401) logout(e.message);
    }
  }
}
