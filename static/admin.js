// The admin console: sign-in, the mapping table (search, add, edit,
// delete, bulk delete) with each mapping's access policy, import with a
// diff before replace-all, export, and the audit log. A failed request never loses what the operator typed:
// dialogs stay open with their input and show the API's error.
"use strict";

const model = { mappings: {}, invalid: {}, policies: {}, version: 0, audit: [], selected: new Set(), editing: null, importing: null, draft: null };

function show(view) {
  document.getElementById("login-view").hidden = view !== "login";
  document.getElementById("app-view").hidden = view !== "app";
  document.getElementById("logout").hidden = view !== "app";
  if (view === "login") document.getElementById("token").focus();
}

/** Runs `call`; a 401 means the session ended: back to sign-in. The
 * mapping form being edited is kept as a draft and reopened, as typed,
 * after the next sign-in. */
async function guarded(call) {
  try {
    return await call();
  } catch (e) {
    if (e.status === 401) {
      const form = document.getElementById("mapping-dialog");
      if (form.open) model.draft = { editing: model.editing, values: formValues() };
      for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
      show("login");
      announce(t("admin.session_expired"), "error");
    }
    throw e;
  }
}

/** Loads the mappings and the audit log; `first`: the page just opened,
 * where no session simply means "sign in", not "your session ended".
 * Only the first load says "Loading…": after an action the status line
 * keeps its outcome ("Saved /x.") until the next action says another. */
async function load(first = false) {
  if (first) announce(t("common.loading"));
  try {
    const [list, policies, audit] = await guarded(() => Promise.all([
      api("GET", "/api/mappings"),
      api("GET", "/api/policies"),
      api("GET", "/api/audit?limit=100"),
    ]));
    model.mappings = list.mappings;
    model.invalid = list.invalid || {};
    model.policies = Object.fromEntries(policies.policies.map((p) => [p.prefix, p]));
    model.version = list.version;
    model.audit = audit.entries;
    for (const prefix of [...model.selected]) {
      if (!(prefix in model.mappings)) model.selected.delete(prefix);
    }
    show("app");
    if (first) announce("");
    render();
  } catch (e) {
    if (e.status === 401 && first) announce("");
    if (e.status !== 401) {
      show("app");
      announce(t("common.error", e.message), "error");
    }
  }
}

function render() {
  renderMappings();
  renderAudit();
}

/** The mappings the search lets through, sorted by prefix. */
function visibleRows() {
  const query = document.getElementById("search").value.trim().toLowerCase();
  return Object.entries(model.mappings)
    .sort(([a], [b]) => a.localeCompare(b))
    .filter(([p, tg]) => !query || p.toLowerCase().includes(query) || tg.toLowerCase().includes(query));
}

function visiblePrefixes() {
  return visibleRows().map(([prefix]) => prefix);
}

function renderMappings() {
  const all = Object.keys(model.mappings);
  const rows = visibleRows();
  document.getElementById("version").textContent = t("admin.version", model.version, all.length);
  const body = document.querySelector("#mappings tbody");
  if (rows.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 4, class: "empty" }, t(all.length ? "admin.no_match" : "admin.empty"))));
  } else {
    body.replaceChildren(...rows.map(([prefix, target]) => el("tr", { dataset: { prefix } },
      el("td", {}, el("input", {
        type: "checkbox",
        "aria-label": `${t("admin.col.select")} ${prefix}`,
        checked: model.selected.has(prefix),
        onchange: (ev) => {
          if (ev.target.checked) model.selected.add(prefix);
          else model.selected.delete(prefix);
          renderBulk();
        },
      })),
      el("th", { scope: "row" }, el("code", {}, prefix), notRouted(prefix), policyBadges(prefix)),
      el("td", { class: "target" }, target,
        prefix in model.invalid ? el("div", { class: "reason" }, model.invalid[prefix]) : null),
      el("td", { class: "row-actions" },
        el("button", { type: "button", class: "small", "aria-label": `${t("admin.edit")} ${prefix}`, onclick: () => openForm(prefix) }, t("admin.edit")),
        el("button", { type: "button", class: "small danger", "aria-label": `${t("admin.delete")} ${prefix}`, onclick: () => deleteOne(prefix) }, t("admin.delete"))))));
  }
  renderBulk();
}

