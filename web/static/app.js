/* V-Stack web page "/": upload, the video list and player, the live health dashboard.
 *
 * Reads:  GET /api/config, GET /api/videos, POST /api/upload, GET /api/upload/status/{id},
 *         the websocket /ws (JSON {"type":"dashboard", ...} every second);
 *         while the socket is down: GET /api/health and GET /api/stats as a fallback.
 * Plain ES2020, no build step; every handler catches its own errors.
 */
(function () {
  "use strict";

  const VS = window.VS;
  const { $, el, setText, showMessage, fetchJSON, pick, num } = VS;

  const STATUS_POLL_MS = 500;
  const CHART_WINDOW_S = 300;
  const WS_STALE_MS = 5000;        // no message for this long on an open socket: reconnect
  const WS_BACKOFF_MS = [250, 500, 1000, 2000, 3000, 5000];
  const FALLBACK_AFTER_MS = 4000;  // socket down this long: poll the REST API instead
  const FALLBACK_POLL_MS = 2000;
  const VIDEO_REFRESH_MIN_MS = 2500;

  const state = {
    config: null,
    configLoading: null,
    uploading: false,
    statusTimer: null,
    sessionId: null,
    videos: [],
    videosSig: "",
    lastVideoFetch: 0,
    playingId: null,
    hls: null,
    ws: null,
    wsAttempt: 0,
    wsTimer: null,
    wsStaleTimer: null,
    wsDownSince: Date.now(),
    fallback: null,
    fallbackOk: false,
    chart: null,
    series: { t: [], chunks: [], healthy: [] },
  };

  // ------------------------------------------------------------------ config

  /** GET /api/config once (retried on demand): {metadata_url, uploader_url, client_url, hls_base, storage_nodes}. */
  async function loadConfig() {
    if (state.config) return state.config;
    if (!state.configLoading) {
      state.configLoading = (async () => {
        const r = await fetchJSON("/api/config");
        state.configLoading = null;
        if (r.ok && r.data && typeof r.data === "object") {
          state.config = r.data;
          applyConfigHints();
          if (r.data.uploads_need_token) {
            $("#token-row").hidden = false;
            $("#token-input").value = sessionStorage.getItem("vstack-token") || "";
          }
          return state.config;
        }
        console.warn("config:", r.error);
        return null;
      })();
    }
    return state.configLoading;
  }

  function maxUploadBytes() {
    const c = state.config || {};
    return num(pick(c, "max_upload_bytes", "upload_limit_bytes", "max_upload_size"));
  }

  function applyConfigHints() {
    const limit = maxUploadBytes();
    if (limit) setText("#upload-hint", "Up to " + VS.fmtBytes(limit));
  }

  /** Base URL of the HLS gateway: config.hls_base, else {client_url}/hls, else /hls. */
  function hlsBase() {
    const c = state.config || {};
    let base = c.hls_base;
    if (typeof base !== "string" || !base) base = (typeof c.client_url === "string" && c.client_url ? c.client_url.replace(/\/+$/, "") + "/hls" : "/hls");
    return base.replace(/\/+$/, "");
  }

  // ------------------------------------------------------------------ upload

  const input = $("#upload-input");
  const titleInput = $("#title-input");
  const uploadButton = $("#upload-button");
  const upBar = $("#upload-progress");
  const procBar = $("#processing-progress");
  const dropzone = $("#dropzone");
  let droppedFile = null;

  function chosenFile() {
    if (input && input.files && input.files.length) return input.files[0];
    return droppedFile;
  }

  function showChosen() {
    const f = chosenFile();
    setText("#upload-file", f ? f.name + " · " + VS.fmtBytes(f.size) : "");
    if (!f) $("#upload-file").textContent = "";
  }

  function setBar(bar, textSel, value, label, cls) {
    const v = Math.max(0, Math.min(100, Math.round(value)));
    bar.value = v;
    bar.classList.remove("done", "failed");
    if (cls) bar.classList.add(cls);
    setText(textSel, label !== undefined ? label : v + " %");
  }

  function resetBars() {
    setBar(upBar, "#upload-progress-text", 0, "-");
    setBar(procBar, "#processing-progress-text", 0, "-");
  }

  function uploadMessage(msg, kind) { showMessage("#upload-message", msg, kind); }

  function stopStatusPolling() {
    if (state.statusTimer) clearTimeout(state.statusTimer);
    state.statusTimer = null;
    state.sessionId = null;
  }

  function startUpload() {
    try {
      if (state.uploading) return;
      const file = chosenFile();
      if (!file) {
        uploadMessage("Choose a video file first: drop it on the box above or use the file picker.", "error");
        return;
      }
      if (file.size === 0) {
        uploadMessage("“" + file.name + "” is empty (0 bytes): choose a real video file.", "error");
        return;
      }
      const limit = maxUploadBytes();
      if (limit && file.size > limit) {
        uploadMessage("“" + file.name + "” is " + VS.fmtBytes(file.size) + ", over the upload limit of " + VS.fmtBytes(limit) + ".", "error");
        return;
      }
      let title = (titleInput.value || "").trim();
      if (!title) title = file.name.replace(/\.[^.]+$/, "") || "Untitled";

      stopStatusPolling();
      resetBars();
      uploadMessage("Sending “" + file.name + "”…", "info");
      state.uploading = true;
      uploadButton.disabled = true;

      // title first, then the file: the server streams the body and reads the title before the video.
      const form = new FormData();
      form.append("title", title);
      form.append("video", file, file.name);

      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/upload");
      xhr.setRequestHeader("Accept", "application/json");
      const token = ($("#token-input") && $("#token-input").value.trim()) || "";
      if (token) {
        sessionStorage.setItem("vstack-token", token);  // this tab only, not kept on disk
        xhr.setRequestHeader("Authorization", "Bearer " + token);
      }
      xhr.upload.addEventListener("progress", (ev) => {
        if (ev.lengthComputable && ev.total > 0) {
          const pct = (ev.loaded / ev.total) * 100;
          setBar(upBar, "#upload-progress-text", pct, Math.floor(pct) + " % · " + VS.fmtBytes(ev.loaded) + " of " + VS.fmtBytes(ev.total));
        }
      });
      xhr.addEventListener("load", () => {
        try { onUploadAnswer(xhr, file, title); } catch (err) { uploadFailed("Unexpected answer from the server (" + err.message + ")."); }
      });
      xhr.addEventListener("error", () => {
        uploadFailed("The upload was interrupted: the server closed the connection or cannot be reached." +
          (file.size > 100 * 1024 * 1024 ? " The file may be over the server’s size limit." : " Try again."));
      });
      xhr.addEventListener("abort", () => uploadFailed("The upload was cancelled."));
      xhr.addEventListener("timeout", () => uploadFailed("The upload timed out."));
      xhr.send(form);
    } catch (err) {
      uploadFailed("Could not start the upload (" + err.message + ").");
    }
  }

  function uploadDone() {
    state.uploading = false;
    uploadButton.disabled = false;
  }

  function uploadFailed(msg) {
    uploadDone();
    stopStatusPolling();
    upBar.classList.add("failed");
    uploadMessage(msg, "error");
  }

  function onUploadAnswer(xhr, file, title) {
    const parsed = VS.parseJSON(xhr.responseText || "");
    const data = parsed.ok ? parsed.value : xhr.responseText;
    const status = xhr.status;
    if (status < 200 || status >= 300) {
      let msg = VS.errorText(data, status);
      if (status === 413 && !/large|limit|size/i.test(msg)) msg = "The file is too large: " + msg;
      else if (status === 401 || status === 403) msg = "Not allowed: " + msg;
      else if (status >= 500) msg = "The server could not take the upload: " + msg;
      setBar(upBar, "#upload-progress-text", upBar.value, "rejected (" + status + ")", "failed");
      uploadFailed(msg);
      return;
    }
    setBar(upBar, "#upload-progress-text", 100, "100 % · " + VS.fmtBytes(file.size), "done");
    uploadDone();
    if (!parsed.ok || !data || typeof data !== "object") {
      uploadMessage("Uploaded, but the server’s answer was not understood; the video list will show it when ready.", "info");
      refreshVideos(true);
      return;
    }
    const sid = pick(data, "upload_session_id", "session_id");
    if (!sid) {
      uploadMessage("Uploaded “" + title + "”.", "success");
      setBar(procBar, "#processing-progress-text", 100, "done", "done");
      refreshVideos(true);
      return;
    }
    uploadMessage("Uploaded “" + title + "”: the cluster is processing it…", "info");
    setBar(procBar, "#processing-progress-text", 0, "queued");
    state.sessionId = String(sid);
    pollStatus(state.sessionId, title, 0);
  }

  const DONE = new Set(["completed", "complete", "active", "done", "succeeded", "success"]);
  const FAILED = new Set(["failed", "error", "deleted", "cancelled", "canceled"]);

  /** Poll GET /api/upload/status/{id} every 500 ms until completed or failed. */
  async function pollStatus(sid, title, errors) {
    if (state.sessionId !== sid) return;
    const r = await fetchJSON("/api/upload/status/" + encodeURIComponent(sid), { timeoutMs: 5000 });
    if (state.sessionId !== sid) return;
    let next = STATUS_POLL_MS;
    if (!r.ok) {
      errors += 1;
      if (r.status === 404 && errors >= 6) {
        uploadFailed("The upload session is no longer known to the server (was a service restarted?).");
        setBar(procBar, "#processing-progress-text", procBar.value, "unknown", "failed");
        return;
      }
      if (errors >= 120) {
        uploadFailed("Lost track of the processing: " + r.error);
        return;
      }
      setText("#processing-progress-text", "status unavailable, retrying…");
      next = Math.min(3000, STATUS_POLL_MS * (1 + errors));
    } else {
      errors = 0;
      const s = r.data || {};
      const st = String(s.status || "").toLowerCase();
      let pct = num(s.progress);
      const done = num(pick(s, "chunks_done", "chunks_uploaded"));
      const total = num(s.total_chunks);
      if (pct === null && done !== null && total) pct = (done / total) * 100;
      let label = (st || "processing").replace(/_/g, " ");
      if (done !== null && total) label += " · " + done + "/" + total + " chunks";
      if (DONE.has(st)) {
        setBar(procBar, "#processing-progress-text", 100, "completed", "done");
        uploadMessage("“" + (s.title || title) + "” is stored in the cluster" +
          (total ? " (" + total + " chunks)" : "") + ". Press Play in the list.", "success");
        stopStatusPolling();
        refreshVideos(true);
        return;
      }
      if (FAILED.has(st)) {
        setBar(procBar, "#processing-progress-text", procBar.value, "failed", "failed");
        uploadMessage("Processing failed: " + (s.error ? String(s.error) : "no reason given") + ".", "error");
        stopStatusPolling();
        refreshVideos(true);
        return;
      }
      setBar(procBar, "#processing-progress-text", pct === null ? procBar.value : pct,
        (pct === null ? "" : Math.floor(pct) + " % · ") + label);
    }
    state.statusTimer = setTimeout(() => { pollStatus(sid, title, errors).catch((e) => console.error(e)); }, next);
  }

  function setupUpload() {
    input.addEventListener("change", () => { droppedFile = null; showChosen(); uploadMessage(""); });
    uploadButton.addEventListener("click", startUpload);
    titleInput.addEventListener("keydown", (ev) => { if (ev.key === "Enter") startUpload(); });

    const stop = (ev) => { ev.preventDefault(); ev.stopPropagation(); };
    ["dragenter", "dragover"].forEach((t) => dropzone.addEventListener(t, (ev) => { stop(ev); dropzone.classList.add("dragover"); }));
    ["dragleave", "dragend"].forEach((t) => dropzone.addEventListener(t, (ev) => { stop(ev); dropzone.classList.remove("dragover"); }));
    dropzone.addEventListener("drop", (ev) => {
      stop(ev);
      dropzone.classList.remove("dragover");
      try {
        const files = ev.dataTransfer && ev.dataTransfer.files;
        if (!files || !files.length) return;
        try {
          // Put the file in the input too, so the page has a single source of truth.
          const dt = new DataTransfer();
          dt.items.add(files[0]);
          input.files = dt.files;
          droppedFile = null;
        } catch (_) {
          droppedFile = files[0];
        }
        showChosen();
        uploadMessage("");
      } catch (err) {
        uploadMessage("Could not read the dropped file (" + err.message + ").", "error");
      }
    });
    // A file dropped anywhere else must not navigate away from the page.
    window.addEventListener("dragover", (ev) => ev.preventDefault());
    window.addEventListener("drop", (ev) => ev.preventDefault());
  }

  // ------------------------------------------------------------------ videos

  /** /api/videos answers a list, or {"videos": [...]}. */
  function videoArray(data) {
    if (Array.isArray(data)) return data;
    if (data && Array.isArray(data.videos)) return data.videos;
    return null;
  }

  async function refreshVideos(force) {
    const now = Date.now();
    if (!force && now - state.lastVideoFetch < VIDEO_REFRESH_MIN_MS) return;
    state.lastVideoFetch = now;
    const r = await fetchJSON("/api/videos");
    const list = r.ok ? videoArray(r.data) : null;
    if (list) {
      showMessage("#videos-message", "");
      renderVideos(list);
    } else {
      showMessage("#videos-message", "Cannot load the video list: " + (r.error || "unexpected answer") + ".", "error");
      if (!state.videos.length) setText("#video-empty", "No video list yet.");
    }
  }

  const PLAYABLE_NOT = new Set(["uploading", "deleted", "failed", "processing"]);

  function statusClass(st) {
    st = String(st || "").toLowerCase();
    if (st === "active" || st === "completed" || st === "ready") return "ok";
    if (st === "uploading" || st === "processing") return "warn";
    if (st === "deleted" || st === "failed") return "bad";
    return "";
  }

  function renderVideos(list) {
    const videos = list.filter((v) => v && typeof v === "object" && v.video_id);
    let sig = "";
    try { sig = JSON.stringify(videos.map((v) => [v.video_id, v.title, v.status, v.duration_sec, v.total_chunks, v.created_at])); } catch (_) { sig = String(Math.random()); }
    state.videos = videos;
    setText("#video-count", String(videos.length));
    const empty = $("#video-empty");
    empty.textContent = videos.length ? "" : "No videos yet: upload one above.";
    empty.hidden = videos.length > 0;
    if (sig === state.videosSig) return;  // unchanged: keep the DOM (and focus) as it is
    state.videosSig = sig;

    const ul = $("#video-list");
    const frag = document.createDocumentFragment();
    for (const v of videos) {
      const id = String(v.video_id);
      const st = v.status ? String(v.status) : "";
      const playable = !PLAYABLE_NOT.has(st.toLowerCase());
      const li = el("li", { dataset: { videoId: id, status: st }, class: state.playingId === id ? "playing" : "" },
        el("div", { class: "v-main" },
          el("div", { class: "v-title", title: v.title || id, text: v.title || "(untitled)" }),
          el("div", { class: "v-meta" },
            el("span", { class: "badge " + statusClass(st), text: st || "-" }),
            el("span", { title: "duration", text: VS.fmtDuration(v.duration_sec) }),
            el("span", { title: "chunks", text: VS.text(v.total_chunks) + " chunks" }),
            el("span", { title: "created", text: VS.fmtTimestamp(v.created_at) }),
            el("span", { class: "mono", title: id, text: id.slice(0, 8) }))),
        el("button", {
          type: "button", class: "play small", dataset: { videoId: id },
          disabled: !playable, title: playable ? "Play " + (v.title || id) : "Not playable while " + st,
          text: state.playingId === id ? "Playing" : "Play",
        }));
      frag.appendChild(li);
    }
    ul.replaceChildren(frag);
  }

  function setupVideos() {
    $("#video-list").addEventListener("click", (ev) => {
      const btn = ev.target instanceof Element ? ev.target.closest("button.play") : null;
      if (!btn || btn.disabled) return;
      const id = btn.dataset.videoId;
      const v = state.videos.find((x) => String(x.video_id) === id) || { video_id: id };
      play(v).catch((err) => showMessage("#player-message", "Cannot play: " + err.message, "error"));
    });
    $("#videos-refresh").addEventListener("click", () => refreshVideos(true));
  }

  // ------------------------------------------------------------------ player

  const player = $("#player");

  function destroyHls() {
    if (state.hls) {
      try { state.hls.destroy(); } catch (_) { /* already gone */ }
      state.hls = null;
    }
  }

  function markPlaying(id) {
    state.playingId = id;
    for (const li of document.querySelectorAll("#video-list li[data-video-id]")) {
      const on = li.dataset.videoId === id;
      li.classList.toggle("playing", on);
      const b = li.querySelector("button.play");
      if (b) b.textContent = on ? "Playing" : "Play";
    }
  }

  async function startPlayback() {
    try {
      await player.play();
    } catch (err) {
      if (err && err.name === "NotAllowedError") {
        // The browser refused autoplay with sound: play muted, the controls can unmute.
        player.muted = true;
        try { await player.play(); showMessage("#player-message", "Playing muted (the browser blocked sound): unmute with the controls.", "info"); }
        catch (e2) { showMessage("#player-message", "Press ▶ on the player to start.", "info"); }
      } else if (err && err.name !== "AbortError") {
        showMessage("#player-message", "The player could not start: " + (err.message || err.name), "error");
      }
    }
  }

  async function play(v) {
    const id = String(v.video_id);
    showMessage("#player-message", "");
    await loadConfig();
    const url = hlsBase() + "/" + encodeURIComponent(id) + ".m3u8";
    destroyHls();
    player.removeAttribute("src");
    markPlaying(id);
    const now = $("#now-playing");
    now.replaceChildren(
      document.createTextNode("Now playing: "), el("strong", { text: v.title || id }),
      document.createTextNode(" · HLS "), el("a", { href: url, class: "mono", text: url, target: "_blank", rel: "noopener" }));

    const Hls = window.Hls;
    if (Hls && typeof Hls.isSupported === "function" && Hls.isSupported()) {
      // The worker is a vendored file: the page's CSP (default-src 'self') forbids blob: workers.
      const hls = new Hls({ enableWorker: true, workerPath: "/static/vendor/hls.worker.js", lowLatencyMode: false, backBufferLength: 60 });
      state.hls = hls;
      let netRetries = 0;
      hls.on(Hls.Events.MANIFEST_PARSED, () => { startPlayback(); });
      hls.on(Hls.Events.ERROR, (_ev, data) => {
        try {
          if (!data || !data.fatal) return;
          const code = data.response && data.response.code ? data.response.code : 0;
          if (data.type === Hls.ErrorTypes.NETWORK_ERROR && netRetries < 3 && !(code >= 400 && code < 500)) {
            netRetries += 1;
            showMessage("#player-message", "Network trouble fetching the stream, retrying (" + netRetries + "/3)…", "info");
            const manifest = /manifest/i.test(String(data.details || ""));
            setTimeout(() => {
              if (state.hls !== hls) return;
              if (manifest) hls.loadSource(url); else hls.startLoad();
            }, 1000 * netRetries);
          } else if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
            hls.recoverMediaError();
          } else {
            const why = code === 404 ? "the gateway does not know this video (HTTP 404)" : (data.details || "playback error") + (code ? " (HTTP " + code + ")" : "");
            showMessage("#player-message", "Cannot play this video: " + why + ".", "error");
            destroyHls();
          }
        } catch (err) {
          console.error("hls error handler:", err);
        }
      });
      hls.on(Hls.Events.FRAG_LOADED, () => { if (netRetries) { netRetries = 0; showMessage("#player-message", ""); } });
      hls.loadSource(url);
      hls.attachMedia(player);
    } else if (player.canPlayType("application/vnd.apple.mpegurl")) {
      player.src = url;
      startPlayback();
    } else {
      showMessage("#player-message", "This browser cannot play HLS (no Media Source Extensions). Open the HLS link in VLC, mpv or ffplay.", "error");
    }
  }

  player.addEventListener("error", () => {
    if (state.hls) return;  // hls.js reports its own errors
    const e = player.error;
    if (e && player.getAttribute("src")) showMessage("#player-message", "The browser could not play the stream" + (e.message ? ": " + e.message : "") + ".", "error");
  });

  // ------------------------------------------------------------------ dashboard

  function setConn(kind, label) {
    const ind = $("#ws-indicator");
    ind.className = "conn " + kind;
    setText("#ws-status", label);
  }

  function wsURL() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  }

  function connect() {
    clearTimeout(state.wsTimer);
    let ws;
    try {
      ws = new WebSocket(wsURL());
    } catch (err) {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    if (state.fallback && state.fallbackOk) setConn("polling", "polling");
    else setConn("offline", "connecting");
    ws.addEventListener("open", () => {
      // Up only once a message arrives: a socket the server closes at once is not.
      if (state.ws !== ws) return;
      armStale(ws);
    });
    ws.addEventListener("message", (ev) => {
      if (state.ws !== ws) return;
      armStale(ws);
      if (typeof ev.data !== "string") return;
      const p = VS.parseJSON(ev.data);
      if (!p.ok || !p.value || typeof p.value !== "object") return;
      const msg = p.value;
      if (msg.type && msg.type !== "dashboard") return;
      try {
        state.wsAttempt = 0;
        state.wsDownSince = 0;
        if ($("#ws-status").textContent !== "live") {
          stopFallback();
          VS.banner("");
          setConn("live", "live");
        }
        renderDashboard(msg);
      } catch (err) {
        console.error("dashboard render:", err);
      }
    });
    ws.addEventListener("close", () => {
      if (state.ws !== ws) return;
      state.ws = null;
      clearTimeout(state.wsStaleTimer);
      if (!state.wsDownSince) state.wsDownSince = Date.now();
      scheduleReconnect();
    });
    ws.addEventListener("error", () => { /* a close event follows */ });
  }

  function armStale(ws) {
    clearTimeout(state.wsStaleTimer);
    state.wsStaleTimer = setTimeout(() => {
      if (state.ws === ws) {
        console.warn("dashboard socket silent for " + WS_STALE_MS + " ms: reconnecting");
        try { ws.close(); } catch (_) { /* ignore */ }
        state.ws = null;
        if (!state.wsDownSince) state.wsDownSince = Date.now();
        scheduleReconnect();
      }
    }, WS_STALE_MS);
  }

  function scheduleReconnect() {
    clearTimeout(state.wsTimer);
    const base = WS_BACKOFF_MS[Math.min(state.wsAttempt, WS_BACKOFF_MS.length - 1)];
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    state.wsAttempt += 1;
    const downFor = Date.now() - (state.wsDownSince || Date.now());
    if (downFor >= FALLBACK_AFTER_MS) startFallback();
    const secs = Math.max(1, Math.round(delay / 1000));
    if (state.fallback && state.fallbackOk) setConn("polling", "polling (live link retrying in " + secs + " s)");
    else setConn("offline", "offline, retrying in " + secs + " s");
    if (state.wsAttempt > 2) VS.banner("The live dashboard connection is down (is the web service restarting?). Reconnecting by itself…");
    state.wsTimer = setTimeout(connect, delay);
  }

  /** While the socket is down, read the same figures from the REST API. */
  function startFallback() {
    if (state.fallback) return;
    state.fallback = VS.poll(async () => {
      const [h, s] = await Promise.all([fetchJSON("/api/health", { timeoutMs: 4000 }), fetchJSON("/api/stats", { timeoutMs: 4000 })]);
      if (!state.fallback) return;
      state.fallbackOk = h.ok || s.ok;
      if (!state.fallbackOk) {
        setText("#dash-updated", "no answer from the web service: " + (h.error || s.error));
        setConn("offline", "offline, retrying");
        return;
      }
      if (!state.ws || state.ws.readyState !== 1) setConn("polling", "polling");
      renderDashboard({ type: "dashboard", time: Date.now() / 1000, health: h.ok ? h.data : null, stats: s.ok ? s.data : null, viaFallback: true });
      refreshVideos(false);
    }, FALLBACK_POLL_MS);
  }

  function stopFallback() {
    if (state.fallback) { state.fallback.stop(); state.fallback = null; }
    state.fallbackOk = false;
  }

  const UP = new Set(["healthy", "ok", "up", "live", "running", "available"]);

  function isUp(status) {
    if (status === true) return true;
    return UP.has(String(status || "").toLowerCase());
  }

  function renderServices(health) {
    for (const name of ["metadata", "uploader", "client"]) {
      const box = document.querySelector('.service[data-service="' + name + '"]');
      if (!box) continue;
      const h = health ? health[name] : undefined;
      let st;
      if (h === undefined || h === null) st = health ? "unknown" : "-";
      else if (typeof h === "object") st = h.status !== undefined ? String(h.status) : (h.error ? "error" : "unknown");
      else st = String(h);
      const up = h !== undefined && h !== null && isUp(typeof h === "object" ? h.status : h);
      box.classList.toggle("svc-up", up);
      box.classList.toggle("svc-down", !up && st !== "-");
      const detail = h && typeof h === "object" ? (h.error || (h.code ? "HTTP " + h.code : "")) : "";
      box.title = name + ": " + st + (detail ? " (" + detail + ")" : "");
      setText(box.querySelector(".svc-status"), st);
    }
  }

  function nodeList(health) {
    if (!health) return null;
    const n = health.storage_nodes;
    if (Array.isArray(n)) return n.filter((x) => x && typeof x === "object");
    if (n && typeof n === "object") return Object.entries(n).map(([k, v]) => Object.assign({ url: k }, v));
    return null;
  }

  function nodeKey(n) {
    return String(pick(n, "url", "node_url", "node_id") || "?");
  }

  function renderNodes(nodes) {
    const box = $("#nodes");
    const seen = new Set();
    nodes.forEach((n, i) => {
      const key = nodeKey(n);
      seen.add(key);
      let card = null;
      for (const c of box.children) if (c.dataset.nodeUrl === key) { card = c; break; }
      if (!card) card = buildNodeCard(key);
      if (box.children[i] !== card) box.insertBefore(card, box.children[i] || null);
      updateNodeCard(card, n);
    });
    for (const c of Array.from(box.children)) if (!seen.has(c.dataset.nodeUrl)) c.remove();
    $("#nodes-empty").hidden = nodes.length > 0;
  }

  function buildNodeCard(key) {
    return el("div", { class: "node-card", dataset: { nodeUrl: key } },
      el("div", { class: "node-head" },
        el("span", { class: "node-id" }),
        el("span", { class: "badge node-status" })),
      el("div", { class: "node-url", text: key }),
      el("div", { class: "node-body" },
        el("dl", {},
          el("dt", { text: "Chunks" }), el("dd", { class: "node-chunks" }),
          el("dt", { text: "Disk" }), el("dd", { class: "node-disk-text" }),
          el("dt", { text: "Score" }), el("dd", { class: "node-score" })),
        el("div", { class: "bar node-disk", title: "disk usage" }, el("span"))));
  }

  function updateNodeCard(card, n) {
    const st = String(n.status || "unknown").toLowerCase();
    const up = st === "healthy";
    card.classList.toggle("node-up", up);
    card.classList.toggle("node-down", !up);
    for (const c of Array.from(card.classList)) if (c.startsWith("status-")) card.classList.remove(c);
    card.classList.add("status-" + st.replace(/[^a-z0-9_-]/g, ""));
    card.dataset.status = st;
    setText(card.querySelector(".node-id"), pick(n, "node_id", "id") || nodeKey(n));
    const badge = card.querySelector(".node-status");
    setText(badge, st);
    badge.className = "badge node-status " + (up ? "ok" : st === "degraded" ? "warn" : "bad");
    setText(card.querySelector(".node-chunks"), VS.text(num(n.chunk_count)));
    const disk = num(pick(n, "disk_usage", "disk_usage_percent"));
    setText(card.querySelector(".node-disk-text"), disk === null ? "-" : disk.toFixed(1) + " %");
    const bar = card.querySelector(".node-disk");
    bar.querySelector("span").style.width = (disk === null ? 0 : Math.max(0, Math.min(100, disk))) + "%";
    bar.classList.toggle("warn", disk !== null && disk >= 75 && disk < 90);
    bar.classList.toggle("bad", disk !== null && disk >= 90);
    const score = num(n.score);
    setText(card.querySelector(".node-score"), score === null ? "-" : score.toFixed(score >= 100 ? 0 : 3));
    const err = n.error ? String(n.error) : "";
    card.title = nodeKey(n) + ": " + st + (err ? " (" + err + ")" : "");
  }

  function setStat(key, value, fmt) {
    setText("#stat-" + key, value === undefined || value === null ? "-" : (fmt ? fmt(value) : VS.fmtNum(value)));
  }

  function renderStats(stats, nodes) {
    const s = stats && typeof stats === "object" ? stats : {};
    setStat("total_videos", num(s.total_videos));
    setStat("total_chunks", num(s.total_chunks));
    setStat("replicas", num(pick(s, "replicas", "total_replicas")));
    setStat("shards", num(pick(s, "shards", "total_shards", "fragments")));
    setStat("repairs", num(pick(s, "repairs", "repairs_done")));
    setStat("bytes_moved", num(s.bytes_moved), VS.fmtBytes);
    const under = num(s.under_replicated_chunks);
    setStat("under_replicated_chunks", under);
    $("#stat-box-under").classList.toggle("warn", !!under);
    let healthy = null;
    let total = null;
    if (nodes) {
      healthy = nodes.filter((n) => String(n.status || "").toLowerCase() === "healthy").length;
      total = nodes.length;
    } else if (num(s.healthy_nodes) !== null) {
      healthy = num(s.healthy_nodes);
    }
    setText("#stat-healthy_nodes", healthy === null ? "-" : total !== null ? healthy + " / " + total : String(healthy));
    const box = $("#stat-box-nodes");
    box.classList.toggle("good", healthy !== null && total !== null && healthy === total && total > 0);
    box.classList.toggle("bad", healthy !== null && total !== null && healthy < total);
    return { chunks: num(s.total_chunks), healthy };
  }

  function renderDashboard(msg) {
    const health = msg.health && typeof msg.health === "object" ? msg.health : null;
    renderServices(health);
    const nodes = nodeList(health);
    if (nodes) renderNodes(nodes);
    const fig = renderStats(msg.stats, nodes);
    const t = num(msg.time) !== null ? num(msg.time) : Date.now() / 1000;
    setText("#dash-updated", (msg.viaFallback ? "polled " : "updated ") + VS.fmtClock(t));
    pushChart(t, fig.chunks, fig.healthy);
    const vids = videoArray(msg.videos);
    if (vids) {
      state.lastVideoFetch = Date.now();
      renderVideos(vids);
    } else if (!msg.viaFallback) {
      refreshVideos(false);
    }
  }

  // ------------------------------------------------------------------ chart

  function setupChart() {
    const box = $("#chart");
    if (typeof window.uPlot !== "function") {
      box.appendChild(el("div", { class: "chart-fallback", text: "The chart library did not load; the figures above are still live." }));
      return;
    }
    const opts = {
      width: Math.max(300, box.clientWidth || 600),
      height: 240,
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true, range: (u, min, max) => (max == null ? [Date.now() / 1000 - 300, Date.now() / 1000] : [Math.min(min, max - 300), max]) }, y: { range: (u, min, max) => [0, Math.max(4, Math.ceil((max || 0) * 1.15))] }, y2: { range: (u, min, max) => [0, Math.max(3, Math.ceil((max || 0) + 1))] } },
      series: [
        {},
        { label: "Total chunks", scale: "y", stroke: "#5b9dff", width: 2, fill: "rgba(91,157,255,0.10)", value: (u, v) => (v === null || v === undefined ? "-" : String(v)) },
        { label: "Healthy nodes", scale: "y2", stroke: "#3ecf8e", width: 2, paths: window.uPlot.paths && window.uPlot.paths.stepped ? window.uPlot.paths.stepped({ align: 1 }) : undefined, value: (u, v) => (v === null || v === undefined ? "-" : String(v)) },
      ],
      axes: VS.chartAxes("chunks", "healthy nodes"),
    };
    try {
      state.chart = new window.uPlot(opts, [[], [], []], box);
      VS.autoSize(state.chart, box, 240);
    } catch (err) {
      console.error("chart:", err);
      box.appendChild(el("div", { class: "chart-fallback", text: "The chart could not be drawn." }));
    }
  }

  function pushChart(t, chunks, healthy) {
    const s = state.series;
    if (s.t.length && t <= s.t[s.t.length - 1]) t = s.t[s.t.length - 1] + 0.001;
    s.t.push(t); s.chunks.push(chunks); s.healthy.push(healthy);
    const cutoff = t - CHART_WINDOW_S;
    while (s.t.length && s.t[0] < cutoff) { s.t.shift(); s.chunks.shift(); s.healthy.shift(); }
    if (state.chart) {
      try { state.chart.setData([s.t.slice(), s.chunks.slice(), s.healthy.slice()]); }
      catch (err) { console.error("chart update:", err); }
    }
  }

  // ------------------------------------------------------------------ start

  function main() {
    resetBars();
    setupUpload();
    setupVideos();
    setupChart();
    loadConfig().then((c) => {
      if (!c) {
        // Retry quietly: the page works without it until someone presses Play.
        setTimeout(() => loadConfig(), 5000);
      }
    });
    refreshVideos(true);
    connect();
  }

  try {
    main();
  } catch (err) {
    console.error("V-Stack page:", err);
    VS.banner("The page could not start completely: " + err.message);
  }
})();
