// PTQ4VM browser client: camera (or a video file) -> mattes composited live over a blurred,
// coloured or image background. No build step. Modes (DESIGN 4.5,
// `?mode=tab|server|webrtc|auto`): "server" sends JPEG frames over /v1/stream (DESIGN 4.3 /
// docs/server.md); "this tab" runs the server's graph in onnxruntime-web (tab.js); "webrtc"
// publishes the camera over WHIP and shows the composite track the server returns
// (webrtc.js); "auto" picks between the tab and the server. In the tab, plan.js picks the
// backend, graph and downsample ratio from what this device measured.
// Test hooks: window.ptq4vmStats, window.ptq4vm and body[data-state].
// Past 400 lines because the four modes share the page's state, its stats and its compositing;
// what each mode needs beyond that lives in its own module (tab.js, plan.js, webrtc.js, ...).

import { SceneCuts } from "./scene.js";
import { TabPlan, ratioLadder } from "./plan.js";
import { exportRecording } from "./recording.js";
import { backgroundParam, publish } from "./webrtc.js";

const WINDOW = 2;             // frames in flight; the server drops older waiting frames anyway
const MODES = ["server", "tab", "webrtc", "auto"];
const params = new URLSearchParams(location.search);
const RETRY_MS = [500, 1000, 2000, 4000, 8000];

const $ = (id) => document.getElementById(id);
const video = $("video");
const output = $("output");
const out = output.getContext("2d");
const capture = document.createElement("canvas");
const cap = capture.getContext("2d", { willReadFrequently: true });
const fg = document.createElement("canvas");
const fgx = fg.getContext("2d", { willReadFrequently: true });

// Everything the page knows, also read by the end-to-end test.
const state = {
  state: "idle", session: null, model: null, width: 0, height: 0,
  sent: 0, mattes: 0, dropped: 0, latencyMs: null, fps: 0, reconnects: 0, error: null,
  resets: 0, recording: null,
};
window.ptq4vm = state;
// The figures the page shows, for tests (DESIGN 4.5): `mode` is where frames are matted now
// ("tab" or "server"; null when stopped), `requested` what was chosen, `frames` the mattes
// shown since Start, `downsample_ratio` the tab's (null: the server's own choice); `backend`,
// `plan` and `measured` say what the tab runs on and what it measured (docs/browser.md).
const stats = {
  mode: null, frames: 0, fps: 0, latency_ms: null, model: null,
  requested: MODES.includes(params.get("mode")) ? params.get("mode") : "server",
  downsample_ratio: null, reason: null, threads: null,
  backend: null, backend_reason: null, plan: null, measured: [], target_fps: null,
  matte_ms: null,
};
window.ptq4vmStats = stats;
// Simulates a network failure (a close the server did not ask for): for tests and demos.
state.dropConnection = () => ws?.close(4000, "dropped by the page");

let ws = null;
let running = false;
let nextSeq = 0;
const pending = new Map();    // seq -> {bitmap, sentAt}: frames awaiting their matte
let header = null;            // the matte message whose binary payload comes next
let bgImage = null;
let retry = 0;
let matteTimes = [];
let tab = null;               // TabMatter of the current run, when the tab mattes
let plan = null;              // its TabPlan: what it runs with, from what it measured
let closeWhip = null;         // ends the WebRTC session, in "webrtc" mode
const returned = document.createElement("video");  // the track the server sends back
returned.muted = true;
returned.playsInline = true;
const scenes = new SceneCuts();

function setState(name, detail) {
  state.state = name;
  document.body.dataset.state = name;
  const el = $("status");
  el.className = `status ${name}`;
  el.textContent = detail ? `${name}: ${detail}` : name;
}

function showError(message) {
  state.error = message;
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
}

function streamUrl() {
  const base = params.get("server") ||
    `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/stream`;
  return state.session ? `${base}?session=${encodeURIComponent(state.session)}` : base;
}

async function openSource() {
  const source = document.querySelector('input[name="source"]:checked').value;
  if (source === "file") {
    const file = $("video-file").files[0];
    if (!file) throw new Error("choose a video file first");
    video.srcObject = null;
    video.src = URL.createObjectURL(file);
    video.loop = true;
  } else {
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new Error("this browser gives no camera access here (needs https or localhost)");
    }
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  }
  await video.play();
  if (!video.videoWidth) await new Promise((r) => video.addEventListener("loadedmetadata", r, { once: true }));
  const maxSide = Number($("max-side").value) || 640;
  const scale = Math.min(1, maxSide / Math.max(video.videoWidth, video.videoHeight));
  state.width = Math.max(2, Math.round((video.videoWidth * scale) / 2) * 2);
  state.height = Math.max(2, Math.round((video.videoHeight * scale) / 2) * 2);
  for (const c of [capture, fg, output]) { c.width = state.width; c.height = state.height; }
}

