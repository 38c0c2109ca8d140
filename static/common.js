// Shared by the dashboard and the admin console: translations, the API
// client, and small DOM helpers. No framework and no network beyond this
// control plane: the console must work in an air-gapped cluster.
"use strict";

const I18N = {
  en: {
    "nav.dashboard": "Dashboard",
    "nav.admin": "Admin",
    "nav.keys": "Keys",
    "lang.switch": "中文",
    "lang.label": "Switch language to Chinese",
    "common.loading": "Loading…",
    "common.error": "Could not load: {0}",
    "common.retry": "Retry",
    "common.cancel": "Cancel",
    "common.save": "Save",
    "common.close": "Close",
    "common.copy": "Copy",
    "common.copied": "Copied",
    "common.never": "never",
    "common.signin_needed": "Sign in to the admin console to see this.",
    "common.skip": "Skip to content",
    "dash.title": "apiproxy dashboard",
    "dash.total": "Total requests",
    "dash.rps": "Requests/s",
    "dash.p50": "p50 latency",
    "dash.p99": "p99 latency",
    "dash.error_rate": "Error rate",
    "dash.nodes_up": "Nodes up",
    "dash.charts": "Traffic",
    "dash.filter": "Endpoint",
    "dash.failure_filter": "Failures of",
    "dash.all_endpoints": "All endpoints",
    "dash.minute_chart": "Requests per minute and p99 (last 24 h)",
    "dash.hour_chart": "Requests per hour and p99 (last 30 days)",
    "dash.no_data": "No traffic recorded yet.",
    "dash.endpoints": "Endpoints",
    "dash.proxy_base": "Proxy base URL",
    "dash.col.prefix": "Prefix",
    "dash.col.count": "Requests",
    "dash.col.errors": "Errors",
    "dash.col.p50": "p50",
    "dash.col.p99": "p99",
    "dash.col.url": "Proxy URL",
    "dash.no_endpoints": "No endpoints yet. Add a mapping in the admin console.",
    "dash.examples": "Examples",
    "dash.nodes": "Data-plane nodes",
    "dash.col.node": "Node",
    "dash.col.state": "State",
    "dash.col.version": "Config version",
    "dash.col.inflight": "In flight",
    "dash.col.memory": "Memory",
    "dash.col.uptime": "Uptime",
    "dash.col.last_seen": "Last seen",
    "dash.no_nodes": "No data plane has reported yet.",
    "dash.not_converged": "The fleet has not converged: nodes serve versions {0}; the current version is {1}.",
    "dash.updated": "Updated {0}",
    "dash.failures": "Recent failures",
    "dash.failures_signin": "Sign in to the admin console to see the recent failures.",
    "dash.no_failures": "No failed requests recorded.",
    "dash.no_failures_match": "No recent failure on this endpoint.",
    "dash.no_mapping": "no mapping",
    "dash.col.time": "Time",
    "dash.col.endpoint": "Endpoint",
    "dash.col.status": "Status",
    "dash.col.error_type": "Error type",
    "dash.col.duration": "Duration",
    "dash.col.request_id": "Request id",
    "state.up": "up",
    "state.stale": "stale",
    "state.down": "down",
    "admin.title": "apiproxy admin",
    "admin.login": "Sign in",
    "admin.token": "Admin token",
    "admin.login_button": "Sign in",
    "admin.wrong_token": "Wrong token.",
    "admin.locked": "Too many attempts. Try again in {0} s.",
    "admin.logout": "Sign out",
    "admin.mappings": "Mappings",
    "admin.search": "Search mappings",
    "admin.add": "Add mapping",
    "admin.edit": "Edit",
    "admin.delete": "Delete",
    "admin.bulk_delete": "Delete selected ({0})",
    "admin.import": "Import",
    "admin.export": "Export",
    "admin.col.select": "Select",
    "admin.col.prefix": "Prefix",
    "admin.col.target": "Target",
    "admin.col.actions": "Actions",
    "admin.empty": "No mappings yet.",
    "admin.no_match": "No mapping matches the search.",
    "admin.version": "Version {0} · {1} mappings",
    "admin.not_routed": "not routed",
    "admin.not_routed_why": "The proxy skips this entry: {0}",
    "admin.form_add": "Add a mapping",
    "admin.form_edit": "Edit {0}",
    "admin.prefix_hint": "Starts with /, e.g. /openai",
    "admin.target_hint": "http(s) URL, e.g. https://api.openai.com",
    "admin.confirm_delete": "Delete {0}? Traffic to it gets 404 at once.",
    "admin.confirm_bulk": "Delete {0} mappings? Traffic to them gets 404 at once.",
    "admin.saved": "Saved {0}.",
    "admin.deleted": "Deleted {0}.",
    "admin.bulk_failed": "{0} could not be deleted: {1}",
    "admin.import_title": "Import mappings (replaces the whole set)",
    "admin.import_file": "JSON file",
    "admin.import_text": "or paste JSON",
    "admin.import_preview": "Show changes",
    "admin.import_apply": "Replace all",
    "admin.import_invalid": "Not a JSON object of prefix → target: {0}",
    "admin.diff_added": "Added",
    "admin.diff_changed": "Changed",
    "admin.diff_removed": "Removed",
    "admin.diff_none": "No changes.",
    "admin.imported": "Imported: {0} mappings, version {1}.",
    "admin.audit": "Audit log",
    "admin.col.time": "Time",
    "admin.col.actor": "Who",
    "admin.col.op": "Change",
    "admin.col.change": "Old → new",
    "admin.audit_empty": "No changes recorded yet.",
    "admin.session_expired": "Your session ended. Sign in again; your input is kept.",
    "admin.col.keyed": "proxy key",
    "admin.credential_badge": "credential {0}",
    "admin.first_policy_close": "Close this warning",
    "admin.keyed_why": "Clients need a proxy key (Keys page).",
    "admin.credential_why": "The proxy puts the stored upstream credential ({0}) in place of the client's.",
    "admin.policy": "Access policy",
    "admin.access_open": "Open: anyone who reaches the proxy",
    "admin.access_key": "A proxy key is required",
    "admin.credential": "Upstream credential",
    "admin.cred_none": "None: clients send their own",
    "admin.cred_openai": "OpenAI (Authorization: Bearer)",
    "admin.cred_anthropic": "Anthropic (x-api-key)",
    "admin.cred_gemini": "Gemini (x-goog-api-key)",
    "admin.cred_gemini_query": "Gemini (query parameter key)",
    "admin.cred_custom_header": "Custom header",
    "admin.cred_custom_query": "Custom query parameter",
    "admin.cred_header": "Header",
    "admin.cred_template": "Value template ({secret} stands for the key)",
    "admin.cred_query": "Query parameter",
    "admin.cred_secret": "Upstream API key",
    "admin.cred_secret_new": "Write-only: stored encrypted, never shown again.",
    "admin.cred_secret_keep": "Stored: {0}. Leave empty to keep it; write-only, never shown.",
    "admin.policy_not_saved": "{0} is saved, but not its access policy.",
    "admin.prefix_slash": "The prefix must start with /.",
    "admin.prefix_taken": "A mapping for {0} already exists: edit it instead.",
    "admin.first_policy": "This is the first access policy on this Redis. Retire every Go-version apiproxy node that uses it now: they know nothing of policies and would serve keyed mappings openly, without the upstream credential.",
    "keys.title": "apiproxy keys",
    "keys.signin": "Sign in to the admin console to manage the proxy keys.",
    "keys.signin_link": "Go to sign-in",
    "keys.session_expired": "Your session ended. Sign in again in the admin console.",
    "keys.create": "Create a key",
    "keys.name": "Name",
    "keys.name_hint": "What the key is for, e.g. ci-bot",
    "keys.allowed": "Allowed prefixes",
    "keys.scope_all": "All mappings",
    "keys.scope_list": "Only these:",
    "keys.no_mappings": "No mappings yet.",
    "keys.choose_prefix": "Choose at least one prefix, or allow all mappings.",
    "keys.expiry": "Expires (optional)",
    "keys.expiry_hint": "In your local time; empty: never expires.",
    "keys.create_button": "Create key",
    "keys.created": "Created key {0}. Copy it now: it is shown only once.",
    "keys.secret_title": "New key {0}",
    "keys.secret_once": "Copy this key now: you will not see it again. The proxy keeps only its SHA-256.",
    "keys.secret": "Proxy key",
    "keys.secret_done": "I have copied it",
    "keys.copy_secret": "Copy the proxy key",
    "keys.list": "Proxy keys",
    "keys.count": "Keys: {0}",
    "keys.empty": "No keys yet.",
    "keys.col.name": "Name",
    "keys.col.id": "Id",
    "keys.col.prefixes": "Allowed prefixes",
    "keys.col.enabled": "State",
    "keys.col.expires": "Expires",
    "keys.col.created": "Created",
    "keys.col.last_used": "Last used",
    "keys.col.bytes_in": "Bytes in",
    "keys.col.bytes_out": "Bytes out",
    "keys.all": "all",
    "keys.no_expiry": "never",
    "keys.enabled": "enabled",
    "keys.disabled": "disabled",
    "keys.expired": "expired",
    "keys.enable": "Enable",
    "keys.disable": "Disable",
    "keys.usage": "Usage",
    "keys.usage_title": "Usage of {0}",
    "keys.usage_empty": "No requests with this key yet.",
    "keys.usage_chart": "Requests per hour (last 24 h)",
    "keys.confirm_delete": "Delete the key {0}? Clients using it get 401 at once.",
    "keys.deleted": "Deleted key {0}.",
    "keys.enabled_now": "Enabled key {0}.",
    "keys.disabled_now": "Disabled key {0}: new requests with it get 403.",
  },
  zh: {
    "nav.dashboard": "仪表盘",
    "nav.admin": "管理",
    "nav.keys": "密钥",
    "lang.switch": "English",
    "lang.label": "切换到英文",
    "common.loading": "加载中…",
    "common.error": "加载失败：{0}",
    "common.retry": "重试",
    "common.cancel": "取消",
    "common.save": "保存",
    "common.close": "关闭",
    "common.copy": "复制",
    "common.copied": "已复制",
    "common.never": "从未",
    "common.signin_needed": "请先登录管理控制台。",
    "common.skip": "跳到正文",
    "dash.title": "apiproxy 仪表盘",
    "dash.total": "请求总数",
    "dash.rps": "每秒请求",
    "dash.p50": "p50 延迟",
    "dash.p99": "p99 延迟",
    "dash.error_rate": "错误率",
    "dash.nodes_up": "在线节点",
    "dash.charts": "流量",
    "dash.filter": "端点",
    "dash.failure_filter": "失败请求的端点",
    "dash.all_endpoints": "全部端点",
    "dash.minute_chart": "每分钟请求数与 p99（最近 24 小时）",
    "dash.hour_chart": "每小时请求数与 p99（最近 30 天）",
    "dash.no_data": "尚无流量记录。",
    "dash.endpoints": "端点",
    "dash.proxy_base": "代理基础地址",
    "dash.col.prefix": "前缀",
    "dash.col.count": "请求数",
    "dash.col.errors": "错误",
    "dash.col.p50": "p50",
    "dash.col.p99": "p99",
    "dash.col.url": "代理地址",
    "dash.no_endpoints": "还没有端点。请在管理控制台添加映射。",
    "dash.examples": "示例",
    "dash.nodes": "数据面节点",
    "dash.col.node": "节点",
    "dash.col.state": "状态",
    "dash.col.version": "配置版本",
    "dash.col.inflight": "处理中",
    "dash.col.memory": "内存",
    "dash.col.uptime": "运行时间",
    "dash.col.last_seen": "最后上报",
    "dash.no_nodes": "还没有数据面节点上报。",
    "dash.not_converged": "集群配置尚未一致：节点使用版本 {0}；当前版本为 {1}。",
    "dash.updated": "更新于 {0}",
    "dash.failures": "最近的失败请求",
    "dash.failures_signin": "登录管理控制台后可查看最近的失败请求。",
    "dash.no_failures": "尚无失败请求记录。",
    "dash.no_failures_match": "此端点最近没有失败请求。",
    "dash.no_mapping": "无映射",
    "dash.col.time": "时间",
    "dash.col.endpoint": "端点",
    "dash.col.status": "状态码",
    "dash.col.error_type": "错误类型",
    "dash.col.duration": "耗时",
    "dash.col.request_id": "请求 ID",
    "state.up": "在线",
    "state.stale": "配置落后",
    "state.down": "离线",
    "admin.title": "apiproxy 管理",
    "admin.login": "登录",
    "admin.token": "管理令牌",
    "admin.login_button": "登录",
    "admin.wrong_token": "令牌错误。",
    "admin.locked": "尝试次数过多，请 {0} 秒后再试。",
    "admin.logout": "退出登录",
    "admin.mappings": "映射",
    "admin.search": "搜索映射",
    "admin.add": "添加映射",
    "admin.edit": "编辑",
    "admin.delete": "删除",
    "admin.bulk_delete": "删除所选（{0}）",
    "admin.import": "导入",
    "admin.export": "导出",
    "admin.col.select": "选择",
    "admin.col.prefix": "前缀",
    "admin.col.target": "目标",
    "admin.col.actions": "操作",
    "admin.empty": "还没有映射。",
    "admin.no_match": "没有匹配的映射。",
    "admin.version": "版本 {0} · {1} 个映射",
    "admin.not_routed": "未路由",
    "admin.not_routed_why": "代理跳过此条目：{0}",
    "admin.form_add": "添加映射",
    "admin.form_edit": "编辑 {0}",
    "admin.prefix_hint": "以 / 开头，例如 /openai",
    "admin.target_hint": "http(s) 地址，例如 https://api.openai.com",
    "admin.confirm_delete": "删除 {0}？发往它的请求将立即返回 404。",
    "admin.confirm_bulk": "删除 {0} 个映射？发往它们的请求将立即返回 404。",
    "admin.saved": "已保存 {0}。",
    "admin.deleted": "已删除 {0}。",
    "admin.bulk_failed": "{0} 未能删除：{1}",
    "admin.import_title": "导入映射（替换全部）",
    "admin.import_file": "JSON 文件",
    "admin.import_text": "或粘贴 JSON",
    "admin.import_preview": "查看变更",
    "admin.import_apply": "全部替换",
    "admin.import_invalid": "不是“前缀 → 目标”的 JSON 对象：{0}",
    "admin.diff_added": "新增",
    "admin.diff_changed": "修改",
    "admin.diff_removed": "删除",
    "admin.diff_none": "没有变更。",
    "admin.imported": "已导入：{0} 个映射，版本 {1}。",
    "admin.audit": "审计日志",
    "admin.col.time": "时间",
    "admin.col.actor": "操作者",
    "admin.col.op": "变更",
    "admin.col.change": "旧 → 新",
    "admin.audit_empty": "还没有变更记录。",
    "admin.session_expired": "会话已结束。请重新登录；您的输入已保留。",
    "admin.col.keyed": "需密钥",
    "admin.credential_badge": "凭据 {0}",
    "admin.first_policy_close": "关闭此警告",
    "admin.keyed_why": "客户端需要代理密钥（见“密钥”页）。",
    "admin.credential_why": "代理会用保存的上游凭据（{0}）替换客户端的凭据。",
    "admin.policy": "访问策略",
    "admin.access_open": "开放：任何能访问代理的人",
    "admin.access_key": "需要代理密钥",
    "admin.credential": "上游凭据",
    "admin.cred_none": "无：由客户端自带",
    "admin.cred_openai": "OpenAI（Authorization: Bearer）",
    "admin.cred_anthropic": "Anthropic（x-api-key）",
    "admin.cred_gemini": "Gemini（x-goog-api-key）",
    "admin.cred_gemini_query": "Gemini（查询参数 key）",
    "admin.cred_custom_header": "自定义请求头",
    "admin.cred_custom_query": "自定义查询参数",
    "admin.cred_header": "请求头",
    "admin.cred_template": "值模板（{secret} 代表密钥）",
    "admin.cred_query": "查询参数",
    "admin.cred_secret": "上游 API 密钥",
    "admin.cred_secret_new": "只写：加密保存，之后不再显示。",
    "admin.cred_secret_keep": "已保存：{0}。留空则保留；只写，不会显示。",
    "admin.policy_not_saved": "{0} 已保存，但其访问策略未保存。",
    "admin.prefix_slash": "前缀必须以 / 开头。",
    "admin.prefix_taken": "{0} 的映射已存在：请改为编辑它。",
    "admin.first_policy": "这是此 Redis 上的第一条访问策略。请立即停用使用它的所有 Go 版本 apiproxy 节点：它们不识别策略，会公开提供需密钥的映射，且不注入上游凭据。",
    "keys.title": "apiproxy 密钥",
    "keys.signin": "请先登录管理控制台以管理代理密钥。",
    "keys.signin_link": "前往登录",
    "keys.session_expired": "会话已结束。请在管理控制台重新登录。",
    "keys.create": "创建密钥",
    "keys.name": "名称",
    "keys.name_hint": "密钥的用途，例如 ci-bot",
    "keys.allowed": "允许的前缀",
    "keys.scope_all": "全部映射",
    "keys.scope_list": "仅限以下：",
    "keys.no_mappings": "还没有映射。",
    "keys.choose_prefix": "请至少选择一个前缀，或允许全部映射。",
    "keys.expiry": "过期时间（可选）",
    "keys.expiry_hint": "本地时间；留空表示永不过期。",
    "keys.create_button": "创建密钥",
    "keys.created": "已创建密钥 {0}。请立即复制：它只显示这一次。",
    "keys.secret_title": "新密钥 {0}",
    "keys.secret_once": "请立即复制此密钥：它不会再次显示。代理只保存它的 SHA-256。",
    "keys.secret": "代理密钥",
    "keys.secret_done": "我已复制",
    "keys.copy_secret": "复制代理密钥",
    "keys.list": "代理密钥",
    "keys.count": "共 {0} 个密钥",
    "keys.empty": "还没有密钥。",
    "keys.col.name": "名称",
    "keys.col.id": "ID",
    "keys.col.prefixes": "允许的前缀",
    "keys.col.enabled": "状态",
    "keys.col.expires": "过期时间",
    "keys.col.created": "创建时间",
    "keys.col.last_used": "最后使用",
    "keys.col.bytes_in": "流入字节",
    "keys.col.bytes_out": "流出字节",
    "keys.all": "全部",
    "keys.no_expiry": "永不过期",
    "keys.enabled": "已启用",
    "keys.disabled": "已停用",
    "keys.expired": "已过期",
    "keys.enable": "启用",
    "keys.disable": "停用",
    "keys.usage": "用量",
    "keys.usage_title": "{0} 的用量",
    "keys.usage_empty": "此密钥尚无请求。",
    "keys.usage_chart": "每小时请求数（最近 24 小时）",
    "keys.confirm_delete": "删除密钥 {0}？使用它的客户端将立即收到 401。",
    "keys.deleted": "已删除密钥 {0}。",
    "keys.enabled_now": "已启用密钥 {0}。",
    "keys.disabled_now": "已停用密钥 {0}：使用它的新请求将收到 403。",
  },
};

