/* V-Stack page "/consensus": the Paxos state of recent chunks across the metadata replicas.
 *
 * Reads GET /api/consensus every 2 s:
 *   {"replicas": N (or a list of replica names),
 *    "chunks": [{"chunk_id", "promised_ballot", "accepted_ballot", "accepted_value", "phase", "version",
 *                "acceptors": [{"replica", "promised" | "promised_ballot", "accepted" | "accepted_ballot",
 *                               "accepted_value" | "value", "phase", "version", "reachable", ...}]}]}
 * Any field may be missing or unknown: it shows as "-".
 */
(function () {
  "use strict";

  const VS = window.VS;
  const { $, el, setText, showMessage, fetchJSON, pick, num } = VS;

  const POLL_MS = 2000;
  let last = null;

  /** committed | accepted | promised | none | other, from the many names a phase may have. */
  function phaseClass(phase) {
    const p = String(phase === undefined || phase === null ? "none" : phase).toLowerCase();
    if (["committed", "commit", "chosen", "decided", "learned", "learnt"].includes(p)) return "committed";
    if (["accepted", "accept", "phase2", "phase_2"].includes(p)) return "accepted";
    if (["promised", "promise", "prepare", "prepared", "phase1", "phase_1"].includes(p)) return "promised";
    if (["none", "", "idle", "empty", "null"].includes(p)) return "none";
    return "other";
  }

  /** A ballot: an integer, a "round.replica" string, [round, replica] or {round, replica}. */
  function fmtBallot(b) {
    if (b === undefined || b === null || b === "") return "-";
    if (Array.isArray(b)) return b.map((x) => VS.text(x)).join(".");
    if (typeof b === "object") {
      const r = pick(b, "round", "number", "n");
      const id = pick(b, "replica", "node", "proposer", "id");
      if (r !== undefined) return String(r) + (id !== undefined ? "." + String(id) : "");
      return VS.text(b);
    }
    return String(b);
  }

  function hostOf(u) {
    const s = String(u);
    const m = /^[a-z]+:\/\/([^/]+)/i.exec(s);
    return m ? m[1] : s;
  }

  /**
   * A short summary of an accepted value: a JSON string or array of node URLs
   * ("3 nodes: a:8081, b:8082, ..."), an object (its replicas/fragments), or text.
   */
  function summariseValue(v) {
    if (v === undefined || v === null || v === "") return { short: "-", full: "" };
    let val = v;
    if (typeof v === "string") {
      const t = v.trim();
      if (t.startsWith("[") || t.startsWith("{")) {
        const p = VS.parseJSON(t);
        if (p.ok) val = p.value;
      }
    }
    let full = "";
    try { full = typeof val === "string" ? val : JSON.stringify(val); } catch (_) { full = String(val); }
    if (Array.isArray(val)) {
      const hosts = val.map((x) => (x && typeof x === "object" ? hostOf(pick(x, "node_url", "url", "node_id") || JSON.stringify(x)) : hostOf(x)));
      return { short: hosts.length + (hosts.length === 1 ? " node: " : " nodes: ") + hosts.join(", "), full };
    }
    if (val && typeof val === "object") {
      const reps = pick(val, "replicas", "nodes", "node_urls");
      const frags = pick(val, "fragments");
      const parts = [];
      if (val.op !== undefined) parts.push(String(val.op));
      if (Array.isArray(reps)) parts.push(reps.length + " replicas: " + reps.map(hostOf).join(", "));
      if (Array.isArray(frags)) parts.push(frags.length + " fragments");
      if (val.v !== undefined) parts.push("v" + val.v);
      return { short: parts.length ? parts.join(" · ") : full.slice(0, 80), full };
    }
    return { short: String(val).slice(0, 80), full };
  }

  function line(label, value, title) {
    return el("div", { class: "a-line", title: title || undefined }, label + " ", el("b", { text: value }));
  }

  function acceptorCell(a) {
    if (!a || typeof a !== "object") {
      return el("td", {}, el("div", { class: "acceptor phase-none" }, el("div", { class: "a-phase", text: "no data" })));
    }
    const unreachable = a.reachable === false || a.reachable === "false";
    const cls = unreachable ? "unreachable" : phaseClass(a.phase);
    const box = el("div", { class: "acceptor phase-" + cls, dataset: { phase: cls } });
    box.appendChild(el("div", { class: "a-phase", text: unreachable ? "unreachable" : VS.text(a.phase === undefined ? "none" : a.phase) }));
    if (!unreachable || a.promised !== undefined || a.promised_ballot !== undefined) {
      box.appendChild(line("promised", fmtBallot(pick(a, "promised", "promised_ballot"))));
      box.appendChild(line("accepted", fmtBallot(pick(a, "accepted", "accepted_ballot")), a.ballot ? "ballot " + a.ballot : ""));
      const val = summariseValue(pick(a, "accepted_value", "value"));
      if (val.short !== "-") box.appendChild(line("value", val.short, val.full));
      if (a.version !== undefined && a.version !== null) box.appendChild(line("version", VS.text(a.version)));
    }
    if (a.error) box.appendChild(line("error", String(a.error)));
    let title = "";
    try { title = JSON.stringify(a, null, 1); } catch (_) { title = ""; }
    box.title = title;
    return el("td", {}, box);
  }

  /** Column order: replica names from data.replicas (a list), else the union of acceptors' replica fields. */
  function replicaColumns(data, chunks) {
    const names = [];
    const add = (n) => { const k = String(n); if (!names.includes(k)) names.push(k); };
    if (Array.isArray(data.replicas)) data.replicas.forEach((r) => add(r && typeof r === "object" ? pick(r, "replica", "id", "url") : r));
    let anyNamed = false;
    for (const c of chunks) {
      const acc = Array.isArray(c.acceptors) ? c.acceptors : [];
      acc.forEach((a) => { if (a && a.replica !== undefined && a.replica !== null) { anyNamed = true; add(a.replica); } });
    }
    const n = num(data.replicas);
    const maxLen = Math.max(0, ...chunks.map((c) => (Array.isArray(c.acceptors) ? c.acceptors.length : 0)));
    if (!anyNamed && !names.length) {
      const count = Math.max(n || 0, maxLen);
      for (let i = 0; i < count; i++) names.push("#" + (i + 1));
      return { names, byIndex: true };
    }
    return { names, byIndex: false };
  }

  function render(data) {
    const chunks = (Array.isArray(data.chunks) ? data.chunks : Array.isArray(data) ? data : []).filter((c) => c && typeof c === "object");
    const cols = replicaColumns(data, chunks);
    const replicas = num(data.replicas) !== null ? num(data.replicas) : Array.isArray(data.replicas) ? data.replicas.length : cols.names.length;
    setText("#sum-replicas", replicas ? String(replicas) : "-");
    setText("#sum-majority", replicas ? "majority " + (Math.floor(replicas / 2) + 1) : "majority -");
    setText("#sum-chunks", String(chunks.length));

    let committed = 0, inflight = 0, unreachable = 0;
    for (const c of chunks) {
      const pc = phaseClass(c.phase);
      if (pc === "committed") committed++;
      else if (pc === "accepted" || pc === "promised") inflight++;
      for (const a of Array.isArray(c.acceptors) ? c.acceptors : []) if (a && a.reachable === false) unreachable++;
    }
    setText("#sum-committed", String(committed));
    setText("#sum-inflight", String(inflight));
    setText("#sum-unreachable", String(unreachable));

    const head = $("#consensus-head");
    head.replaceChildren(el("th", { text: "Chunk" }), el("th", { text: "Decision" }),
      ...cols.names.map((n) => el("th", { text: "Replica " + n })));

    const filter = ($("#consensus-filter").value || "").trim().toLowerCase();
    const body = $("#consensus-body");
    const frag = document.createDocumentFragment();
    let shown = 0;
    for (const c of chunks) {
      const id = c.chunk_id !== undefined && c.chunk_id !== null ? String(c.chunk_id) : "-";
      if (filter && !id.toLowerCase().includes(filter)) continue;
      shown++;
      const pc = phaseClass(c.phase);
      const val = summariseValue(c.accepted_value);
      const decision = el("div", { class: "acceptor phase-" + pc },
        el("div", { class: "a-phase", text: VS.text(c.phase === undefined ? null : c.phase) }),
        line("promised", fmtBallot(c.promised_ballot)),
        line("accepted", fmtBallot(c.accepted_ballot)),
        line("value", val.short, val.full),
        line("version", VS.text(c.version)));
      const acc = Array.isArray(c.acceptors) ? c.acceptors : [];
      const cells = cols.names.map((name, i) => {
        const a = cols.byIndex ? acc[i] : acc.find((x) => x && String(x.replica) === name);
        return acceptorCell(a);
      });
      frag.appendChild(el("tr", { dataset: { chunkId: id, phase: pc } },
        el("td", { class: "mono", text: id }), el("td", {}, decision), ...cells));
    }
    body.replaceChildren(frag);
    const empty = $("#consensus-empty");
    empty.hidden = shown > 0;
    empty.textContent = chunks.length ? "No chunk matches the filter." : "No chunk has been through consensus yet: upload a video.";
  }

  async function tick() {
    const r = await fetchJSON("/api/consensus", { timeoutMs: 6000 });
    const conn = $("#consensus-conn");
    if (r.ok && r.data && typeof r.data === "object") {
      last = r.data;
      try {
        render(r.data);
        showMessage("#consensus-message", "");
      } catch (err) {
        console.error("consensus render:", err);
        showMessage("#consensus-message", "Could not show the answer: " + err.message, "error");
      }
      const t = num(pick(r.data, "time", "timestamp"));
      setText("#consensus-updated", "last update: " + VS.fmtClock(t));
      conn.className = "conn live";
      setText("#consensus-conn-text", "live");
    } else {
      showMessage("#consensus-message", "Cannot read the consensus state: " + (r.error || "unexpected answer") +
        (last ? ". Showing the last state received." : ". Retrying every 2 s."), "error");
      conn.className = "conn offline";
      setText("#consensus-conn-text", "retrying");
      if (!last) setText("#consensus-empty", "No data yet.");
    }
  }

  try {
    const poller = VS.poll(tick, POLL_MS);
    $("#consensus-filter").addEventListener("input", () => { if (last) { try { render(last); } catch (e) { console.error(e); } } });
    document.addEventListener("visibilitychange", () => { if (!document.hidden) poller.now(); });
  } catch (err) {
    console.error(err);
    VS.banner("The page could not start: " + err.message);
  }
})();
