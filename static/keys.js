// The Keys page: create a proxy key (its secret shown once, with a Copy
// button), the keys with their allowed prefixes, state, expiry and last
// use, enable/disable, delete with confirmation, and a key's usage per
// prefix with its 24 h series. Signing in is the admin page's: without a
// session this page says so and links there.
"use strict";

const model = { keys: [], mappings: [], usage: null, usageKey: null, secret: null };

function show(view) {
  document.getElementById("signin-view").hidden = view !== "signin";
  document.getElementById("app-view").hidden = view !== "app";
}

/** Runs `call`; a 401 means there is no session (any more): the page
 * asks to sign in. What was typed stays in the form. */
async function guarded(call) {
  try {
    return await call();
  } catch (e) {
    if (e.status === 401) {
      for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
      show("signin");
    }
    throw e;
  }
}

/** Loads the keys and the mapping prefixes a key may be limited to. As on
 * the admin page, only the first load says "Loading…": after an action
 * the status line keeps its outcome until the next action. */
async function load(first = false) {
  if (first) announce(t("common.loading"));
  try {
    const [keys, list] = await guarded(() => Promise.all([
      api("GET", "/api/keys"),
      api("GET", "/api/mappings"),
    ]));
    model.keys = keys.keys;
    // Entries the data plane skips are no prefix a key could be used on.
    const skipped = list.invalid || {};
    model.mappings = Object.keys(list.mappings).filter((p) => !(p in skipped)).sort();
    show("app");
    if (first) announce("");
    render();
  } catch (e) {
    if (e.status === 401) {
      if (first) announce("");
      else announce(t("keys.session_expired"), "error");
    } else {
      show("app");
      announce(t("common.error", e.message), "error");
    }
  }
}

function render() {
  renderChoices();
  renderKeys();
  renderUsage();
}

// ---- create --------------------------------------------------------------

/** One checkbox per mapping prefix; what is ticked stays ticked. */
function renderChoices() {
  const box = document.getElementById("key-prefixes");
  const ticked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
  if (model.mappings.length === 0) {
    box.replaceChildren(el("p", { class: "muted" }, t("keys.no_mappings")));
    return;
  }
  box.replaceChildren(...model.mappings.map((prefix) => el("label", { class: "inline" },
    el("input", {
      type: "checkbox",
      name: "prefix",
      value: prefix,
      checked: ticked.has(prefix),
      // Ticking a prefix means "only these".
      onchange: () => { document.getElementById("scope-list").checked = true; },
    }),
    el("code", {}, prefix))));
}

const KEY_FIELDS = ["key-name", "key-prefixes", "key-expiry", "key-form"];

function clearKeyErrors() {
  for (const id of KEY_FIELDS) document.getElementById(`${id}-error`).textContent = "";
  for (const id of ["key-name", "key-expiry"]) document.getElementById(id).removeAttribute("aria-invalid");
}

/** Puts the API's message next to the field it names (in backquotes). */
function showKeyError(message) {
  const field = /`name`/.test(message) ? "key-name"
    : /`prefixes`/.test(message) ? "key-prefixes"
      : /`expires_at`/.test(message) ? "key-expiry" : "key-form";
  fieldError(field, message);
}

