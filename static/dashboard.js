// The dashboard: cards, charts, endpoints with ready-to-paste examples,
// the node table and the recent failures. Refreshes itself every few
// seconds while visible.
"use strict";

const REFRESH_MS = 5000;
const state = { stats: null, nodes: null, nodesError: null, failures: null, failuresError: null, mappings: null, version: null, error: null, diverged: 0 };
/** Recent failures fetched (all the control plane keeps, so that the
 * endpoint filter has them all to choose from) and shown. */
const FAILURES_FETCHED = 1000;
const FAILURES_SHOWN = 100;
/** Numbers each refresh: a slower, older reply never overwrites a newer one. */
let refreshes = 0;

/** Where clients reach the data planes; the console cannot know it, so
 * it is a setting kept in this browser (default: this host, port 8000). */
function proxyBase() {
  return (localStorage.getItem("apiproxy.proxyBase") || `${location.protocol}//${location.hostname}:8000`).replace(/\/+$/, "");
}

async function refresh() {
  const mine = ++refreshes;
  const filter = document.getElementById("endpoint-filter").value;
  const query = filter ? `?endpoint=${encodeURIComponent(filter)}` : "";
  // Nodes, failures and the full mapping list need a session; without
  // one the dashboard still shows the public stats.
  const [stats, nodes, list, failures] = await Promise.allSettled([
    api("GET", `/stats${query}`),
    api("GET", "/api/nodes"),
    api("GET", "/api/mappings"),
    api("GET", `/api/requests/failed?limit=${FAILURES_FETCHED}`),
  ]);
  if (mine !== refreshes) return;
  state.stats = stats.status === "fulfilled" ? stats.value : state.stats;
  state.error = stats.status === "rejected" ? stats.reason : null;
  state.nodes = nodes.status === "fulfilled" ? nodes.value.nodes : null;
  state.nodesError = nodes.status === "rejected" ? nodes.reason : null;
  state.failures = failures.status === "fulfilled" ? failures.value.requests : null;
  state.failuresError = failures.status === "rejected" ? failures.reason : null;
  // Entries the data plane skips are not endpoints: no row, no proxy URL.
  state.mappings = list.status === "fulfilled" ? routed(list.value) : null;
  state.version = list.status === "fulfilled" ? list.value.version : null;
  // Nodes report a change at their next push: only a fleet that stays
  // apart over two refreshes in a row gets the banner.
  state.diverged = state.nodes && !fleet().converged ? state.diverged + 1 : 0;
  render();
}

/** The list's mappings without the entries it marks as not routed. */
function routed(list) {
  const skipped = list.invalid || {};
  return Object.fromEntries(Object.entries(list.mappings || {}).filter(([prefix]) => !(prefix in skipped)));
}

/** The versions live nodes serve, and whether they all serve the current one. */
function fleet() {
  const live = (state.nodes || []).filter((n) => n.state !== "down");
  const versions = [...new Set(live.map((n) => n.config_version))].sort((a, b) => a - b);
  const current = state.version;
  const converged = versions.length === 0 || (versions.length === 1 && (current === null || versions[0] === current));
  return { versions, converged };
}

function render() {
  const s = state.stats;
  if (state.error) {
    announce(state.error.status === 401 ? t("common.signin_needed") : t("common.error", state.error.message), "error");
  } else {
    announce("");
  }
  renderCards(s);
  renderCharts(s);
  renderEndpoints(s);
  renderNodes();
  renderFailures();
  document.getElementById("updated").textContent = t("dash.updated", new Date().toLocaleTimeString(lang === "zh" ? "zh-CN" : "en"));
}

function renderCards(s) {
  const set = (id, v) => { document.getElementById(id).textContent = v; };
  if (!s) return;
  const endpoints = Object.values(s.endpoints);
  // The busiest endpoint's median stands for the fleet's (the API gives
  // p99 over everything, p50 per endpoint).
  const busiest = endpoints.reduce((a, b) => (b.count > (a ? a.count : -1) ? b : a), null);
  set("card-total", formatNumber(s.total));
  set("card-rps", s.performance.requests_per_sec.toFixed(1));
  set("card-p50", busiest ? formatMs(busiest.p50_ms) : "–");
  set("card-p99", formatMs(s.performance.p99_response_time_ms));
  set("card-errors", `${s.performance.error_rate.toFixed(2)} %`);
  set("card-nodes", `${s.nodes.up} / ${s.nodes.up + s.nodes.stale + s.nodes.down}`);
}