/** The marker of an entry the data plane skips (written straight into
 * Redis, e.g. by the Go version): a badge whose tooltip is the reason. */
function notRouted(prefix) {
  if (!(prefix in model.invalid)) return null;
  return el("span", { class: "badge not-routed", title: t("admin.not_routed_why", model.invalid[prefix]) },
    t("admin.not_routed"));
}

/** The marks of a mapping's policy: "proxy key" when clients need one,
 * and the upstream credential's last four characters when it has one. */
function policyBadges(prefix) {
  const policy = policyOf(prefix);
  if (!policy) return null;
  const credential = policy.upstream_credential;
  return [
    policy.access === "key"
      ? el("span", { class: "badge keyed", title: t("admin.keyed_why") }, t("admin.col.keyed"))
      : null,
    credential
      ? el("span", { class: "badge keyed", title: t("admin.credential_why", credentialPlace(credential)) },
        t("admin.credential_badge", credential.secret_hint ?? ""))
      : null,
  ];
}

/** `authorization: Bearer {secret}` or `?key=`. */
function credentialPlace(credential) {
  return credential.query ? `?${credential.query}=` : `${credential.header}: ${credential.template}`;
}

function renderBulk() {
  const button = document.getElementById("bulk-delete");
  button.textContent = t("admin.bulk_delete", model.selected.size);
  button.disabled = model.selected.size === 0;
  const all = document.getElementById("select-all");
  const visible = visiblePrefixes();
  all.checked = visible.length > 0 && visible.every((p) => model.selected.has(p));
}

function renderAudit() {
  const body = document.querySelector("#audit tbody");
  if (model.audit.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "empty" }, t("admin.audit_empty"))));
    return;
  }
  body.replaceChildren(...model.audit.map((e) => el("tr", {},
    el("td", {}, formatTime(e.time)),
    el("td", {}, e.actor),
    el("td", {}, el("span", { class: `badge op-${e.op}` }, e.op)),
    el("td", {}, el("code", {}, e.prefix)),
    el("td", { class: "target" }, `${e.old_target ?? "–"} → ${e.new_target ?? "–"}`))));
}

// ---- sign-in -------------------------------------------------------------

async function login(ev) {
  ev.preventDefault();
  const input = document.getElementById("token");
  const error = document.getElementById("login-error");
  error.textContent = "";
  try {
    await api("POST", "/api/admin/login", { token: input.value });
    input.value = "";
    announce("");
    await load();
    const draft = model.draft;
    model.draft = null;
    if (draft) {
      openForm(draft.editing);
      fillForm(draft.values);
    }
  } catch (e) {
    if (e.status === 401) error.textContent = t("admin.wrong_token");
    else if (e.status === 429) error.textContent = t("admin.locked", e.retryAfter || 60);
    else error.textContent = t("common.error", e.message);
    input.focus();
  }
}

async function logout() {
  try {
    await api("POST", "/api/admin/logout");
  } finally {
    model.mappings = {};
    model.invalid = {};
    model.selected.clear();
    show("login");
  }
}

// ---- add / edit ----------------------------------------------------------

function openForm(prefix) {
  model.editing = prefix;
  const dialog = document.getElementById("mapping-dialog");
  const prefixInput = document.getElementById("prefix");
  document.getElementById("mapping-dialog-title").textContent = prefix ? t("admin.form_edit", prefix) : t("admin.form_add");
  prefixInput.value = prefix || "";
  prefixInput.readOnly = Boolean(prefix);
  document.getElementById("target").value = prefix ? model.mappings[prefix] : "";
  fillPolicy(prefix ? policyOf(prefix) : null);
  clearFormErrors();
  dialog.showModal();
  (prefix ? document.getElementById("target") : prefixInput).focus();
}

/** The form's inputs that an expired session must not lose. */
const FORM_INPUTS = ["prefix", "target", "cred-preset", "cred-header", "cred-template", "cred-query", "cred-secret"];
const FORM_FIELDS = ["prefix", "target", "cred-header", "cred-template", "cred-query", "cred-secret"];