/** Shows `message` under `field` and moves the focus there. */
function fieldError(field, message) {
  document.getElementById(`${field}-error`).textContent = message;
  if (field === "key-prefixes") {
    document.getElementById("scope-list").focus();
  } else if (field !== "key-form") {
    const input = document.getElementById(field);
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
}

async function createKey(ev) {
  ev.preventDefault();
  clearKeyErrors();
  const body = { name: document.getElementById("key-name").value.trim() };
  if (document.getElementById("scope-list").checked) {
    body.prefixes = [...document.querySelectorAll("#key-prefixes input:checked")].map((i) => i.value);
    if (body.prefixes.length === 0) {
      fieldError("key-prefixes", t("keys.choose_prefix"));
      return;
    }
  }
  const expiry = document.getElementById("key-expiry").value;
  // The browser's local time, as the operator typed it.
  if (expiry) body.expires_at = Math.floor(new Date(expiry).getTime() / 1000);
  try {
    const reply = await guarded(() => api("POST", "/api/keys", body));
    document.getElementById("key-form").reset();
    model.secret = { name: reply.key.name, value: reply.secret };
    renderSecret();
    announce(t("keys.created", reply.key.name), "ok");
    const input = document.getElementById("new-secret");
    input.focus();
    input.select();
    await load();
  } catch (e) {
    if (e.status !== 401) showKeyError(e.message);
  }
}

/** The secret of the key just created, until "I have copied it": kept in
 * this page only, never stored anywhere. */
function renderSecret() {
  const view = document.getElementById("secret-view");
  view.hidden = !model.secret;
  document.getElementById("copy-secret")?.remove();
  if (!model.secret) return;
  document.getElementById("secret-title").textContent = t("keys.secret_title", model.secret.name);
  const input = document.getElementById("new-secret");
  input.value = model.secret.value;
  const copy = copyButton(model.secret.value, t("keys.copy_secret"));
  copy.id = "copy-secret";
  input.after(copy);
}

function forgetSecret() {
  model.secret = null;
  document.getElementById("new-secret").value = "";
  renderSecret();
  document.getElementById("key-name").focus();
}

// ---- list ----------------------------------------------------------------

function keyState(key) {
  if (!key.enabled) return "disabled";
  if (key.expires_at && key.expires_at * 1000 <= Date.now()) return "expired";
  return "enabled";
}

/** Unix seconds as local time; none: `never`. */
function formatSeconds(seconds) {
  return formatTime(seconds ? seconds * 1000 : null);
}

function renderKeys() {
  document.getElementById("key-count").textContent = t("keys.count", model.keys.length);
  const body = document.querySelector("#keys tbody");
  // A rebuilt row gets back the focus its button had (Enable, Disable…).
  const focused = document.activeElement && body.contains(document.activeElement)
    ? [document.activeElement.closest("tr").dataset.keyId, document.activeElement.dataset.action]
    : null;
  if (model.keys.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 8, class: "empty" }, t("keys.empty"))));
    return;
  }
  body.replaceChildren(...model.keys.map((key) => {
    const state = keyState(key);
    const toggle = t(key.enabled ? "keys.disable" : "keys.enable");
    const action = (name, label, onclick, cls = "small") => el("button", {
      type: "button", class: cls, dataset: { action: name }, "aria-label": `${label} ${key.name}`, onclick,
    }, label);
    return el("tr", { dataset: { keyId: key.id, state } },
      el("th", { scope: "row" }, key.name),
      el("td", {}, el("code", {}, key.id)),
      el("td", { class: "prefixes" }, key.prefixes
        ? key.prefixes.flatMap((p, i) => [i ? ", " : null, el("code", {}, p)])
        : t("keys.all")),
      el("td", {}, el("span", { class: `badge key-${state}` }, t(`keys.${state}`))),
      el("td", {}, key.expires_at ? formatSeconds(key.expires_at) : t("keys.no_expiry")),
      el("td", {}, formatSeconds(key.created_at)),
      el("td", {}, formatSeconds(key.last_used_at)),
      el("td", { class: "row-actions" },
        action("usage", t("keys.usage"), () => openUsage(key.id)),
        action("toggle", toggle, () => setEnabled(key, !key.enabled)),
        action("delete", t("admin.delete"), () => deleteKey(key), "small danger")));
  }));
  if (focused) {
    body.querySelector(`tr[data-key-id="${CSS.escape(focused[0])}"] button[data-action="${focused[1]}"]`)?.focus();
  }
}

async function setEnabled(key, enabled) {
  try {
    const reply = await guarded(() => api("PATCH", `/api/keys/${encodeURIComponent(key.id)}`, { enabled }));
    announce(t(reply.key.enabled ? "keys.enabled_now" : "keys.disabled_now", reply.key.name), "ok");
  } catch (e) {
    if (e.status === 401) return;
    announce(t("common.error", e.message), "error");
  }
  await load();
}

async function deleteKey(key) {
  if (!(await confirmDialog(t("keys.confirm_delete", key.name)))) return;
  try {
    await guarded(() => api("DELETE", `/api/keys/${encodeURIComponent(key.id)}`));
    announce(t("keys.deleted", key.name), "ok");
  } catch (e) {
    if (e.status === 401) return;
    announce(t("common.error", e.message), "error");
  }
  await load();
  // Its row is gone: the focus goes to the list it was in.
  document.getElementById("keys-title").focus();
}

// ---- usage ---------------------------------------------------------------

async function openUsage(id) {
  model.usageKey = id;
  model.usage = null;
  try {
    // The list is read again with it: its "last used" moves with usage.
    const [usage] = await guarded(() => Promise.all([
      api("GET", `/api/keys/${encodeURIComponent(id)}/usage`),
      load(),
    ]));
    model.usage = usage;
  } catch (e) {
    if (e.status !== 401) announce(t("common.error", e.message), "error");
    return;
  }
  renderUsage();
  document.getElementById("usage-title").focus();
}

function renderUsage() {
  const view = document.getElementById("usage-view");
  const key = model.keys.find((k) => k.id === model.usageKey);
  const usage = model.usage;
  view.hidden = !key || !usage || usage.key_id !== key.id;
  if (view.hidden) return;
  document.getElementById("usage-title").textContent = t("keys.usage_title", key.name);
  const body = document.querySelector("#usage tbody");
  // In the API's order: by prefix.
  const rows = usage.prefixes;
  if (rows.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "empty" }, t("keys.usage_empty"))));
  } else {
    body.replaceChildren(...rows.map((u) => el("tr", { dataset: { prefix: u.prefix } },
      el("th", { scope: "row" }, el("code", {}, u.prefix)),
      el("td", { class: "num" }, formatNumber(u.requests)),
      el("td", { class: "num" }, formatNumber(u.errors)),
      el("td", { class: "num" }, formatNumber(u.bytes_in)),
      el("td", { class: "num" }, formatNumber(u.bytes_out)))));
  }
  const chart = document.getElementById("chart-usage");
  const buckets = usage.series.map((p) => ({ t: p.t, count: p.requests, errors: p.errors, p99_ms: null }));
  if (buckets.every((b) => b.count === 0)) {
    chart.replaceChildren(el("p", { class: "empty" }, t("keys.usage_empty")));
  } else {
    drawChart(chart, buckets, { span: 86400, step: 3600, label: t("keys.usage_chart") });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setupLanguage(() => {
    render();
    renderSecret();
  });
  document.getElementById("key-form").addEventListener("submit", createKey);
  document.getElementById("secret-done").addEventListener("click", forgetSecret);
  load(true);
});
