// Small inline-SVG plots for the dashboard (no libraries, no network).
"use strict";

const Plots = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#2c7a7b", "#975a16", "#4a5568"];

  function el(name, attrs, parent) {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (parent) parent.appendChild(e);
    return e;
  }

  function title(node, text) {
    const t = el("title", {}, node);
    t.textContent = text;
    return node;
  }

  function color(i) { return PALETTE[i % PALETTE.length]; }

  function empty(container, text) {
    container.textContent = "";
    const p = document.createElement("div");
    p.className = "empty";
    p.textContent = text;
    container.appendChild(p);
  }

  function legend(container, items) {
    const div = document.createElement("div");
    div.className = "legend";
    for (const it of items) {
      const s = document.createElement("span");
      const i = document.createElement("i");
      i.style.background = it.color;
      s.appendChild(i);
      s.appendChild(document.createTextNode(it.name));
      div.appendChild(s);
    }
    container.appendChild(div);
  }

  // series: [{name, points: [[x, y], ...]}]; x are integers (epochs).
  function lineChart(container, series, opts) {
    opts = opts || {};
    const pts = series.flatMap((s) => s.points);
    if (!pts.length) return empty(container, opts.emptyText || "no data yet");
    container.textContent = "";
    const W = 420, H = 180, L = 44, R = 8, T = 8, B = 22;
    let x0 = Math.min(...pts.map((p) => p[0])), x1 = Math.max(...pts.map((p) => p[0]));
    let y0 = opts.yMin !== undefined ? opts.yMin : Math.min(0, ...pts.map((p) => p[1]));
    let y1 = Math.max(...pts.map((p) => p[1]));
    if (opts.yMax !== undefined) y1 = Math.max(y1, opts.yMax);
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { y1 = y0 + 1; }
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", class: "line-chart" }, container);
    el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#ccc" }, svg);
    el("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#ccc" }, svg);
    for (let k = 0; k <= 4; k++) {
      const v = y0 + ((y1 - y0) * k) / 4;
      const y = sy(v);
      el("line", { x1: L, y1: y, x2: W - R, y2: y, stroke: "#eee" }, svg);
      el("text", { x: L - 4, y: y + 3, "text-anchor": "end" }, svg).textContent = fmt(v);
    }
    const xt = Math.max(1, Math.ceil((x1 - x0) / 8));
    for (let x = Math.ceil(x0); x <= x1; x += xt) {
      el("text", { x: sx(x), y: H - 6, "text-anchor": "middle" }, svg).textContent = String(x);
    }
    series.forEach((s, i) => {
      if (!s.points.length) return;
      const d = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
      el("path", { d, fill: "none", stroke: color(i), "stroke-width": 1.8 }, svg);
      for (const p of s.points) {
        title(el("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: color(i) }, svg),
              `${s.name} · epoch ${p[0]}: ${fmt(p[1])}`);
      }
    });
    legend(container, series.map((s, i) => ({ name: s.name, color: color(i) })));
  }

  function fmt(v) {
    if (Math.abs(v) >= 1000) return v.toFixed(0);
    if (Math.abs(v) >= 10) return v.toFixed(1);
    return v.toFixed(2);
  }

  // coverage: [{model, num_blocks, blocks: [[peer...]...]}]; rows = hosters, columns = blocks.
  function coverageGrid(container, coverage, labelOf) {
    container.textContent = "";
    if (!coverage.length) return empty(container, "no models announced");
    for (const c of coverage) {
      const peers = [...new Set(c.blocks.flat())].sort();
      const head = document.createElement("div");
      head.className = "coverage-model";
      head.textContent = `${c.model}: ${c.num_blocks} blocks, ${peers.length} hosters` +
        (c.complete ? " — fully covered" : " — NOT fully covered");
      container.appendChild(head);
      if (!c.num_blocks) continue;
      const cell = Math.max(6, Math.min(22, Math.floor(440 / c.num_blocks)));
      const L = 110, T = 4;
      const W = L + cell * c.num_blocks + 4, H = T + (peers.length + 1) * (cell + 2) + 14;
      const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, width: Math.min(W, 640), class: "coverage-grid",
                              "data-model": c.model }, container);
      peers.forEach((peer, r) => {
        const y = T + r * (cell + 2);
        el("text", { x: L - 6, y: y + cell * 0.75, "text-anchor": "end", class: "hoster-label" }, svg)
          .textContent = labelOf(peer);
        for (let b = 0; b < c.num_blocks; b++) {
          const served = c.blocks[b].includes(peer);
          title(el("rect", { x: L + b * cell, y, width: cell - 1, height: cell, rx: 2,
                             fill: served ? color(r) : "#edf2f7", class: served ? "served" : "idle" }, svg),
                `${labelOf(peer)} · block ${b}${served ? " (served)" : ""}`);
        }
      });
      const y = T + peers.length * (cell + 2);
      el("text", { x: L - 6, y: y + cell * 0.75, "text-anchor": "end" }, svg).textContent = "replicas";
      for (let b = 0; b < c.num_blocks; b++) {
        const n = c.blocks[b].length;
        title(el("rect", { x: L + b * cell, y, width: cell - 1, height: cell, rx: 2,
                           fill: n === 0 ? "#c53030" : n === 1 ? "#dd6b20" : "#2f855a" }, svg),
              `block ${b}: ${n} hoster(s)`);
        if (cell >= 12) el("text", { x: L + b * cell + cell / 2 - 0.5, y: y + cell * 0.75, "text-anchor": "middle",
                                      fill: "#fff" }, svg).textContent = String(n);
      }
      el("text", { x: L, y: H - 2 }, svg).textContent = "block 0";
      el("text", { x: L + cell * c.num_blocks, y: H - 2, "text-anchor": "end" }, svg)
        .textContent = `block ${c.num_blocks - 1}`;
    }
  }

  const OUTCOME_COLORS = { accepted: "#2f855a", rejected: "#c53030", no_proposal: "#a0aec0",
                           pending: "#d69e2e", unknown: "#cbd5e0" };

  // epochs: newest first from the API; drawn oldest -> newest.
  function timeline(container, epochs) {
    container.textContent = "";
    if (!epochs.length) return empty(container, "no epochs yet");
    const list = [...epochs].sort((a, b) => a.epoch - b.epoch);
    const cell = 26, W = Math.max(200, list.length * (cell + 4) + 8), H = 46;
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, width: Math.min(W, 900), class: "timeline" }, container);
    list.forEach((e, i) => {
      const x = 4 + i * (cell + 4);
      const g = el("g", { class: `epoch-cell outcome-${e.outcome}`, "data-epoch": e.epoch }, svg);
      title(el("rect", { x, y: 4, width: cell, height: 22, rx: 3, fill: OUTCOME_COLORS[e.outcome] || "#cbd5e0" }, g),
            `epoch ${e.epoch}: ${e.outcome}` +
            (e.attestation_ratio != null ? `, attestation ${(100 * e.attestation_ratio).toFixed(0)}%` : "") +
            (e.elected_validator != null ? `, validator #${e.elected_validator}` : ""));
      el("text", { x: x + cell / 2, y: 40, "text-anchor": "middle" }, svg).textContent = String(e.epoch);
    });
    legend(container, Object.entries(OUTCOME_COLORS).map(([name, c]) => ({ name, color: c })));
  }

  return { lineChart, coverageGrid, timeline };
})();