function formValues() {
  const values = Object.fromEntries(FORM_INPUTS.map((id) => [id, document.getElementById(id).value]));
  values.access = document.getElementById("access-key").checked ? "key" : "open";
  return values;
}

function fillForm(values) {
  for (const id of FORM_INPUTS) document.getElementById(id).value = values[id];
  document.getElementById(`access-${values.access}`).checked = true;
  showCredentialFields();
}

function clearFormErrors() {
  for (const id of [...FORM_FIELDS, "form", "policy"]) document.getElementById(`${id}-error`).textContent = "";
  for (const id of FORM_FIELDS) document.getElementById(id).removeAttribute("aria-invalid");
}

/** The form field an API message names, if any. */
function fieldOf(message) {
  if (/^\s*prefix\b|`prefix`/.test(message)) return "prefix";
  if (/^\s*target\b|`target`/.test(message)) return "target";
  const credential = /`upstream_credential\.(header|template|query|secret)`/.exec(message);
  if (credential) return `cred-${credential[1]}`;
  if (/API_PROXY_SECRETS_KEY/.test(message)) return "cred-secret";
  return null;
}

/** Puts the API's message next to the field it names, else under the
 * form, prefixed with `lead` when given. */
function showFormError(message, where = "form", lead = "") {
  const field = fieldOf(message);
  if (field) {
    if (lead) document.getElementById(`${where}-error`).textContent = lead;
    fieldError(field, message);
  } else {
    document.getElementById(`${where}-error`).textContent = lead ? `${lead} ${message}` : message;
  }
}

async function saveForm(ev) {
  ev.preventDefault();
  clearFormErrors();
  const prefix = document.getElementById("prefix").value.trim();
  const target = document.getElementById("target").value.trim();
  const editing = model.editing;
  const wanted = wantedPolicy();
  // A policy that guards (or swaps the credential) is written before the
  // mapping, so that no request reaches a new mapping, or a changed
  // target, unguarded or with the credential meant for the old one; a
  // policy being removed goes after the mapping.
  const policyFirst = needsPolicy(wanted);
  let madePolicy = false;
  if (policyFirst) {
    // A new mapping's prefix is checked first: a policy written for a
    // prefix the API then refuses (taken, or invalid) would be left behind.
    if (!editing && !(await newPrefixFree(prefix))) return;
    try {
      madePolicy = await savePolicy(editing ?? prefix, wanted);
    } catch (e) {
      if (e.status !== 401) showFormError(e.message, "policy");
      return;
    }
  }
  // An edit that only changes the policy leaves the mapping as it is.
  let saved = editing;
  try {
    if (!editing || model.mappings[editing] !== target) {
      const reply = await guarded(() => (editing
        ? api("PUT", `/api/mappings/${encodePrefix(editing)}`, { target })
        : api("POST", "/api/mappings", { prefix, target })));
      saved = reply.mapping.prefix;
    }
  } catch (e) {
    // A policy made for a mapping that was not created goes again.
    if (madePolicy) await api("DELETE", `/api/policies/${encodePrefix(prefix)}`).catch(() => {});
    // The dialog stays open with the input as typed.
    showFormError(e.message);
    await load();
    return;
  }
  // The mapping is written: from here on a retry edits it.
  model.editing = saved;
  document.getElementById("prefix").readOnly = true;
  document.getElementById("mapping-dialog-title").textContent = t("admin.form_edit", saved);
  try {
    if (!policyFirst) await savePolicy(saved, wanted);
  } catch (e) {
    if (e.status !== 401) showFormError(e.message, "policy", t("admin.policy_not_saved", saved));
    await load();
    return;
  }
  document.getElementById("mapping-dialog").close();
  announce(t("admin.saved", saved), "ok");
  await load();
}

/** Whether a new mapping may take `prefix`: it starts with `/` and the
 * API holds no mapping for it in any spelling; else the reason is shown
 * beside the field. */
