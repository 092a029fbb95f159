// The ringtune dashboard: polls ./status once a second and draws the run
// with uPlot (vendored, see static/uplot/README.md). All time charts share
// one x range, from the first generation to the newest event, and mark every
// generation that formed with a dashed line.
//
// The charts record what they drew in data- attributes of their root
// (data-ticks-N: the tick labels of axis N, data-gen-marks: the generation
// lines drawn), so that a headless browser test can check the rendering
// from the DOM: uPlot draws ticks and labels on a canvas.
"use strict";

const charts = {};     // figure id -> {u, key}
let status = null;     // the last /status
let xRange = [0, 1];   // the shared time range of all charts

const $ = id => document.getElementById(id);

function fmtNum(v) {
  if (v == null || !isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e5) return v.toExponential(2);
  if (a >= 100) return v.toFixed(0);
  if (a >= 1) return String(+v.toPrecision(4));
  if (a === 0) return "0";
  return String(+v.toPrecision(3));
}

function fmtDur(s) {
  if (!isFinite(s) || s < 0) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), r = s % 60;
  return (h ? h + "h" : "") + (h || m ? m + "m" : "") + r + "s";
}

const fmtClock = uPlot.fmtDate("{HH}:{mm}:{ss}");
const fmtDay = uPlot.fmtDate("{M}/{D} {HH}:{mm}");
const fmtMilli = uPlot.fmtDate("{HH}:{mm}:{ss}.{fff}");
const clock = t => fmtClock(new Date(t * 1000));

// ticks wraps a tick formatter so that it records the labels it returns.
function ticks(fmt) {
  return (u, splits, axisIdx) => {
    const v = splits.map(s => s == null ? "" : fmt(s));
    u.root.setAttribute("data-ticks-" + axisIdx, v.join(" "));
    return v;
  };
}

function timeTicks(u, splits, axisIdx, space, incr) {
  const fmt = xRange[1] - xRange[0] > 86400 ? fmtDay : incr < 1 ? fmtMilli : fmtClock;
  return ticks(t => fmt(new Date(t * 1000)))(u, splits, axisIdx);
}

// The time axis's tick spacings in seconds: uPlot's own list lacks 2 s,
// which leaves a run of a few seconds with one tick.
const timeIncrs = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30,
  60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];

// drawGenerations marks each generation on the x axis: a dashed line and
// "gen G ×N" (N ranks).
function drawGenerations(u) {
  const gens = (status && status.generations) || [];
  const {left, top, width, height} = u.bbox;
  const ctx = u.ctx, dpr = window.devicePixelRatio || 1;
  let n = 0;
  ctx.save();
  ctx.strokeStyle = "#d08000";
  ctx.fillStyle = "#9a5a00";
  ctx.lineWidth = dpr;
  ctx.setLineDash([4 * dpr, 3 * dpr]);
  ctx.font = (11 * dpr) + "px system-ui, sans-serif";
  // uPlot leaves its own text settings on the context.
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  let free = -Infinity; // where the previous label ends: labels never overlap
  for (const g of gens) {
    const x = Math.round(u.valToPos(g.t, "x", true));
    if (x < left - 1 || x > left + width + 1) continue;
    ctx.beginPath();
    ctx.moveTo(x, top);
    ctx.lineTo(x, top + height);
    ctx.stroke();
    const label = "gen " + g.gen + " ×" + g.size;
    if (x + 3 * dpr >= free) {
      ctx.fillText(label, x + 3 * dpr, top + 2 * dpr);
      free = x + 3 * dpr + ctx.measureText(label).width + 6 * dpr;
    }
    n++;
  }
  ctx.restore();
  u.root.setAttribute("data-gen-marks", String(n));
}

// timeChart returns uPlot options for a chart over the shared time range.
// ys are the series after x; axes the y axes.
function timeChart(fig, ys, axes, scales) {
  const steps = () => (charts[fig.id] && charts[fig.id].steps) || [];
  return {
    width: Math.max(fig.clientWidth, 300),
    height: 230,
    scales: Object.assign({x: {time: true, range: () => xRange}}, scales || {}),
    series: [{
      label: "time",
      value: (u, v, si, i) => {
        if (v == null) return "–";
        const st = steps()[i];
        return clock(v) + (st != null ? " · step " + st : "");
      },
    }].concat(ys),
    // Millisecond labels (spans under 10 s) need more room.
    axes: [{label: "time", values: timeTicks, incrs: timeIncrs, space: () => xRange[1] - xRange[0] < 10 ? 110 : 70}].concat(axes),
    hooks: {draw: [drawGenerations]},
    cursor: {drag: {x: false, y: false}},
  };
}