let lang = localStorage.getItem("apiproxy.lang") === "zh" ? "zh" : "en";

/** The text for `key` in the current language, with {0}, {1}… filled. */
function t(key, ...args) {
  const text = I18N[lang][key] ?? I18N.en[key] ?? key;
  return text.replace(/\{(\d+)\}/g, (_, i) => String(args[Number(i)] ?? ""));
}

/** Fills every [data-i18n] element (text) and [data-i18n-*] attribute. */
function translatePage() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  for (const el of document.querySelectorAll("[data-i18n]")) {
    el.textContent = t(el.dataset.i18n);
  }
  for (const attr of ["placeholder", "aria-label", "title"]) {
    for (const el of document.querySelectorAll(`[data-i18n-${attr}]`)) {
      el.setAttribute(attr, t(el.getAttribute(`data-i18n-${attr}`)));
    }
  }
  // The name starts with what the button shows, so a voice-control user
  // reaches it by saying what they see (WCAG 2.5.3, label in name).
  const sw = document.getElementById("lang-switch");
  if (sw) {
    sw.textContent = t("lang.switch");
    sw.setAttribute("aria-label", `${t("lang.switch")} – ${t("lang.label")}`);
  }
}

/** Wires the language button; `rerender` redraws dynamic parts. */
function setupLanguage(rerender) {
  translatePage();
  document.getElementById("lang-switch").addEventListener("click", () => {
    lang = lang === "zh" ? "en" : "zh";
    localStorage.setItem("apiproxy.lang", lang);
    translatePage();
    rerender();
  });
}

