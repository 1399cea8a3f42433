// Plots drawn as inline SVG: lines over time (lag, rates) and share bars.
"use strict";
const Plot = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#2f6fb3", "#e08a1e", "#1e7d32", "#b3261e", "#7b4fb3", "#1f9aa0", "#8a6d3b"];
  const NAMED = { green: "#2e9d4a", blue: "#2f6fb3", red: "#c0392b", gray: "#8896a5", canary: "#e0b31e" };

  function node(name, attrs, parent) {
    const n = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (parent) parent.appendChild(n);
    return n;
  }

  // A color per name: the color the name says (green, blue), else by index.
  function colorOf(name, i) {
    const last = String(name).split("=").pop();
    return NAMED[last] || COLORS[i % COLORS.length];
  }

  // series: [{name, points: [[unixMs, value], ...]}]; draws into a new <svg>.
  function lines(series, { width = 640, height = 200, unit = "" } = {}) {
    const svg = node("svg", { class: "plot", width, height, viewBox: `0 0 ${width} ${height}` });
    const pad = { l: 48, r: 10, t: 22, b: 22 };
    const all = series.flatMap((s) => s.points);
    if (all.length === 0) {
      node("text", { x: width / 2 - 40, y: height / 2 }, svg).textContent = "no data yet";
      return svg;
    }
    const t0 = Math.min(...all.map((p) => p[0]));
    const t1 = Math.max(...all.map((p) => p[0]), t0 + 1000);
    const vmax = Math.max(1, ...all.map((p) => p[1])) * 1.25;  // room for the legend
    const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (width - pad.l - pad.r);
    const y = (v) => height - pad.b - (v / vmax) * (height - pad.t - pad.b);
    for (let i = 0; i <= 4; i++) {
      const v = (vmax * i) / 4;
      node("line", { x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v), stroke: "#eef0f3" }, svg);
      node("text", { x: 4, y: y(v) + 3 }, svg).textContent = `${Math.round(v * 10) / 10}${unit}`;
    }
    node("text", { x: pad.l, y: height - 6 }, svg).textContent = new Date(t0).toLocaleTimeString();
    node("text", { x: width - pad.r - 50, y: height - 6 }, svg).textContent =
      new Date(t1).toLocaleTimeString();
    series.forEach((s, i) => {
      const d = s.points.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
      node("path", { d: d.join(" "), fill: "none", stroke: colorOf(s.name, i), "stroke-width": 2,
                     "data-series": s.name }, svg);
      const last = s.points.length ? s.points[s.points.length - 1][1] : "-";
      node("rect", { x: pad.l + 8 + i * 190, y: pad.t + 2, width: 10, height: 10,
                     fill: colorOf(s.name, i) }, svg);
      node("text", { x: pad.l + 22 + i * 190, y: pad.t + 11 }, svg).textContent = `${s.name}: ${last}`;
    });
    return svg;
  }

  // shares: [{name, percent}] as one horizontal bar.
  function shareBar(shares) {
    const bar = document.createElement("div");
    bar.className = "bar";
    shares.forEach((s, i) => {
      const part = document.createElement("span");
      part.style.width = `${s.percent}%`;
      part.style.background = colorOf(s.name, i);
      part.title = `${s.name}: ${s.percent.toFixed(1)}%`;
      bar.appendChild(part);
    });
    return bar;
  }

  return { lines, shareBar, colorOf };
})();