// show creates or updates the chart of figure id. key names the series:
// when it changes the chart is rebuilt, else only its data is replaced.
function show(id, key, opts, data, steps) {
  const fig = $(id);
  let c = charts[id];
  if (c && c.key !== key) {
    c.u.destroy();
    c = null;
  }
  const empty = fig.querySelector(".empty");
  if (empty) empty.remove();
  if (!c) {
    c = charts[id] = {key, steps};
    c.u = new uPlot(opts(fig), data, fig);
    fig.setAttribute("data-axes", c.u.axes.map(a => a.label || "").join("|"));
  } else {
    c.steps = steps;
    c.u.setData(data);
  }
}

const yAxis = (label, fmt, extra) => Object.assign({label, values: ticks(fmt || fmtNum), size: 60}, extra || {});

function drawLoss(s) {
  const h = s.history;
  if (!h.t.length) return;
  let data = [h.t, h.loss], steps = h.step, key = "train";
  const ys = [{label: "train loss", stroke: "#3a7bd5", width: 1.5, value: (u, v) => fmtNum(v)}];
  const el = s.evals.metrics.loss;
  if (el && s.evals.t.length) {
    // Eval points sit between steps: join them on the time axis, with
    // gaps (null) where a series has no point, and show them as dots.
    data = uPlot.join([[h.t, h.loss], [s.evals.t, el]]);
    const at = new Map(h.t.map((t, i) => [t, h.step[i]]));
    s.evals.t.forEach((t, i) => at.has(t) || at.set(t, s.evals.step[i]));
    steps = data[0].map(t => at.get(t));
    ys.push({label: "eval loss", stroke: "#c0392b", width: 1.5, spanGaps: true, points: {show: true, size: 7}, value: (u, v) => fmtNum(v)});
    key += "+eval";
  }
  show("chart-loss", key, fig => timeChart(fig, ys, [yAxis("loss")]), data, steps);
}

function drawRate(s) {
  const h = s.history;
  if (!h.t.length) return;
  const ys = [{label: "samples/s (last 10 steps)", stroke: "#27ae60", width: 1.5, spanGaps: true, value: (u, v) => fmtNum(v)}];
  show("chart-rate", "rate", fig => timeChart(fig, ys, [yAxis("samples/s")], {y: {range: (u, min, max) => [0, Math.max(max, 1) * 1.1]}}), [h.t, h.samples_per_s], h.step);
}

// Eval metrics in [0, 1] share the left axis; the others (perplexity, MSE)
// get the right one. The loss is on the loss chart.
const ratioMetric = k => /accuracy|f1|precision|recall/.test(k);
const evalColors = ["#8e44ad", "#16a085", "#d35400", "#2c3e50", "#7f8c8d"];

function drawEval(s) {
  const e = s.evals;
  if (!e.t.length) return;
  let names = Object.keys(e.metrics).filter(k => k !== "count" && k !== "loss").sort();
  if (!names.length && e.metrics.loss) names = ["loss"];
  if (!names.length) return;
  const ratio = names.filter(ratioMetric), value = names.filter(k => !ratioMetric(k));
  const ys = [], axes = [], scales = {};
  if (ratio.length) {
    scales.ratio = {range: (u, min, max) => [Math.min(0, min), Math.max(1, max)]};
    axes.push(yAxis(ratio.join(" / "), null, {scale: "ratio"}));
  }
  if (value.length) {
    const log = value.includes("perplexity");
    scales.value = log ? {distr: 3} : {};
    axes.push(yAxis(value.join(" / "), null, {scale: "value", side: ratio.length ? 1 : 3, grid: {show: !ratio.length}}));
  }
  names.forEach((k, i) => ys.push({
    label: k.replace(/_/g, " "), scale: ratioMetric(k) ? "ratio" : "value",
    stroke: evalColors[i % evalColors.length], width: 1.5, spanGaps: true,
    points: {show: true, size: 7}, value: (u, v) => fmtNum(v),
  }));
  show("chart-eval", names.join(","), fig => timeChart(fig, ys, axes, scales), [e.t].concat(names.map(k => e.metrics[k])), e.step);
}

function drawGens(s) {
  const ol = $("gens");
  const gens = s.generations.slice(-12);
  ol.replaceChildren(...gens.map(g => {
    const li = document.createElement("li");
    li.value = g.gen;
    li.setAttribute("data-gen", g.gen);
    li.textContent = "generation " + g.gen + " · " + g.size + " rank" + (g.size === 1 ? "" : "s") + " · from step " + g.step + " · " + clock(g.t);
    return li;
  }));
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
}

function fmtMetric(k, v) {
  if (v == null || !isFinite(v)) return "–";
  if (k.endsWith("_ms")) return v.toFixed(1);
  if (k.endsWith("_mb")) return v.toFixed(0);
  return fmtNum(v);
}