/** An API failure: HTTP status plus the server's `error` text. */
class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/** JSON call to this control plane; the session cookie goes along. */
async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, e.message || "network error");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = (data && data.error) || `HTTP ${response.status}`;
    throw new ApiError(response.status, message, response.headers.get("retry-after"));
  }
  return data;
}

/** Creates an element: el("td", {class: "x"}, "text", child…). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Announces `text` to screen readers and shows it in the status line. */
function announce(text, kind = "info") {
  const region = document.getElementById("status");
  if (!region) return;
  region.textContent = text;
  region.className = `status ${kind}`;
}

function formatMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  return `${Math.round(ms)} ms`;
}

function formatNumber(n) {
  return new Intl.NumberFormat(lang === "zh" ? "zh-CN" : "en").format(n);
}

function formatTime(unixMs) {
  if (!unixMs) return t("common.never");
  return new Date(unixMs).toLocaleString(lang === "zh" ? "zh-CN" : "en");
}

function formatDuration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

/** Copies `text`, falling back to a selection where the clipboard API is
 * unavailable (plain-HTTP consoles). */
async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = el("textarea", { class: "offscreen" }, text);
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
}

/** A Copy button for `text` (accessible name `label`) that says
 * "Copied" for a moment once it has copied. */
function copyButton(text, label) {
  const button = el("button", { type: "button", class: "small", "aria-label": label }, t("common.copy"));
  button.addEventListener("click", async () => {
    await copyText(text);
    button.textContent = t("common.copied");
    setTimeout(() => { button.textContent = t("common.copy"); }, 1500);
  });
  return button;
}

/** Asks `text` in the page's #confirm-dialog, the focus on its confirming
 * button; resolves true when confirmed. */
function confirmDialog(text) {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    document.getElementById("confirm-ok").focus();
  });
}
