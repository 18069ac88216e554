/* V-Stack page "/storage-efficiency": real logical and physical bytes, the per-mode breakdown,
 * savings against 3x replication, and the overhead ratio over time.
 *
 * Reads every 3 s:
 *   GET /api/storage/overhead: logical_bytes, physical_bytes, overhead_ratio,
 *       modes | by_mode ({"replication": {logical_bytes, physical_bytes, chunks}, "erasure_coding": {...}}
 *       or a list of {mode, ...}), under_replicated_chunks, unreadable_chunks;
 *       also understood: the original's total_logical_bytes, total_physical_bytes,
 *       replication_chunks, erasure_coded_chunks, replication_overhead_bytes, erasure_overhead_bytes.
 *   GET /api/redundancy/efficiency: {efficiency: {...}, mode_comparison: {replication: {...},
 *       erasure_coding: {...}, savings: {...}}}, shown as it comes.
 */
(function () {
  "use strict";

  const VS = window.VS;
  const { $, el, setText, showMessage, fetchJSON, pick, num } = VS;

  const POLL_MS = 3000;
  const HISTORY_S = 3600;
  const MODE_LABELS = { replication: "Replication (3×)", erasure_coding: "Erasure coding RS(3,2)" };

  const hist = { t: [], ratio: [], base: [], ec: [] };
  let chart = null;
  let haveData = false;
  let ecFactor = 5 / 3;

  function modeLabel(m) { return MODE_LABELS[m] || String(m).replace(/_/g, " "); }
  function segClass(m) { return m === "replication" || m === "erasure_coding" ? "seg-" + m : "seg-other"; }

  /** The per-mode breakdown as [{mode, logical, physical, chunks}]. */
  function modesOf(d) {
    const raw = pick(d, "modes", "by_mode", "per_mode");
    const out = [];
    const push = (mode, m) => {
      if (!m || typeof m !== "object") return;
      out.push({
        mode: String(mode),
        logical: num(pick(m, "logical_bytes", "logical")),
        physical: num(pick(m, "physical_bytes", "physical")),
        chunks: num(pick(m, "chunks", "chunk_count", "count")),
      });
    };
    if (Array.isArray(raw)) raw.forEach((m, i) => push(pick(m, "mode", "name") || "mode " + (i + 1), m));
    else if (raw && typeof raw === "object") Object.entries(raw).forEach(([k, m]) => push(k, m));
    if (out.length) return out;
    // No per-mode bytes: the metadata service's own shape gives chunk counts per mode and
    // each mode's overhead bytes (physical - logical). With one mode only that is exact;
    // with both, the logical bytes are split by chunk count (chunks are about equal in
    // size) and each mode's physical is its logical plus its real overhead: "estimated".
    const rc = num(d.replication_chunks) || 0;
    const ec = num(d.erasure_coded_chunks) || 0;
    const rOver = num(d.replication_overhead_bytes);
    const eOver = num(d.erasure_overhead_bytes);
    const L = num(pick(d, "logical_bytes", "total_logical_bytes"));
    const P = num(pick(d, "physical_bytes", "total_physical_bytes"));
    if (!rc && !ec) return out;
    if (!ec || !rc) {
      out.push({ mode: ec ? "erasure_coding" : "replication", chunks: ec || rc, logical: L, physical: P });
      return out;
    }
    const ecLogical = L !== null ? L * ec / (rc + ec) : null;
    const rLogical = L !== null ? L - ecLogical : null;
    out.push({ mode: "replication", chunks: rc, logical: rLogical, estimated: true,
               physical: rLogical !== null && rOver !== null ? rLogical + rOver : null });
    out.push({ mode: "erasure_coding", chunks: ec, logical: ecLogical, estimated: true,
               physical: ecLogical !== null && eOver !== null ? ecLogical + eOver : null });
    if (P !== null && out.every((m) => m.physical !== null)) {
      // Keep the parts adding up to the measured total.
      const sum = out[0].physical + out[1].physical;
      if (sum > 0) out.forEach((m) => { m.physical = m.physical * P / sum; });
    }
    return out;
  }

  function renderOverhead(d) {
    const modes = modesOf(d);
    let logical = num(pick(d, "logical_bytes", "total_logical_bytes"));
    let physical = num(pick(d, "physical_bytes", "total_physical_bytes"));
    if (logical === null && modes.length && modes.every((m) => m.logical !== null)) logical = modes.reduce((a, m) => a + m.logical, 0);
    if (physical === null && modes.length && modes.every((m) => m.physical !== null)) physical = modes.reduce((a, m) => a + m.physical, 0);
    let ratio = num(d.overhead_ratio);
    if (ratio === null && logical && physical !== null) ratio = physical / logical;
    const savings = logical && physical !== null ? 1 - physical / (3 * logical) : null;

    setText("#eff-logical", VS.fmtBytes(logical));
    setText("#eff-physical", VS.fmtBytes(physical));
    setText("#eff-ratio", ratio === null ? "-" : ratio.toFixed(2) + "×");
    setText("#eff-savings", savings === null ? "-" : (savings * 100).toFixed(1) + " %");
    $("#eff-savings-box").classList.toggle("good", savings !== null && savings > 0.0005);
    $("#eff-savings-box").classList.toggle("bad", savings !== null && savings < -0.0005);
    const reported = num(d.storage_savings_percent);
    setText("#eff-savings-sub", savings !== null && logical && physical !== null
      ? "saves " + VS.fmtBytes(3 * logical - physical) + " of " + VS.fmtBytes(3 * logical) + (reported !== null ? " · service says " + reported.toFixed(1) + " %" : "")
      : "1 − physical ÷ (3 × logical)");

    const under = num(d.under_replicated_chunks);
    const unread = num(d.unreadable_chunks);
    setText("#eff-under", VS.text(under));
    setText("#eff-unreadable", VS.text(unread));
    $("#eff-under-box").classList.toggle("warn", !!under);
    $("#eff-unreadable-box").classList.toggle("bad", !!unread);

    renderBars(modes, logical, physical);
    $("#modes-note").textContent = modes.some((m) => m.estimated)
      ? "Per-mode bytes estimated from chunk counts (the service gives only totals and each mode’s overhead)."
      : "";
    renderModesTable(modes, physical);
    if (ratio !== null) pushRatio(ratio);
  }

  function pct(part, whole) { return whole > 0 && part !== null ? Math.max(0, Math.min(100, (part / whole) * 100)) : 0; }

  function renderBars(modes, logical, physical) {
    const baseline = logical !== null ? 3 * logical : null;
    const scale = Math.max(baseline || 0, physical || 0, 1);
    const bar = $("#bar-physical");
    const segs = [];
    const known = modes.filter((m) => m.physical !== null && m.physical > 0);
    let covered = 0;
    for (const m of known) {
      covered += m.physical;
      const s = el("span", { class: segClass(m.mode), title: modeLabel(m.mode) + ": " + VS.fmtBytes(m.physical) });
      s.style.width = pct(m.physical, scale) + "%";
      segs.push(s);
    }
    if (physical !== null && physical - covered > 1) {
      const s = el("span", { class: "seg-other", title: "other: " + VS.fmtBytes(physical - covered) });
      s.style.width = pct(physical - covered, scale) + "%";
      segs.push(s);
    }
    bar.replaceChildren(...segs);
    setText("#bar-physical-total", VS.fmtBytes(physical));
    $("#bar-baseline span").style.width = pct(baseline, scale) + "%";
    setText("#bar-baseline-total", VS.fmtBytes(baseline));
    $("#bar-logical span").style.width = pct(logical, scale) + "%";
    setText("#bar-logical-total", VS.fmtBytes(logical));

    const legend = $("#eff-legend");
    const items = modes.map((m) => el("span", {}, el("span", { class: "sw " + segClass(m.mode) }), modeLabel(m.mode)));
    items.push(el("span", {}, el("span", { class: "sw seg-baseline" }), "3× baseline"));
    items.push(el("span", {}, el("span", { class: "sw seg-logical" }), "logical"));
    legend.replaceChildren(...items);
  }

  function renderModesTable(modes, physical) {
    const body = $("#modes-body");
    const rows = modes.map((m) => {
      const ratio = m.logical && m.physical !== null ? (m.physical / m.logical).toFixed(2) + "×" : "-";
      const share = physical && m.physical !== null ? ((m.physical / physical) * 100).toFixed(1) + " %" : "-";
      return el("tr", { dataset: { mode: m.mode } },
        el("td", {}, el("span", { class: "sw " + segClass(m.mode) }), " " + modeLabel(m.mode)),
        el("td", { class: "num", text: VS.text(m.chunks) }),
        el("td", { class: "num", text: VS.fmtBytes(m.logical) }),
        el("td", { class: "num", text: VS.fmtBytes(m.physical) }),
        el("td", { class: "num", text: ratio }),
        el("td", { class: "num", text: share }));
    });
    body.replaceChildren(...rows);
    const empty = $("#modes-empty");
    empty.hidden = rows.length > 0;
    empty.textContent = "No per-mode breakdown in the answer.";
  }

  // ---------------------------------------------------------------- chart

  function setupChart() {
    const box = $("#ratio-chart");
    if (typeof window.uPlot !== "function") {
      box.appendChild(el("div", { class: "chart-fallback", text: "The chart library did not load." }));
      return;
    }
    const fmt = (u, v) => (v === null || v === undefined ? "-" : v.toFixed(2) + "×");
    try {
      chart = new window.uPlot({
        width: Math.max(300, box.clientWidth || 500),
        height: 260,
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true, range: (u, min, max) => (max == null ? [Date.now() / 1000 - 300, Date.now() / 1000] : [Math.min(min, max - 300), max]) }, y: { range: (u, min, max) => [0, Math.max(3.3, Math.ceil(((max || 0) + 0.3) * 2) / 2)] } },
        series: [
          {},
          { label: "Overhead ratio", stroke: "#5b9dff", width: 2, fill: "rgba(91,157,255,0.10)", value: fmt },
          { label: "3× replication", stroke: "#8f9bb0", width: 1, dash: [6, 4], value: fmt },
          { label: "RS(3,2)", stroke: "#8b7bff", width: 1, dash: [2, 4], value: fmt },
        ],
        axes: VS.chartAxes("physical ÷ logical"),
      }, [[], [], [], []], box);
      VS.autoSize(chart, box, 260);
    } catch (err) {
      console.error("chart:", err);
      box.appendChild(el("div", { class: "chart-fallback", text: "The chart could not be drawn." }));
    }
  }

  function pushRatio(ratio) {
    const t = Date.now() / 1000;
    hist.t.push(t); hist.ratio.push(ratio); hist.base.push(3); hist.ec.push(ecFactor);
    while (hist.t.length && hist.t[0] < t - HISTORY_S) { hist.t.shift(); hist.ratio.shift(); hist.base.shift(); hist.ec.shift(); }
    if (chart) {
      try { chart.setData([hist.t.slice(), hist.ratio.slice(), hist.base.slice(), hist.ec.slice()]); }
      catch (err) { console.error("chart update:", err); }
    }
  }

  // ---------------------------------------------------------------- efficiency

  function renderEfficiency(d) {
    const eff = d && typeof d.efficiency === "object" && d.efficiency ? d.efficiency : d;
    const ecf = num(pick(eff, "erasure_coding_overhead_factor"));
    if (ecf) ecFactor = ecf;
    const kv = $("#policy-kv");
    const items = [];
    for (const [k, v] of Object.entries(eff || {})) {
      if (v !== null && typeof v === "object") continue;
      let shown = VS.text(v);
      if (typeof v === "number" && /percent/.test(k)) shown = v.toFixed(1) + " %";
      else if (typeof v === "number" && /factor/.test(k)) shown = v.toFixed(2) + "×";
      items.push(el("dt", { text: k.replace(/_/g, " ") }), el("dd", { text: shown }));
    }
    kv.replaceChildren(...items);

    const table = $("#policy-table");
    const cmp = d && typeof d.mode_comparison === "object" && d.mode_comparison ? d.mode_comparison : null;
    if (!cmp) { table.replaceChildren(); return; }
    const modes = Object.entries(cmp).filter(([k, v]) => v && typeof v === "object" && k !== "savings");
    const fields = [];
    for (const [, v] of modes) for (const f of Object.keys(v)) if (f !== "mode" && !fields.includes(f)) fields.push(f);
    const head = el("thead", {}, el("tr", {}, el("th", { text: "" }), ...modes.map(([k]) => el("th", { text: modeLabel(k) }))));
    const body = el("tbody", {}, ...fields.map((f) => el("tr", {},
      el("th", { text: f.replace(/_/g, " ") }),
      ...modes.map(([, v]) => el("td", { text: typeof v[f] === "number" ? VS.fmtNum(v[f]) : VS.text(v[f]) })))));
    const savings = cmp.savings && typeof cmp.savings === "object" ? cmp.savings : null;
    if (savings) {
      const parts = Object.entries(savings).map(([k, v]) => k.replace(/_/g, " ") + ": " + (typeof v === "number" ? VS.fmtNum(v) : VS.text(v)));
      body.appendChild(el("tr", {}, el("th", { text: "savings" }), el("td", { colspan: String(Math.max(1, modes.length)), text: parts.join(" · ") })));
    }
    table.replaceChildren(head, body);
  }

  // ---------------------------------------------------------------- polling

  async function tick() {
    const [o, e] = await Promise.all([
      fetchJSON("/api/storage/overhead", { timeoutMs: 6000 }),
      fetchJSON("/api/redundancy/efficiency", { timeoutMs: 6000 }),
    ]);
    const conn = $("#eff-conn");
    if (o.ok && o.data && typeof o.data === "object" && !Array.isArray(o.data)) {
      try {
        renderOverhead(o.data);
        haveData = true;
        showMessage("#eff-message", "");
      } catch (err) {
        console.error("overhead render:", err);
        showMessage("#eff-message", "Could not show the storage figures: " + err.message, "error");
      }
      setText("#eff-updated", "last update: " + VS.fmtClock());
      conn.className = "conn live";
      setText("#eff-conn-text", "live");
    } else {
      showMessage("#eff-message", "Cannot read the storage figures: " + (o.error || "unexpected answer") +
        (haveData ? ". Showing the last figures received." : ". Retrying every 3 s."), "error");
      conn.className = "conn offline";
      setText("#eff-conn-text", "retrying");
      if (!haveData) setText("#modes-empty", "No data yet.");
    }
    if (e.ok && e.data && typeof e.data === "object") {
      try { renderEfficiency(e.data); showMessage("#policy-message", ""); }
      catch (err) { console.error("efficiency render:", err); }
    } else {
      showMessage("#policy-message", "Cannot read the redundancy comparison: " + (e.error || "unexpected answer") + ".", "info");
    }
  }

  try {
    setupChart();
    const poller = VS.poll(tick, POLL_MS);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) poller.now(); });
  } catch (err) {
    console.error(err);
    VS.banner("The page could not start: " + err.message);
  }
})();