function drawNodes(s) {
  const cols = s.node_columns || [];
  const head = $("nodes-head");
  const want = ["rank", "node", "state", "step"].concat(cols.map(c => c.label));
  if (head.getAttribute("data-cols") !== want.join("|")) {
    head.replaceChildren(...want.map((l, i) => {
      const th = document.createElement("th");
      th.textContent = l;
      if (i === 1) th.className = "id";
      if (i === 2) th.className = "state";
      if (i >= 4) th.setAttribute("data-key", cols[i - 4].key);
      return th;
    }));
    head.setAttribute("data-cols", want.join("|"));
  }
  $("nodes-body").replaceChildren(...s.node_table.map(n => {
    const tr = document.createElement("tr");
    tr.className = n.state;
    tr.setAttribute("data-node", n.id);
    tr.setAttribute("data-state", n.state);
    cell(tr, n.rank >= 0 ? String(n.rank) : "–");
    cell(tr, n.id, "id");
    cell(tr, n.state, "state");
    cell(tr, n.step >= 0 ? String(n.step) : "–");
    for (const c of cols) cell(tr, fmtMetric(c.key, n.metrics[c.key]));
    return tr;
  }));
}

function drawCards(s) {
  const nodes = s.nodes.length > 8 ? s.nodes.slice(0, 8).join(", ") + ", …" : s.nodes.join(", ");
  $("sub").textContent = "run " + s.run + " · " + s.task + " · generation " + s.generation + (nodes ? " · nodes " + nodes : " · forming");
  const pct = 100 * s.applied / Math.max(s.total, 1);
  $("bar").style.width = pct + "%";
  document.title = "ringtune · " + Math.floor(pct) + "% · " + s.run;
  $("step").textContent = s.applied + " / " + s.total;
  $("epoch").textContent = s.epoch;
  $("loss").textContent = s.loss == null ? "–" : s.loss.toFixed(4);
  $("rate").textContent = s.samples_per_s == null ? "–" : s.samples_per_s.toFixed(1);
  $("world").textContent = s.world_size + " (gen " + s.generation + ")";
  $("faults").textContent = s.aborted_steps + " / " + s.lost_nodes;
  // ETA from the step rate over the last points of the history.
  const h = s.history, n = h.t.length, k = Math.max(0, n - 20);
  let eta = NaN;
  if (s.applied >= s.total) eta = 0;
  else if (n > 1 && h.t[n - 1] > h.t[k]) eta = (s.total - s.applied) / ((h.step[n - 1] - h.step[k]) / (h.t[n - 1] - h.t[k]));
  $("eta").textContent = s.applied >= s.total ? "done" : fmtDur(eta);
  if (s.eval) {
    const main = ["accuracy", "perplexity", "mse", "loss"].find(k => s.eval[k] != null);
    $("lasteval-name").textContent = main ? "eval " + main : "last eval";
    $("lasteval").textContent = main ? fmtNum(s.eval[main]) : "–";
    $("eval").textContent = "last evaluation, after step " + s.eval_step + ": " +
      Object.entries(s.eval).sort().map(([k, v]) => k + " " + (k === "count" ? v : fmtNum(v))).join(" · ");
  }
}

function sharedRange(s) {
  const ts = [];
  if (s.generations.length) ts.push(s.generations[0].t, s.generations[s.generations.length - 1].t);
  if (s.history.t.length) ts.push(s.history.t[0], s.history.t[s.history.t.length - 1]);
  if (s.evals.t.length) ts.push(s.evals.t[0], s.evals.t[s.evals.t.length - 1]);
  if (!ts.length) return [s.started_unix_s, s.started_unix_s + 1];
  const lo = Math.min(...ts), hi = Math.max(...ts);
  const pad = Math.max((hi - lo) * 0.02, 0.5);
  return [lo - pad, hi + pad];
}

async function tick() {
  try {
    const r = await fetch("status", {cache: "no-store"});
    if (!r.ok) throw new Error("GET status: " + r.status + " " + (await r.text()));
    const s = await r.json();
    status = s;
    xRange = sharedRange(s);
    drawCards(s);
    drawLoss(s);
    drawRate(s);
    drawEval(s);
    drawGens(s);
    drawNodes(s);
    $("err").textContent = "";
  } catch (e) {
    // The coordinator stops serving when the run ends.
    const done = status && status.applied >= status.total;
    $("err").textContent = (done ? "the run finished and the coordinator stopped" : "coordinator unreachable") +
      " (" + e.message + "); retrying";
  }
}

window.addEventListener("resize", () => {
  for (const id in charts) {
    const fig = $(id);
    charts[id].u.setSize({width: Math.max(fig.clientWidth, 300), height: 230});
  }
});

tick();
setInterval(tick, 1000);