async function newPrefixFree(prefix) {
  if (!prefix.startsWith("/")) {
    fieldError("prefix", t("admin.prefix_slash"));
    return false;
  }
  try {
    await api("GET", `/api/mappings/${encodePrefix(prefix)}`);
  } catch (e) {
    if (e.status === 404) return true;
    if (e.status !== 401) showFormError(e.message);
    return false;
  }
  fieldError("prefix", t("admin.prefix_taken", prefix));
  return false;
}

/** Shows `message` beside the field `id` and moves focus there. */
function fieldError(id, message) {
  document.getElementById(`${id}-error`).textContent = message;
  const input = document.getElementById(id);
  input.setAttribute("aria-invalid", "true");
  input.focus();
}

// ---- access policy -------------------------------------------------------

/** Where each upstream wants its key; the fixed ones fill the fields. */
const PRESETS = {
  openai: { fixed: true, header: "Authorization", template: "Bearer {secret}" },
  anthropic: { fixed: true, header: "x-api-key", template: "{secret}" },
  gemini: { fixed: true, header: "x-goog-api-key", template: "{secret}" },
  gemini_query: { fixed: true, query: "key" },
  custom_header: { header: "" },
  custom_query: { query: "" },
};

/** The preset a stored credential matches ("" for none). */
function presetOf(credential) {
  if (!credential) return "";
  const named = Object.entries(PRESETS).find(([, p]) => p.fixed && (credential.query
    ? p.query === credential.query
    : p.header && p.header.toLowerCase() === credential.header.toLowerCase() && p.template === credential.template));
  if (named) return named[0];
  return credential.query ? "custom_query" : "custom_header";
}

/** The policy's part of the form as stored for the mapping (none: open). */
function fillPolicy(policy) {
  const credential = policy ? policy.upstream_credential : null;
  document.getElementById(`access-${policy ? policy.access : "open"}`).checked = true;
  document.getElementById("cred-preset").value = presetOf(credential);
  document.getElementById("cred-header").value = credential?.header ?? "";
  document.getElementById("cred-template").value = credential?.template ?? "";
  document.getElementById("cred-query").value = credential?.query ?? "";
  document.getElementById("cred-secret").value = "";
  showCredentialFields();
}

/** Shows the fields the chosen preset needs. The secret is write-only:
 * its field is empty, with the stored one's last four characters as a
 * placeholder; left empty, the stored one is kept. */
function showCredentialFields() {
  const preset = PRESETS[document.getElementById("cred-preset").value];
  const inHeader = Boolean(preset) && preset.query === undefined;
  document.getElementById("cred-header-fields").hidden = !inHeader;
  document.getElementById("cred-query-fields").hidden = !preset || inHeader;
  document.getElementById("cred-secret-fields").hidden = !preset;
  for (const id of ["header", "template", "query"]) {
    const input = document.getElementById(`cred-${id}`);
    input.readOnly = Boolean(preset && preset.fixed);
    if (input.readOnly) input.value = preset[id] ?? "";
  }
  const template = document.getElementById("cred-template");
  if (inHeader && !template.value) template.value = "{secret}";
  const stored = model.editing ? policyOf(model.editing)?.upstream_credential : null;
  const hint = stored ? stored.secret_hint : null;
  document.getElementById("cred-secret").placeholder = hint ?? "";
  document.getElementById("cred-secret-hint").textContent = hint ? t("admin.cred_secret_keep", hint) : t("admin.cred_secret_new");
}

/** The policy the form asks for, as `PUT /api/policies/{prefix}` takes it. */
function wantedPolicy() {
  const value = (id) => document.getElementById(id).value.trim();
  const access = document.getElementById("access-key").checked ? "key" : "open";
  const preset = PRESETS[value("cred-preset")];
  if (!preset) return { access, upstream_credential: null };
  const credential = preset.query !== undefined
    ? { query: value("cred-query") }
    : { header: value("cred-header"), template: value("cred-template") };
  const secret = value("cred-secret");
  if (secret) credential.secret = secret;
  return { access, upstream_credential: credential };
}