function connect() {
  setState(state.session ? "reconnecting" : "connecting");
  header = null;
  pending.clear();
  const socket = new WebSocket(streamUrl());
  socket.binaryType = "arraybuffer";
  ws = socket;
  socket.onopen = () => socket.send(JSON.stringify({
    type: "start", width: state.width, height: state.height,
    input: "jpeg", output: "alpha_raw", downsample_ratio: chosenRatio(), model: chosenModel(),
  }));
  socket.onmessage = (event) => { if (socket === ws) onMessage(event.data); };
  socket.onclose = (event) => { if (socket === ws) onClose(event); };
}

function onMessage(data) {
  if (typeof data !== "string") {
    if (header) onMatte(header, new Uint8Array(data));
    header = null;
    return;
  }
  const msg = JSON.parse(data);
  if (msg.type === "started") {
    if (state.session && !msg.resumed) showError("the session had expired; a new one started");
    else showError("");
    state.session = msg.session;
    state.model = msg.model;
    nextSeq = msg.next_seq ?? 0;
    retry = 0;
    $("session").textContent = msg.session.slice(0, 8);
    $("model").textContent = msg.model;
    stats.model = msg.model;
    scenes.forget();
    setState("streaming", "server");
    pump();
  } else if (msg.type === "matte") {
    header = msg;
  } else if (msg.type === "error") {
    if (msg.seq !== undefined) pending.delete(msg.seq);
    showError(`${msg.code}: ${msg.message}`);
    pump();
  }
}

function onClose(event) {
  ws = null;
  if (!running) { setState("idle"); return; }
  if (event.code === 1008 || event.code === 1003) {  // the server refuses what we send
    setState("disconnected", `closed ${event.code}`);
    showError(`the server closed the stream (${event.code}) ${event.reason || ""}`);
    return;
  }
  const delay = RETRY_MS[Math.min(retry, RETRY_MS.length - 1)];
  retry += 1;
  state.reconnects += 1;
  setState("disconnected", `retrying in ${(delay / 1000).toFixed(1)} s`);
  setTimeout(() => { if (running && !ws) connect(); }, delay);
}

// Send the current video frame when fewer than WINDOW are in flight.
async function pump() {
  while (running && ws && ws.readyState === WebSocket.OPEN && state.state === "streaming" &&
         pending.size < WINDOW) {
    cap.drawImage(video, 0, 0, state.width, state.height);
    if (scenes.isCut(capture)) {
      ws.send(JSON.stringify({ type: "reset" }));
      state.resets += 1;
    }
    const seq = nextSeq++;
    const entry = { bitmap: null, sentAt: 0 };
    pending.set(seq, entry);
    const [bitmap, blob] = await Promise.all([
      createImageBitmap(capture),
      new Promise((r) => capture.toBlob(r, "image/jpeg", Number($("quality").value) || 0.85)),
    ]);
    entry.bitmap = bitmap;
    if (!ws || ws.readyState !== WebSocket.OPEN || !pending.has(seq)) return;
    entry.sentAt = performance.now();
    ws.send(await blob.arrayBuffer());
    state.sent += 1;
  }
}

function onMatte(msg, alpha) {
  for (const seq of msg.dropped || []) {
    pending.get(seq)?.bitmap?.close();
    pending.delete(seq);
  }
  state.dropped += (msg.dropped || []).length;
  const entry = pending.get(msg.seq);
  pending.delete(msg.seq);
  pump();
  if (!entry || !entry.bitmap) return;
  composite(entry.bitmap, alpha, msg.width, msg.height);
  entry.bitmap.close();
  shown(entry.sentAt, msg.model);
}

// Bookkeeping after a matte is on screen, in either mode.
function shown(startedAt, model) {
  const now = performance.now();
  state.latencyMs = now - startedAt;
  state.mattes += 1;
  state.model = model;
  matteTimes.push(now);
  matteTimes = matteTimes.filter((t) => now - t < 1000);
  state.fps = matteTimes.length;
  Object.assign(stats, {
    frames: stats.frames + 1, fps: state.fps, latency_ms: state.latencyMs, model,
  });
  $("fps").textContent = state.fps.toFixed(0);
  $("latency").textContent = state.latencyMs.toFixed(0);
  $("drops").textContent = String(state.dropped);
  $("model").textContent = model;
}

function showMode() {
  const where = { tab: "this tab", server: "server", webrtc: "server (WebRTC)" }[stats.mode] || "–";
  $("mode-now").textContent = stats.requested === "auto" ? `${where} (auto)` : where;
  $("ratio-now").textContent = stats.mode === "tab" ? String(stats.downsample_ratio) : "server's";
  $("backend-now").textContent = stats.mode === "tab" ? `${stats.backend} (${stats.plan})` : "–";
  $("reason").textContent = stats.reason || "";
}

