// A small SVG chart: request counts as bars, p99 latency as a line on its
// own scale. Hand-written (about 80 lines) rather than a vendored library:
// it draws exactly the two series the dashboard has.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

/**
 * Draws `buckets` ([{t, count, errors, p99_ms}], oldest first) spanning
 * `span` seconds of `step`-second buckets ending now, into `container`.
 * Buckets with no `p99_ms` at all (a proxy key's usage) draw no p99 line
 * nor its scale.
 */
function drawChart(container, buckets, { span, step, label }) {
  container.replaceChildren();
  const width = 720;
  const height = 200;
  const pad = { left: 44, right: 44, top: 10, bottom: 22 };
  const now = Math.floor(Date.now() / 1000);
  const start = Math.floor((now - span) / step) * step;
  const slots = Math.ceil(span / step) + 1;
  const maxCount = Math.max(1, ...buckets.map((b) => b.count));
  const hasP99 = buckets.some((b) => b.p99_ms !== null && b.p99_ms !== undefined);
  const maxP99 = Math.max(1, ...buckets.map((b) => b.p99_ms || 0));
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const x = (t) => pad.left + ((t - start) / step) * (plotW / slots);
  const barW = Math.max(1, plotW / slots - 0.5);

  const total = buckets.reduce((sum, b) => sum + b.count, 0);
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `${label}: ${formatNumber(total)} / max ${formatNumber(maxCount)}${hasP99 ? ` · p99 max ${formatMs(maxP99)}` : ""}`,
    class: "chart",
  });
  // Axes and scale labels.
  root.append(
    svg("line", { x1: pad.left, y1: pad.top + plotH, x2: width - pad.right, y2: pad.top + plotH, class: "axis" }),
  );
  const text = (x0, y0, anchor, content, cls) => {
    const node = svg("text", { x: x0, y: y0, "text-anchor": anchor, class: cls });
    node.textContent = content;
    root.append(node);
  };
  text(pad.left - 4, pad.top + 10, "end", formatNumber(maxCount), "scale count");
  if (hasP99) text(width - pad.right + 4, pad.top + 10, "start", formatMs(maxP99), "scale p99");
  const tick = (t) => new Date(t * 1000).toLocaleString(lang === "zh" ? "zh-CN" : "en", span <= 86400
    ? { hour: "2-digit", minute: "2-digit" }
    : { month: "numeric", day: "numeric" });
  text(pad.left, height - 6, "start", tick(start), "scale");
  text(width - pad.right, height - 6, "end", tick(now), "scale");

  const points = [];
  for (const b of buckets) {
    if (b.t < start) continue;
    const h = (b.count / maxCount) * plotH;
    const bar = svg("rect", { x: x(b.t), y: pad.top + plotH - h, width: barW, height: h, class: b.errors > 0 ? "bar has-errors" : "bar" });
    const tip = svg("title", {});
    tip.textContent = `${tick(b.t)} · ${formatNumber(b.count)} · ${t("dash.col.errors")} ${formatNumber(b.errors)}${hasP99 ? ` · p99 ${formatMs(b.p99_ms)}` : ""}`;
    bar.append(tip);
    root.append(bar);
    if (b.p99_ms !== null && b.p99_ms !== undefined) {
      points.push(`${x(b.t) + barW / 2},${pad.top + plotH - (b.p99_ms / maxP99) * plotH}`);
    }
  }
  if (points.length > 0) {
    root.append(svg("polyline", { points: points.join(" "), class: "p99-line" }));
  }
  container.append(root);
}