/** Whether `wanted` changes nothing of `stored` (no new secret either). */
function samePolicy(stored, wanted) {
  if (!stored || stored.access !== wanted.access) return false;
  const [s, w] = [stored.upstream_credential, wanted.upstream_credential];
  if (!s || !w) return !s && !w;
  return !w.secret && (s.query ?? "") === (w.query ?? "")
    && (s.header ?? "").toLowerCase() === (w.header ?? "").toLowerCase()
    && (s.template ?? "") === (w.template ?? "");
}

/** Whether `policy` (as the form asks for it) is more than an open mapping. */
function needsPolicy(policy) {
  return policy.access !== "open" || Boolean(policy.upstream_credential);
}

/** Writes `wanted` as the policy of `prefix`: open with no credential
 * removes a stored one; the first policy on this Redis brings up the
 * warning about Go-version nodes, which stays until closed. True when it
 * made a policy where there was none. */
async function savePolicy(prefix, wanted) {
  const stored = policyOf(prefix);
  const path = `/api/policies/${encodePrefix(prefix)}`;
  if (!needsPolicy(wanted)) {
    if (stored) await guarded(() => api("DELETE", path));
    return false;
  }
  if (samePolicy(stored, wanted)) return false;
  const reply = await guarded(() => api("PUT", path, wanted));
  if (reply.first_policy) document.getElementById("policy-warning").hidden = false;
  return !stored;
}

/** The policy of the mapping `prefix`. Policies are kept under a prefix's
 * one spelling; a mapping the Go version wrote may be in another
 * (`/trail/`, raw UTF-8), so that spelling is tried too. */
function policyOf(prefix) {
  return model.policies[prefix] ?? model.policies[oneSpelling(prefix)] ?? null;
}

/** A prefix's one spelling, as the API stores it: no trailing `/` (but
 * `/` itself), non-ASCII percent-encoded as UTF-8 with upper-case hex. */
function oneSpelling(prefix) {
  const trimmed = prefix.length > 1 ? prefix.replace(/\/+$/, "") || "/" : prefix;
  return trimmed.replace(/[^\x00-\x7f]+/gu, (run) => encodeURIComponent(run));
}

/** `/google/v1` → `google/v1`; the prefix `/` itself is `%2F`. */
function encodePrefix(prefix) {
  if (prefix === "/") return "%2F";
  return prefix.slice(1).split("/").map(encodeURIComponent).join("/");
}

// ---- delete --------------------------------------------------------------

async function deleteOne(prefix) {
  if (!(await confirmDialog(t("admin.confirm_delete", prefix)))) return;
  try {
    await guarded(() => api("DELETE", `/api/mappings/${encodePrefix(prefix)}`));
    model.selected.delete(prefix);
    announce(t("admin.deleted", prefix), "ok");
  } catch (e) {
    announce(t("common.error", e.message), "error");
  }
  await load();
}

async function deleteSelected() {
  const prefixes = [...model.selected].sort();
  if (!(await confirmDialog(t("admin.confirm_bulk", prefixes.length)))) return;
  const failed = [];
  for (const prefix of prefixes) {
    try {
      await guarded(() => api("DELETE", `/api/mappings/${encodePrefix(prefix)}`));
      model.selected.delete(prefix);
    } catch (e) {
      if (e.status === 401) return;
      failed.push(`${prefix} (${e.message})`);
    }
  }
  if (failed.length) announce(t("admin.bulk_failed", failed.length, failed.join(", ")), "error");
  else announce(t("admin.deleted", prefixes.join(", ")), "ok");
  await load();
}

// ---- import / export -----------------------------------------------------

/** Accepts `{"mappings": {...}}` (what export writes) or a bare object. */
function parseImport(text) {
  const data = JSON.parse(text);
  const mappings = data && typeof data === "object" && !Array.isArray(data) && data.mappings ? data.mappings : data;
  if (!mappings || typeof mappings !== "object" || Array.isArray(mappings)) throw new Error("expected an object");
  for (const [prefix, target] of Object.entries(mappings)) {
    if (typeof target !== "string") throw new Error(`${prefix}: target must be a string`);
  }
  return mappings;
}

