/* The ops dashboard: polls /ops/data and draws the terminal table and four SVG charts.
 *
 * No library: each chart is a few SVG elements (grid, axes, one polyline per series or stacked bars)
 * redrawn from scratch on every poll, which at 60 minutes x a few series is cheap. Every drawn data
 * point is an element of class "pt" and each chart records how many it drew in data-points, so a
 * person can hover a point (its <title>) and a test can tell an empty chart from a drawn one.
 */
"use strict";

(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const W = 560, H = 200;
  const M = { left: 46, right: 12, top: 10, bottom: 22 };
  const PALETTE = ["#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#00838f", "#ad1457", "#5d4037", "#546e7a"];
  const STATE_COLORS = {
    filled: "#2e7d32", placed: "#1565c0", partial: "#00838f",
    rejected: "#c62828", failed: "#6a1b9a", cancelled: "#9e9e9e",
  };

  function el(tag, attrs, parent) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (parent) parent.appendChild(node);
    return node;
  }

  function pad(n) { return String(n).padStart(2, "0"); }

  function clock(t) {
    const d = new Date(t * 1000);
    return pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
  }

  function number(v) {
    if (v === null || v === undefined) return "–";
    if (Math.abs(v) >= 100 || Number.isInteger(v)) return String(Math.round(v));
    if (Math.abs(v) >= 1) return v.toFixed(1);
    return v.toFixed(3).replace(/0+$/, "").replace(/\.$/, "");
  }

  function seconds(v) {
    if (v === null || v === undefined) return "–";
    if (v < 60) return v.toFixed(1) + " s";
    if (v < 3600) return Math.floor(Math.round(v) / 60) + " min " + (Math.round(v) % 60) + " s";
    return (v / 3600).toFixed(1) + " h";
  }

  /* The smallest "round" number (1, 2, 2.5, 5 x 10^n) at or above v: the top of the y axis. */
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  /* Clear the chart and draw its grid and axes; returns the scales of the plot area. */
  function frame(svg, x0, x1, yMax) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    const pw = W - M.left - M.right, ph = H - M.top - M.bottom;
    const x = (t) => M.left + ((t - x0) / (x1 - x0)) * pw;
    const y = (v) => M.top + ph - (v / yMax) * ph;
    for (let i = 0; i <= 4; i++) {
      const v = (yMax * i) / 4, yy = y(v);
      el("line", { x1: M.left, x2: W - M.right, y1: yy, y2: yy, class: i ? "grid" : "axis" }, svg);
      el("text", { x: M.left - 6, y: yy + 3, "text-anchor": "end" }, svg).textContent = String(+v.toFixed(3));
    }
    const step = 600; // a tick every 10 minutes, on the clock's round minutes
    for (let t = Math.ceil(x0 / step) * step; t <= x1; t += step) {
      el("line", { x1: x(t), x2: x(t), y1: M.top, y2: M.top + ph, class: "grid" }, svg);
      if (x(t) < M.left + 16 || x(t) > W - M.right - 16) continue; // its label would be cut or hit the axis
      el("text", { x: x(t), y: H - 6, "text-anchor": "middle" }, svg).textContent = clock(t);
    }
    el("line", { x1: M.left, x2: M.left, y1: M.top, y2: M.top + ph, class: "axis" }, svg);
    return { x, y };
  }

  function empty(svg, text) {
    el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, svg).textContent = text;
  }

  function legend(figure, items) {
    const box = figure.querySelector(".legend");
    box.textContent = "";
    for (const item of items) {
      const span = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = item.color;
      span.appendChild(swatch);
      span.appendChild(document.createTextNode(item.label));
      box.appendChild(span);
    }
  }

  /* Consecutive points further apart than maxGap seconds are not joined: a gap (no task finished, the
   * sampler stopped) shows as a gap, not as a straight line that was never measured. */
  function runs(points, maxGap) {
    const result = [];
    for (const p of points) {
      const run = result[result.length - 1];
      if (run && p[0] - run[run.length - 1][0] <= maxGap) run.push(p);
      else result.push([p]);
    }
    return result;
  }

  /* series: [{label, color, points: [[t, v], ...]}] */
  function lineChart(figure, series, x0, x1, maxGap, unit, emptyText) {
    const svg = figure.querySelector("svg");
    let top = 0;
    for (const s of series) for (const p of s.points) top = Math.max(top, p[1]);
    const { x, y } = frame(svg, x0, x1, niceMax(top));
    let drawn = 0;
    for (const s of series) {
      const points = s.points.filter((p) => p[0] >= x0 && p[0] <= x1);
      if (!points.length) continue;
      for (const run of runs(points, maxGap)) {
        el("polyline", { points: run.map((p) => x(p[0]) + "," + y(p[1])).join(" "), stroke: s.color }, svg);
      }
      for (const p of points) {
        const dot = el("circle", { cx: x(p[0]), cy: y(p[1]), r: 2.2, fill: s.color, class: "pt" }, svg);
        el("title", {}, dot).textContent = s.label + " " + clock(p[0]) + ": " + number(p[1]) + unit;
      }
      drawn += points.length;
    }
    if (!drawn) empty(svg, emptyText);
    figure.dataset.points = String(drawn);
    legend(figure, series);
  }

  /* Stacked bars, one per minute: counts = {state: [n per minute]} */
  function stackedBars(figure, minutes, counts, x0, x1, emptyText) {
    const svg = figure.querySelector("svg");
    const states = Object.keys(counts);
    const totals = minutes.map((_, i) => states.reduce((sum, s) => sum + counts[s][i], 0));
    const { x, y } = frame(svg, x0, x1, niceMax(Math.max(0, ...totals)));
    const slot = x(x0 + 60) - x(x0);
    let drawn = 0;
    minutes.forEach((t, i) => {
      let base = 0;
      for (const state of states) {
        const n = counts[state][i];
        if (!n) continue;
        // The current minute is still going: its bar is cut at the right edge ("now").
        const width = Math.max(1, Math.min(slot - 1, x(x1) - x(t) - 0.5));
        const rect = el("rect", {
          x: x(t) + 0.5, y: y(base + n), width, height: y(base) - y(base + n),
          fill: STATE_COLORS[state] || "#78909c", class: "pt",
        }, svg);
        el("title", {}, rect).textContent = state + " " + clock(t) + ": " + n;
        base += n;
        drawn += 1;
      }
    });
    if (!drawn) empty(svg, emptyText);
    figure.dataset.points = String(drawn);
    legend(figure, states.map((s) => ({ label: s, color: STATE_COLORS[s] || "#78909c" })));
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function terminalsTable(terminals) {
    const body = document.querySelector("#terminals tbody");
    body.textContent = "";
    if (!terminals.length) {
      const row = body.insertRow();
      cell(row, "no terminal configured", "muted").colSpan = 8;
      return;
    }
    for (const t of terminals) {
      const row = body.insertRow();
      row.dataset.terminal = t.name;
      cell(row, t.name + (t.enabled ? "" : " (disabled)") + " · " + t.backend);
      const worker = t.workerAlive ? "alive" : "down";
      cell(row, worker + (t.heartbeatAge !== null ? " (" + seconds(t.heartbeatAge) + " ago)" : ""), worker);
      const a = t.account;
      cell(row, a ? a.login + " @ " + a.server + " · " + a.workspace + " (" + a.status + (a.paused ? ", paused" : "") + ")" : "–", a ? "" : "muted");
      cell(row, t.boundLogin === null ? "–" : String(t.boundLogin));
      cell(row, t.queueDepth === null ? "broker down" : String(t.queueDepth), "num queue-depth");
      cell(row, String(t.queuedTasks), "num");
      cell(row, seconds(t.oldestQueuedTaskAge), "num");
      cell(row, String(t.unknownTasks), "num unknown" + (t.unknownTasks ? " warn" : ""));
    }
  }

  function draw(data) {
    const x1 = data.asOf, x0 = x1 - data.windowSeconds;
    const sampleGap = 2.5 * data.sampling.intervalSeconds, minuteGap = 90;
    terminalsTable(data.terminals);
    const names = Object.keys(data.queueDepth);
    lineChart(document.getElementById("chart-queue"),
      names.map((name, i) => ({ label: name, color: PALETTE[i % PALETTE.length], points: data.queueDepth[name] })),
      x0, x1, sampleGap, "", "no samples yet");
    const latency = data.tasks.latency;
    lineChart(document.getElementById("chart-latency"), [
      { label: "p50", color: "#1565c0", points: latency.p50 },
      { label: "p99", color: "#c62828", points: latency.p99 },
    ], x0, x1, minuteGap, " s", "no task finished in the last hour");
    stackedBars(document.getElementById("chart-outcomes"), data.tasks.minutes, data.tasks.finalStates, x0, x1,
      "no task finished in the last hour");
    lineChart(document.getElementById("chart-events"),
      [{ label: "events/s", color: "#ef6c00", points: data.eventsPerSecond }], x0, x1, sampleGap, "/s",
      "no samples yet");
    const s = data.sampling;
    const note = document.getElementById("sampling");
    const late = s.lastSampleAge === null || s.lastSampleAge > 3 * s.intervalSeconds;
    note.className = late ? "warn" : "muted";
    note.textContent = s.lastSampleAge === null
      ? "No samples of queue depth and events in the last hour: is the maintenance worker's beat running?"
      : s.samples + " samples, one every " + s.intervalSeconds + " s; the last was " + seconds(s.lastSampleAge) +
        " ago" + (late ? ": the sampler is late (is the maintenance worker's beat running?)" : ".");
  }

  async function poll() {
    const body = document.body;
    const status = document.getElementById("status");
    try {
      const response = await fetch(body.dataset.url, {
        credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store",
      });
      if (!response.ok) {
        let message = "HTTP " + response.status;
        try { message += ": " + (await response.json()).error.message; } catch (e) { /* not the API's error body */ }
        throw new Error(message);
      }
      draw(await response.json());
      body.dataset.updates = String(Number(body.dataset.updates) + 1);
      status.className = "status";
      status.textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
    } catch (error) {
      status.className = "status error";
      status.textContent = "data unavailable (" + error.message + "); retrying";
    } finally {
      setTimeout(poll, Number(body.dataset.refreshMs) || 5000);
    }
  }

  document.addEventListener("DOMContentLoaded", poll);
})();
