/* V-Stack web page: helpers shared by every page (window.VS). Plain ES2020, no build step.
 *
 * Nothing here throws to the caller: fetchJSON resolves to {ok, status, data, error}
 * whatever happens (network error, timeout, non-JSON body).
 */
(function () {
  "use strict";

  const DASH = "-";

  /** True for a finite number (not NaN, not Infinity, not a numeric string). */
  function isNum(v) {
    return typeof v === "number" && Number.isFinite(v);
  }

  /** A number from a number or a numeric string, else null. */
  function num(v) {
    if (isNum(v)) return v;
    if (typeof v === "string" && v.trim() !== "" && Number.isFinite(Number(v))) return Number(v);
    return null;
  }

  /** The first of the named keys of obj that is present and not null. */
  function pick(obj, ...keys) {
    if (!obj || typeof obj !== "object") return undefined;
    for (const k of keys) {
      if (obj[k] !== undefined && obj[k] !== null) return obj[k];
    }
    return undefined;
  }

  /** Text for a value, "-" when missing. */
  function text(v) {
    if (v === undefined || v === null || v === "") return DASH;
    if (typeof v === "number") return Number.isFinite(v) ? fmtNum(v) : DASH;
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (typeof v === "object") {
      try { return JSON.stringify(v); } catch (_) { return DASH; }
    }
    return String(v);
  }

  function fmtNum(v, digits) {
    const n = num(v);
    if (n === null) return DASH;
    if (digits !== undefined) return n.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
    return Number.isInteger(n) ? n.toLocaleString() : n.toLocaleString(undefined, { maximumFractionDigits: 2 });
  }

  function fmtBytes(v) {
    const n = num(v);
    if (n === null) return DASH;
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let x = Math.abs(n);
    let i = 0;
    while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
    const s = i === 0 ? String(Math.round(x)) : x.toFixed(x >= 100 ? 0 : x >= 10 ? 1 : 2);
    return (n < 0 ? "-" : "") + s + " " + units[i];
  }

  /** A percentage from a 0..1 fraction. */
  function fmtPct(frac, digits = 1) {
    const n = num(frac);
    if (n === null) return DASH;
    return (n * 100).toFixed(digits) + " %";
  }

  function fmtDuration(sec) {
    const n = num(sec);
    if (n === null) return DASH;
    const s = Math.max(0, Math.round(n));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const r = s % 60;
    const mm = h ? String(m).padStart(2, "0") : String(m);
    return (h ? h + ":" : "") + mm + ":" + String(r).padStart(2, "0");
  }

  /** Clock time of a unix time in seconds (or now). */
  function fmtClock(unixSec) {
    const n = num(unixSec);
    const d = n === null ? new Date() : new Date(n * 1000);
    return d.toLocaleTimeString(undefined, { hour12: false });
  }

  /** The metadata service writes "YYYY-MM-DD HH:MM:SS" in UTC; show it in local time. */
  function fmtTimestamp(v) {
    if (v === undefined || v === null || v === "") return DASH;
    if (isNum(v)) return new Date(v * 1000).toLocaleString();
    let s = String(v);
    if (/^\d{4}-\d{2}-\d{2} \d{2}:\d{2}(:\d{2}(\.\d+)?)?$/.test(s)) s = s.replace(" ", "T") + "Z";
    const d = new Date(s);
    return Number.isNaN(d.getTime()) ? String(v) : d.toLocaleString();
  }

  const HTTP_REASONS = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 409: "Conflict", 413: "Payload Too Large", 415: "Unsupported Media Type",
    422: "Unprocessable Content", 429: "Too Many Requests", 500: "Internal Server Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
  };

  /**
   * A short message from an error body: {"error": "..."}, FastAPI's {"detail": "..."}
   * or {"detail": [{"msg": ...}]}, or a plain string.
   */
  function errorText(data, status) {
    let msg = "";
    if (typeof data === "string") {
      const t = data.trim();
      // An HTML error page (a proxy, a stray server) says nothing useful in a sentence.
      if (!/^<(!doctype|html|head|body)/i.test(t)) msg = (t.split("\n")[0] || "").slice(0, 200);
    } else if (data && typeof data === "object") {
      const e = pick(data, "error", "detail", "message");
      if (typeof e === "string") msg = e;
      else if (Array.isArray(e)) msg = e.map((x) => (x && typeof x === "object" ? (x.msg || JSON.stringify(x)) : String(x))).join("; ");
      else if (e && typeof e === "object") msg = e.message || JSON.stringify(e);
    }
    if (!msg) msg = status ? "HTTP " + status + (HTTP_REASONS[status] ? " " + HTTP_REASONS[status] : "") : "no answer";
    return msg;
  }

  /** Parse JSON without throwing: {ok: true, value} or {ok: false}. */
  function parseJSON(s) {
    try { return { ok: true, value: JSON.parse(s) }; } catch (_) { return { ok: false, value: undefined }; }
  }

  /**
   * GET (or other) a URL and read JSON. Never rejects.
   * Resolves to {ok, status, data, error}: ok is true for a 2xx with a JSON body.
   */
  async function fetchJSON(url, opts = {}) {
    const timeoutMs = opts.timeoutMs || 8000;
    const ctrl = typeof AbortController === "function" ? new AbortController() : null;
    const timer = ctrl ? setTimeout(() => ctrl.abort(), timeoutMs) : null;
    try {
      const res = await fetch(url, {
        method: opts.method || "GET",
        headers: Object.assign({ Accept: "application/json" }, opts.headers || {}),
        body: opts.body,
        cache: "no-store",
        credentials: "same-origin",
        signal: ctrl ? ctrl.signal : undefined,
      });
      let body = "";
      try { body = await res.text(); } catch (_) { body = ""; }
      const parsed = parseJSON(body);
      const data = parsed.ok ? parsed.value : body;
      if (!res.ok) {
        return { ok: false, status: res.status, data, error: errorText(data, res.status) + " (" + url + ")" };
      }
      if (!parsed.ok) {
        return { ok: false, status: res.status, data, error: "the answer from " + url + " is not JSON" };
      }
      return { ok: true, status: res.status, data, error: null };
    } catch (err) {
      const aborted = err && err.name === "AbortError";
      return {
        ok: false, status: 0, data: null,
        error: aborted ? url + " did not answer within " + Math.round(timeoutMs / 1000) + " s"
                       : "cannot reach " + url + " (" + ((err && err.message) || "network error") + ")",
      };
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  /**
   * Build an element: el("div", {class: "x", dataset: {a: 1}, text: "hi"}, child, ...).
   * Never uses innerHTML, so server strings are always text.
   */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === "class") e.className = v;
        else if (k === "text") e.textContent = v;
        else if (k === "dataset") Object.assign(e.dataset, v);
        else if (k === "on") for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
        else if (k in e && typeof v !== "string") e[k] = v;
        else e.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      e.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return e;
  }

  function $(sel, root) { return (root || document).querySelector(sel); }

  function setText(sel, v) {
    const e = typeof sel === "string" ? $(sel) : sel;
    if (e) { const t = v === undefined || v === null || v === "" ? DASH : String(v); if (e.textContent !== t) e.textContent = t; }
  }

  /** Show (or clear, with an empty text) a message in an element; kind: error|success|info. */
  function showMessage(sel, msg, kind) {
    const e = typeof sel === "string" ? $(sel) : sel;
    if (!e) return;
    e.textContent = msg || "";
    e.className = "message" + (msg ? " " + (kind || "info") : "");
    e.setAttribute("role", kind === "error" ? "alert" : "status");
  }

  /** Show or hide the page banner (#page-banner) used for connection problems. */
  function banner(msg) {
    const e = $("#page-banner");
    if (!e) return;
    e.textContent = msg || "";
    e.classList.toggle("visible", !!msg);
  }

  /**
   * Run fn now and then every intervalMs after it settles (never overlapping).
   * Returns {stop, now}. fn's exceptions are caught and logged.
   */
  function poll(fn, intervalMs) {
    let timer = null;
    let stopped = false;
    let running = false;
    async function tick() {
      if (stopped) return;
      if (running) return;
      running = true;
      clearTimeout(timer);
      try { await fn(); } catch (err) { console.error("poll:", err); }
      running = false;
      if (!stopped) timer = setTimeout(tick, intervalMs);
    }
    tick();
    return {
      stop() { stopped = true; clearTimeout(timer); },
      now() { if (!running) { clearTimeout(timer); tick(); } },
    };
  }

  /** uPlot options shared by the charts: dark axes, time on x. */
  function chartAxes(yLabel, y2Label) {
    const axis = {
      stroke: "#8f9bb0",
      grid: { stroke: "rgba(255,255,255,0.06)", width: 1 },
      ticks: { stroke: "rgba(255,255,255,0.12)", width: 1 },
      font: "12px system-ui, sans-serif",
      labelFont: "12px system-ui, sans-serif",
    };
    const axes = [Object.assign({}, axis), Object.assign({ label: yLabel, scale: "y" }, axis)];
    if (y2Label) axes.push(Object.assign({}, axis, { label: y2Label, scale: "y2", side: 1, grid: { show: false } }));
    return axes;
  }

  /** Keep a uPlot chart as wide as its container. */
  function autoSize(chart, container, height) {
    const resize = () => {
      const w = Math.max(200, Math.floor(container.clientWidth));
      if (chart.width !== w) chart.setSize({ width: w, height });
    };
    if (typeof ResizeObserver === "function") new ResizeObserver(resize).observe(container);
    else window.addEventListener("resize", resize);
    resize();
  }

  // Last line of defence: a stray rejected promise becomes a polite console line,
  // not an uncaught error.
  window.addEventListener("unhandledrejection", (ev) => {
    console.warn("V-Stack page: unhandled rejection", ev.reason);
    ev.preventDefault();
  });

  window.VS = {
    DASH, isNum, num, pick, text, fmtNum, fmtBytes, fmtPct, fmtDuration, fmtClock, fmtTimestamp,
    errorText, parseJSON, fetchJSON, el, $, setText, showMessage, banner, poll, chartAxes, autoSize,
  };
})();