function diff(current, next) {
  const added = [];
  const changed = [];
  const removed = [];
  for (const [p, target] of Object.entries(next)) {
    if (!(p in current)) added.push([p, target]);
    else if (current[p] !== target) changed.push([p, `${current[p]} → ${target}`]);
  }
  for (const [p, target] of Object.entries(current)) if (!(p in next)) removed.push([p, target]);
  return { added, changed, removed };
}

async function previewImport() {
  const error = document.getElementById("import-error");
  const out = document.getElementById("import-diff");
  error.textContent = "";
  out.replaceChildren();
  model.importing = null;
  document.getElementById("import-apply").disabled = true;
  let mappings;
  try {
    mappings = parseImport(document.getElementById("import-text").value);
  } catch (e) {
    error.textContent = t("admin.import_invalid", e.message);
    return;
  }
  const d = diff(model.mappings, mappings);
  const section = (key, items) => (items.length
    ? el("div", { class: `diff ${key}` }, el("h3", {}, `${t(`admin.diff_${key}`)} (${items.length})`),
      el("ul", {}, items.map(([p, v]) => el("li", {}, el("code", {}, p), " ", v))))
    : null);
  const parts = [section("added", d.added), section("changed", d.changed), section("removed", d.removed)].filter(Boolean);
  out.replaceChildren(...(parts.length ? parts : [el("p", {}, t("admin.diff_none"))]));
  model.importing = mappings;
  document.getElementById("import-apply").disabled = false;
}

async function applyImport(ev) {
  ev.preventDefault();
  if (!model.importing) return;
  const error = document.getElementById("import-error");
  try {
    const reply = await guarded(() => api("PUT", "/api/mappings", { mappings: model.importing }));
    document.getElementById("import-dialog").close();
    announce(t("admin.imported", reply.count ?? Object.keys(model.importing).length, reply.version ?? ""), "ok");
    await load();
  } catch (e) {
    error.textContent = e.message;
  }
}

function exportMappings() {
  const blob = new Blob([JSON.stringify({ mappings: model.mappings }, null, 2)], { type: "application/json" });
  const link = el("a", { href: URL.createObjectURL(blob), download: `apiproxy-mappings-v${model.version}.json` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  setupLanguage(() => {
    render();
    showCredentialFields();
  });
  document.getElementById("login-form").addEventListener("submit", login);
  document.getElementById("logout").addEventListener("click", logout);
  document.getElementById("search").addEventListener("input", renderMappings);
  document.getElementById("add").addEventListener("click", () => openForm(null));
  document.getElementById("mapping-form").addEventListener("submit", saveForm);
  document.getElementById("cred-preset").addEventListener("change", showCredentialFields);
  document.getElementById("policy-warning-close").addEventListener("click", () => {
    document.getElementById("policy-warning").hidden = true;
    document.getElementById("add").focus();
  });
  document.getElementById("mapping-cancel").addEventListener("click", () => document.getElementById("mapping-dialog").close());
  document.getElementById("bulk-delete").addEventListener("click", deleteSelected);
  // Selects what the search shows, never rows the operator cannot see.
  document.getElementById("select-all").addEventListener("change", (ev) => {
    model.selected = ev.target.checked ? new Set(visiblePrefixes()) : new Set();
    renderMappings();
  });
  document.getElementById("export").addEventListener("click", exportMappings);
  document.getElementById("import").addEventListener("click", () => {
    document.getElementById("import-error").textContent = "";
    document.getElementById("import-diff").replaceChildren();
    document.getElementById("import-apply").disabled = true;
    document.getElementById("import-dialog").showModal();
  });
  document.getElementById("import-cancel").addEventListener("click", () => document.getElementById("import-dialog").close());
  document.getElementById("import-preview").addEventListener("click", previewImport);
  document.getElementById("import-text").addEventListener("input", () => {
    document.getElementById("import-apply").disabled = true;
  });
  document.getElementById("import-file").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    if (!file) return;
    document.getElementById("import-text").value = await file.text();
    previewImport();
  });
  document.getElementById("import-form").addEventListener("submit", applyImport);
  load(true);
});
