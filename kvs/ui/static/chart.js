// A small SVG line chart (no library): series of [time ms, value] over a fixed window.
const NS = "http://www.w3.org/2000/svg";
const W = 560;
const H = 180;
const PAD = { left: 52, right: 10, top: 10, bottom: 22 };

function svg(tag, attrs) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

function nice(max) {
  if (max <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= max) return m * p;
  return 10 * p;
}

function fmt(v) {
  if (v === 0) return "0";
  if (Math.abs(v) >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (Math.abs(v) >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
  if (Math.abs(v) < 0.01) return v.toExponential(0);
  return Number(v.toPrecision(3)).toString();
}

// series: [{name, color, points: [[t, v], ...]}]
export function drawChart(el, series, { windowMs, unit = "" }) {
  while (el.firstChild) el.firstChild.remove();
  const now = Date.now();
  const t0 = now - windowMs;
  let max = 0;
  for (const s of series) for (const [t, v] of s.points) if (t >= t0 && v > max) max = v;
  max = nice(max);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" });
  const x = (t) => PAD.left + ((t - t0) / windowMs) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (v / max) * (H - PAD.top - PAD.bottom);
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    root.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: "gridline" }));
    const label = svg("text", { x: PAD.left - 4, y: y(v) + 4, "text-anchor": "end", class: "axis" });
    label.textContent = `${fmt(v)}${unit}`;
    root.append(label);
  }
  const step = windowMs > 120000 ? 60000 : windowMs > 40000 ? 15000 : 5000;
  for (let k = 0; k * step <= windowMs; k++) {
    const t = now - k * step;
    const label = svg("text", { x: x(t), y: H - 6, "text-anchor": "middle", class: "axis" });
    label.textContent = k ? (step >= 60000 ? `-${(k * step) / 60000}m` : `-${(k * step) / 1000}s`) : "now";
    root.append(label);
  }
  for (const s of series) {
    const pts = s.points.filter(([t]) => t >= t0);
    if (pts.length < 2) continue;
    const d = pts.map(([t, v], i) => `${i ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join("");
    root.append(svg("path", { d, stroke: s.color, fill: "none", "stroke-width": 1.6 }));
  }
  el.append(root);
  const legend = document.createElement("div");
  legend.className = "legend";
  for (const s of series) {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.className = `swatch ${s.cls}`;
    const last = s.points.length ? s.points[s.points.length - 1][1] : null;
    item.append(swatch, `${s.name}${last === null ? "" : `: ${fmt(last)}${unit}`}`);
    legend.append(item);
  }
  el.append(legend);
}