function renderCharts(s) {
  const filter = document.getElementById("endpoint-filter");
  if (s) {
    const known = new Set([...filter.options].map((o) => o.value));
    for (const prefix of Object.keys(s.endpoints).sort()) {
      if (!known.has(prefix)) filter.append(el("option", { value: prefix }, prefix));
    }
  }
  const minute = document.getElementById("chart-minute");
  const hour = document.getElementById("chart-hour");
  if (!s || (s.series.minute.length === 0 && s.series.hour.length === 0)) {
    minute.replaceChildren(el("p", { class: "empty" }, t("dash.no_data")));
    hour.replaceChildren();
    return;
  }
  drawChart(minute, s.series.minute, { span: 86400, step: 60, label: t("dash.minute_chart") });
  drawChart(hour, s.series.hour, { span: 30 * 86400, step: 3600, label: t("dash.hour_chart") });
}

function endpointRows(s) {
  const rows = new Map();
  for (const prefix of Object.keys(state.mappings || {})) rows.set(prefix, null);
  for (const [prefix, e] of Object.entries(s ? s.endpoints : {})) rows.set(prefix, e);
  return [...rows.entries()].sort(([a], [b]) => a.localeCompare(b));
}

function renderEndpoints(s) {
  const body = document.querySelector("#endpoints tbody");
  const rows = endpointRows(s);
  if (rows.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 6, class: "empty" }, t("dash.no_endpoints"))));
  } else {
    body.replaceChildren(...rows.map(([prefix, e]) => {
      const url = proxyBase() + prefix;
      return el("tr", {},
        el("th", { scope: "row" }, prefix),
        el("td", { class: "num" }, formatNumber(e ? e.count : 0)),
        el("td", { class: "num" }, formatNumber(e ? e.error_count : 0)),
        el("td", { class: "num" }, e && e.count ? formatMs(e.p50_ms) : "–"),
        el("td", { class: "num" }, e && e.count ? formatMs(e.p99_ms) : "–"),
        el("td", {}, el("code", {}, url), " ", copyButton(url, `${t("common.copy")} ${url}`)));
    }));
  }
  renderExamples();
}

/** The prefix that reaches `host` (from the mappings when signed in),
 * else the conventional one. */
function prefixFor(host, fallback) {
  for (const [prefix, target] of Object.entries(state.mappings || {})) {
    if (target.includes(host)) return prefix;
  }
  return fallback;
}

function renderExamples() {
  const base = proxyBase();
  const openai = prefixFor("api.openai.com", "/openai");
  const claude = prefixFor("api.anthropic.com", "/claude");
  const gemini = prefixFor("generativelanguage.googleapis.com", "/gemini");
  const examples = [
    ["OpenAI (streaming)", `curl -N ${base}${openai}/v1/chat/completions \\
  -H "Authorization: Bearer $OPENAI_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hello"}]}'`],
    ["Anthropic (streaming)", `curl -N ${base}${claude}/v1/messages \\
  -H "x-api-key: $ANTHROPIC_API_KEY" \\
  -H "anthropic-version: 2023-06-01" \\
  -H "Content-Type: application/json" \\
  -d '{"model":"claude-3-5-haiku-latest","max_tokens":256,"stream":true,"messages":[{"role":"user","content":"Hello"}]}'`],
    ["Gemini (streaming)", `curl -N "${base}${gemini}/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse" \\
  -H "x-goog-api-key: $GEMINI_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{"contents":[{"parts":[{"text":"Hello"}]}]}'`],
  ];
  document.getElementById("examples").replaceChildren(...examples.map(([title, code]) =>
    el("figure", { class: "example" },
      el("figcaption", {}, title, " ", copyButton(code, `${t("common.copy")} ${title}`)),
      el("pre", {}, el("code", {}, code)))));
}