function targetFps() { return Math.max(1, Number($("target-fps").value) || 15); }
function chosenModel() { return params.get("model") || null; }
// The user's ratio, else null: the server then picks RVM's guidance for the size.
function chosenRatio() {
  const value = Number($("ratio").value);
  return value > 0 && value <= 1 ? value : null;
}
// What the server would pick (pipeline.auto_downsample_ratio), so both modes matte alike.
function serverRatio() {
  return chosenRatio() ?? Math.min(1, 512 / Math.max(state.width, state.height));
}

// "server" from here on: the tab loop ends at its next frame, the WebSocket takes over.
function useServer(reason) {
  tab = null;
  plan = null;
  stats.mode = "server";
  stats.downsample_ratio = null;
  stats.backend = null;
  stats.reason = reason;
  showMode();
  connect();
}

// The tab's candidates: each backend this browser offers x the chosen model (or the active
// version and fp32: the int8 graph is not always the faster one in WebAssembly).
async function useTab() {
  stats.mode = "tab";
  setState("loading", "the model for this tab");
  try {
    const { TabMatter, chooseBackends } = await import("./tab.js");
    const offered = await chooseBackends(params.get("backend"));
    const active = chosenModel() || (await (await fetch("/v1/models")).json()).active;
    const models = chosenModel() || active === "fp32" ? [active] : [active, "fp32"];
    tab = await TabMatter.load(offered.backends);
    plan = new TabPlan({
      candidates: offered.backends.flatMap((backend) => models.map((model) => ({ backend, model }))),
      ratios: ratioLadder(chosenRatio(), serverRatio()),
      target: targetFps(),
      fallback: stats.requested === "auto",
    });
    Object.assign(stats, {
      threads: tab.threads, backend_reason: offered.why, target_fps: plan.target, measured: [],
    });
    for (;;) {   // the first candidate's session, before the stream shows: a failed one is dropped
      const choice = plan.current();
      try { await tab.session(choice); break; } catch (err) {
        if (plan.onFailure(choice, err) === "server") throw err;
      }
    }
    showPlan(plan.current());
  } catch (err) {
    tab = null;
    plan = null;
    if (stats.requested === "auto" && running) { useServer(`this tab cannot matte: ${err.message || err}`); return; }
    showError(`this tab cannot matte: ${err.message || err}`);
    setState("disconnected", "tab failed");
    return;
  }
  if (!running) return;
  scenes.forget();
  setState("streaming", "this tab");
  tabLoop(tab, plan);
}

function showPlan(choice) {
  Object.assign(stats, {
    downsample_ratio: choice.ratio, backend: choice.backend, plan: plan.phase,
    reason: plan.reason, measured: plan.measured.map((m) => ({ ...m })),
  });
  showMode();
}

// One frame after another, the plan's choice for each; paced to the target rate once settled
// (never faster on average; no queue: each run takes the current frame), unpaced while
// measuring.
async function tabLoop(matter, steps) {
  const limit = Number(params.get("record")) || 0;
  state.recording = limit ? { width: state.width, height: state.height, frames: [] } : null;
  let next = performance.now();
  while (running && tab === matter) {
    const startedAt = performance.now();
    const choice = steps.current();
    cap.drawImage(video, 0, 0, state.width, state.height);
    const reset = scenes.isCut(capture);
    if (reset) { matter.reset(); state.resets += 1; }
    const image = cap.getImageData(0, 0, state.width, state.height);
    let alpha = null;
    let verdict;
    try {
      const matteAt = performance.now();
      alpha = await matter.matte(image, choice);
      stats.matte_ms = performance.now() - matteAt;
    } catch (err) {
      if (tab !== matter) return;
      verdict = steps.onFailure(choice, err);
      showError(`this tab could not run ${choice.model} on ${choice.backend}: ${err.message || err}`);
    }
    if (!running || tab !== matter) return;
    if (alpha) {
      if (state.recording && state.recording.frames.length < limit) {
        state.recording.frames.push({ rgba: image.data, alpha, reset, ...choice });
      }
      composite(capture, alpha, state.width, state.height);
      shown(startedAt, choice.model);
      verdict = steps.onFrame(performance.now() - startedAt, performance.now());
    }
    showPlan(choice);
    if (verdict === "server") {
      if (stats.requested === "auto") { useServer(steps.reason); return; }
      showError(steps.reason);
      setState("disconnected", "tab failed");
      return;
    }
    // Settled: frames on a fixed schedule, a late one made up by the next (a frame over one
    // interval behind starts the schedule afresh); measuring: no wait.
    const interval = 1000 / targetFps();
    next = steps.phase === "settled" ? next + interval : performance.now();
    if (performance.now() - next > interval) next = performance.now();
    await new Promise((r) => setTimeout(r, Math.max(0, next - performance.now())));
  }
}