function renderNodes() {
  const body = document.querySelector("#nodes tbody");
  const banner = document.getElementById("banner");
  if (!state.nodes) {
    banner.hidden = true;
    const text = state.nodesError && state.nodesError.status === 401
      ? t("common.signin_needed")
      : t("common.error", state.nodesError ? state.nodesError.message : "");
    body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "empty" }, text)));
    return;
  }
  if (state.nodes.length === 0) {
    banner.hidden = true;
    body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "empty" }, t("dash.no_nodes"))));
    return;
  }
  body.replaceChildren(...state.nodes.map((n) => el("tr", { dataset: { node: n.node_id } },
    el("th", { scope: "row" }, n.node_id),
    el("td", {}, el("span", { class: `badge ${n.state}` }, t(`state.${n.state}`))),
    el("td", { class: "num" }, n.config_version),
    el("td", { class: "num" }, formatNumber(n.inflight)),
    el("td", { class: "num" }, `${(n.rss_bytes / 1048576).toFixed(1)} MiB`),
    el("td", { class: "num" }, formatDuration(n.uptime_s)),
    el("td", {}, formatTime(n.last_seen)))));
  const { versions } = fleet();
  banner.hidden = state.diverged < 2;
  if (!banner.hidden) banner.textContent = t("dash.not_converged", versions.join(", "), state.version ?? "?");
}

/** A failure's endpoint as shown: its prefix, or "no mapping". */
function endpointName(prefix) {
  return prefix === "none" ? t("dash.no_mapping") : prefix;
}

/** The failure filter lists every endpoint among the failures, and keeps
 * the one chosen even once its failures have aged out. */
function fillFailureFilter(select) {
  const chosen = select.value;
  const prefixes = new Set((state.failures || []).map((f) => f.prefix));
  if (chosen) prefixes.add(chosen);
  const values = ["", ...[...prefixes].sort()];
  // Rebuilt only when it changes: a refresh must not close a list the
  // operator has open.
  const key = `${lang} ${values.join("\n")}`;
  if (select.dataset.key === key) return;
  select.dataset.key = key;
  select.replaceChildren(...values.map((p) => el("option", { value: p }, p ? endpointName(p) : t("dash.all_endpoints"))));
  select.value = chosen;
}

function renderFailures() {
  const body = document.querySelector("#failures tbody");
  const select = document.getElementById("failure-filter");
  const empty = (text) => body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "empty" }, text)));
  if (!state.failures) {
    delete body.dataset.key;
    select.disabled = true;
    // Failures need a session even where the stats are public: without
    // one this is an invitation, not an error.
    empty(state.failuresError && state.failuresError.status === 401
      ? t("dash.failures_signin")
      : t("common.error", state.failuresError ? state.failuresError.message : ""));
    return;
  }
  select.disabled = false;
  fillFailureFilter(select);
  const rows = state.failures
    .filter((f) => !select.value || f.prefix === select.value)
    .slice(0, FAILURES_SHOWN);
  // Rebuilt only when what it shows changes: a refresh must not take the
  // focus from a Copy button a keyboard user is on, nor wipe its "Copied".
  const key = `${lang} ${select.value} ${rows.map((f) => `${f.node_id}/${f.request_id}/${f.time}`).join(" ")}`;
  if (body.dataset.key === key) return;
  body.dataset.key = key;
  if (rows.length === 0) {
    empty(t(state.failures.length ? "dash.no_failures_match" : "dash.no_failures"));
    return;
  }
  body.replaceChildren(...rows.map((f) => el("tr", { dataset: { node: f.node_id, prefix: f.prefix, requestId: f.request_id } },
    el("td", {}, formatTime(f.time)),
    el("td", {}, f.node_id),
    el("td", {}, f.prefix === "none" ? endpointName(f.prefix) : el("code", {}, f.prefix)),
    el("td", { class: "num" }, f.status),
    el("td", {}, f.error_type ?? "–"),
    el("td", { class: "num" }, formatMs(f.duration_ms)),
    el("td", { class: "request-id" }, el("code", {}, f.request_id), " ",
      copyButton(f.request_id, `${t("common.copy")} ${f.request_id}`)))));
}

document.addEventListener("DOMContentLoaded", () => {
  const base = document.getElementById("proxy-base");
  base.value = proxyBase();
  base.addEventListener("change", () => {
    localStorage.setItem("apiproxy.proxyBase", base.value);
    render();
  });
  document.getElementById("endpoint-filter").addEventListener("change", refresh);
  document.getElementById("failure-filter").addEventListener("change", renderFailures);
  setupLanguage(render);
  refresh();
  setInterval(() => {
    if (!document.hidden) refresh();
  }, REFRESH_MS);
});