// The recording (`?record=N`, tab mode) as base64 RGB and alpha planes, for the parity test.
state.exportRecording = () => exportRecording(state.recording);

function drawBackground(frame) {
  const mode = document.querySelector('input[name="background"]:checked').value;
  const { width, height } = output;
  if (mode === "colour") {
    out.fillStyle = $("bg-colour").value;
    out.fillRect(0, 0, width, height);
  } else if (mode === "image" && bgImage) {
    out.drawImage(bgImage, 0, 0, width, height);
  } else {
    out.filter = `blur(${Math.max(4, Math.round(width / 60))}px)`;
    out.drawImage(frame, 0, 0, width, height);
    out.filter = "none";
  }
}

// The frame with the matte as its alpha channel, drawn over the background.
function composite(frame, alpha, width, height) {
  fgx.drawImage(frame, 0, 0, width, height);
  const pixels = fgx.getImageData(0, 0, width, height);
  const rgba = pixels.data;
  for (let i = 0, j = 3; i < alpha.length; i += 1, j += 4) rgba[j] = alpha[i];
  fgx.putImageData(pixels, 0, 0);
  drawBackground(frame);
  out.drawImage(fg, 0, 0);
}

async function start() {
  showError("");
  $("start").disabled = true;
  try {
    await openSource();
  } catch (err) {
    showError(`cannot open the source: ${err.message || err}`);
    $("start").disabled = false;
    return;
  }
  running = true;
  state.session = null;
  matteTimes = [];
  Object.assign(stats, { frames: 0, fps: 0, latency_ms: null, reason: null });
  stats.requested = $("mode").value;
  $("stop").disabled = false;
  if (stats.requested === "server") {
    useServer(null);
  } else if (stats.requested === "webrtc") {
    useWebrtc();
  } else {
    useTab();
  }
}

// "webrtc": the camera (or the file, captured) published over WHIP; the composite comes back.
async function useWebrtc() {
  stats.mode = "webrtc";
  stats.downsample_ratio = chosenRatio();
  showMode();
  setState("connecting");
  const source = video.srcObject || video.captureStream();
  const query = new URLSearchParams({ output: "composite" });
  const choice = document.querySelector('input[name="background"]:checked').value;
  query.set("background", await backgroundParam(choice, $("bg-colour").value, $("bg-image").files[0]));
  if (chosenRatio() !== null) query.set("downsample_ratio", String(chosenRatio()));
  if (chosenModel()) query.set("model", chosenModel());
  try {
    closeWhip = await publish({
      track: source.getVideoTracks()[0],
      url: new URL(`/v1/whip?${query}`, location.href).href,
      onTrack: (stream) => {
        returned.srcObject = stream;
        returned.play().catch(() => {});
        const draw = () => {
          if (stats.mode !== "webrtc") return;
          if (returned.videoWidth) out.drawImage(returned, 0, 0, output.width, output.height);
          returned.requestVideoFrameCallback(draw);
        };
        returned.requestVideoFrameCallback(draw);
        setState("streaming");
      },
      onStats: (obj) => {
        state.dropped += obj.dropped.length;
        // The server's receipt-to-matte time plus the way back is what the data channel knows.
        shown(performance.now() - obj.latency_ms, obj.model);
        stats.latency_ms = obj.latency_ms;
      },
      onEnd: (reason) => { if (running) { showError(`WebRTC session ended: ${reason}`); stop(); } },
    });
  } catch (err) {
    showError(`WebRTC: ${err.message || err}`);
    stop();
  }
}

function stop() {
  running = false;
  if (closeWhip) { closeWhip(); closeWhip = null; }
  tab = null;
  plan = null;
  stats.mode = null;
  showMode();
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "stop" }));
  video.pause();
  video.srcObject?.getTracks().forEach((t) => t.stop());
  $("start").disabled = false;
  $("stop").disabled = true;
  setState("idle");
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("bg-image").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  bgImage = file ? await createImageBitmap(file) : null;
  if (bgImage) document.querySelector('input[name="background"][value="image"]').checked = true;
});
// A dropped socket that the browser has not noticed yet: resume when the tab comes back.
window.addEventListener("online", () => { if (running && !ws) connect(); });
$("mode").value = stats.requested;
if (params.has("fps")) $("target-fps").value = params.get("fps");
if (params.has("ratio")) $("ratio").value = params.get("ratio");
if (params.has("maxside")) $("max-side").value = params.get("maxside");
showMode();
if (params.has("autostart")) start();
