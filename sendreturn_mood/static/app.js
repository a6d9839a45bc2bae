// sendreturn-mood live page: a protocol v1 client (PROTOCOL.md) in plain JavaScript, no build step, nothing external.
//
// The protocol (connecting, reconnecting, refusals, track/preset/end) and the audio capture are the JS client
// package (clients/js, served here as ./client/): MoodClient and startCapture. Source roles capture the microphone
// or play a local file through its AudioWorklet ("pcm-sender"), which posts ~100 ms of mono PCM s16le at the
// AudioContext's own rate; the page announces that rate when it connects and sends the chunks as binary frames. Every role shows what the server broadcasts to the room:
// mood + probabilities, a valence/arousal plane with the recent trail, the effect parameters, and a scene whose
// look is driven by the effect parameters (what a SEND/RETURN client does with them).
//
// URL parameters: ?room=lobby&role=mic|file|listener&preset=NAME&server=HOST:PORT&connect=1

import { CLOSE_TEXT, MoodClient, ROOM_RE, startCapture } from "./client/index.js";

const CHUNK_MS = 100; // audio per binary message (the protocol recommends 20-250 ms)
const TRAIL_POINTS = 80; // valence/arousal history drawn on the plane
const SCENE_TIME_CONSTANT_S = 0.6; // how quickly the scene eases toward new effect values
const SCENE_FRAME_MS = 33; // scene redraw interval
const MOOD_COLORS = { happy: "#ffd166", angry: "#ef476f", sad: "#4f8fd9", calm: "#06d6a0" };
const PALETTE = ["#ffd166", "#ef476f", "#4f8fd9", "#06d6a0", "#c77dff", "#ff9f1c", "#9ef01a", "#f15bb5"];
// Where a mood sits on the plane when the model does not say (Russell quadrants, as in the shipped models).
const DEFAULT_COORDINATES = {
  happy: [0.7, 0.5], angry: [-0.6, 0.7], sad: [-0.6, -0.5], calm: [0.5, -0.6],
};
// Ranges of the parameters in the shipped effects.yaml (the protocol does not send ranges); other numeric effects
// are scaled against the range seen so far.
const KNOWN_RANGES = {
  brightness: [0.2, 2.0], stereo_width: [0, 2], particle_rate: [0, 200], motion_speed: [0, 3],
};
const $ = (id) => document.getElementById(id);

const state = {
  client: null, // the MoodClient of this Connect press
  wantConnected: false,
  opened: false, // the current socket is open
  role: "mic",
  room: "lobby",
  audio: null, // {capture, rate, file}
  sentSamples: 0,
  updates: 0,
  errors: 0,
  moods: [], // [{label, valence, arousal}]
  genres: [],
  trail: [], // [{v, a, color}]
  last: null, // the latest mood message
  track: null,
  ranges: {}, // observed min/max of each numeric effect, for the bars
};
window.sendreturnMood = state; // handy in the console, and for the browser test

// ---------------------------------------------------------------------------------------------------- status, errors

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.dataset.state = kind;
}

function showError(text, detail) {
  state.errors += 1;
  const list = $("error-list");
  const latest = list.firstElementChild;
  if (latest && latest.dataset.text === text && latest.dataset.detail === String(detail || "")) {
    // the same problem again (e.g. every reconnect attempt): count it instead of filling the list
    latest.dataset.count = String(Number(latest.dataset.count) + 1);
    latest.querySelector("time").textContent = `${new Date().toLocaleTimeString()} (×${latest.dataset.count})`;
    $("errors").hidden = false;
    return;
  }
  const li = document.createElement("li");
  li.dataset.text = text;
  li.dataset.detail = String(detail || "");
  li.dataset.count = "1";
  const time = new Date().toLocaleTimeString();
  li.innerHTML = `<time>${time}</time> `;
  const strong = document.createElement("strong");
  strong.textContent = text;
  li.appendChild(strong);
  if (detail) {
    const p = document.createElement("div");
    p.className = "detail";
    p.textContent = detail;
    li.appendChild(p);
  }
  list.prepend(li);
  while (list.children.length > 20) list.lastChild.remove();
  $("errors").hidden = false;
}

// ------------------------------------------------------------------------------------------------------- connecting

function serverBase() {
  const custom = $("server").value.trim();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  if (custom) return custom.includes("://") ? custom.replace(/\/+$/, "") : `${scheme}//${custom}`;
  return `${scheme}//${location.host}`;
}

async function connect() {
  const room = $("room").value.trim();
  if (!ROOM_RE.test(room)) {
    showError("That room name is not allowed.", "Use 1 to 64 characters: letters, digits, _ . -");
    return;
  }
  state.room = room;
  state.role = $("role").value;
  state.wantConnected = true;
  updateListenerLink();
  setControls(true);
  if (state.role !== "listener" && !state.audio) {
    try {
      state.audio = await startAudio(state.role);
    } catch (err) {
      showError(audioErrorText(err), String(err && err.message ? err.message : err));
      disconnect();
      return;
    }
  }
  openClient();
}

function openClient() {
  const source = state.role !== "listener";
  const client = new MoodClient({
    url: serverBase(),
    room: state.room,
    role: source ? "source" : "listener",
    encoding: "pcm_s16le",
    sampleRate: source ? state.audio.rate : undefined,
    channels: 1,
    preset: source ? $("preset").value.trim() || undefined : undefined,
    token: $("token").value.trim() || undefined,
  });
  state.client = client;
  if (state.role === "file" && state.audio.file) client.track(fileTrack(state.audio.file)); // sent on open
  client.on("open", () => {
    state.opened = true;
    setStatus(`connected to ${state.room} as ${source ? "source" : "listener"}`, "open");
  });
  client.on("welcome", onWelcome);
  client.on("mood", onMood);
  client.on("source", (msg) => {
    $("source-state").textContent = msg.state;
    $("source-state").dataset.state = msg.state;
  });
  client.on("error", (msg) => showError(`Server error: ${msg.code}${msg.fatal ? " (fatal)" : ""}`, msg.message));
  client.on("refused", onRefused);
  client.on("close", onClose);
  client.on("reconnecting", (r) => setStatus(`${r.reason}: reconnecting in ${(r.delayMs / 1000).toFixed(1)} s`, "retry"));
  setStatus(`connecting to ${state.room}…`, "connecting");
  client.connect().catch(() => {}); // failures arrive as refused/close events
}

// The handshake failed: the client asked the server over HTTP what it could (a browser cannot read the refusal).
function onRefused(r) {
  if (r.code === "unreachable") {
    showError(`Cannot reach the server at ${serverBase()}.`, "Is `python -m sendreturn_mood serve` running? Retrying…");
  } else if (r.code === "source_taken" && !r.willRetry) {
    showError("The server refused to connect: 409 source_taken", r.message);
  } else if (r.code === "bad_request") {
    showError("The server refused to connect: 400 bad_request", r.message);
  } else if (!r.willRetry) {
    showError(
      "The server refused the connection.",
      "The browser cannot show the server's reason. Likely causes: the server needs a token (401; set it " +
        "under “more”), an unknown preset or bad parameter (400), or the server is full (503). " +
        "`python examples/listen.py` or `python examples/stream_file.py` with the same settings print the " +
        "server's JSON answer.",
    );
  }
}

function onClose(c) {
  state.opened = false;
  if (!state.wantConnected) return;
  if (!c.opened) {
    if (!c.willReconnect) {
      disconnect(c.refusal && c.refusal.code === "source_taken" ? "refused: the room already has a source" : "refused");
    }
    return;
  }
  const why = CLOSE_TEXT[c.code] || "closed";
  if (c.code === 1000) {
    disconnect(`closed ${c.code}: ${why}`);
    return;
  }
  showError(`Connection closed: ${c.code}${c.reason ? ` “${c.reason}”` : ""}`, why);
  if (!c.willReconnect) disconnect(`closed ${c.code}`);
}

function disconnect(why) {
  state.wantConnected = false;
  state.opened = false;
  if (state.client) {
    const client = state.client;
    state.client = null;
    client.close(1000, "bye");
  }
  stopAudio();
  setControls(false);
  setStatus(why || "not connected", "idle");
}

function fileTrack(file) {
  return { id: `file:${file.name}`, title: file.name.replace(/\.[^.]+$/, "") };
}

// ------------------------------------------------------------------------------------------------------------ audio

async function startAudio(role) {
  let stream = null;
  if (role === "mic") {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("this browser gives no microphone access here (it needs http://localhost or https)");
    }
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  }
  const file = role === "file" ? $("file").files[0] : null;
  if (role === "file" && !file) throw new Error("choose an audio file first");
  const capture = await startCapture(stream, { chunkMs: CHUNK_MS, onChunk: onPcm });
  const audio = { capture, rate: capture.sampleRate, file: null };
  if (file) attachFile(audio, file);
  $("sent").title = `${capture.sampleRate} Hz mono s16le`;
  return audio;
}

// Play `file` through the audio graph: to the speakers (the person hears it) and to the worklet (the room hears it).
function attachFile(audio, file) {
  // A media element can feed only one audio graph in its life, so every file gets a fresh element.
  const player = new Audio();
  player.controls = true;
  player.src = URL.createObjectURL(file);
  player.id = "player";
  $("player").replaceWith(player);
  audio.capture.attachElement(player);
  audio.file = file;
  player.play().catch((err) => showError("The file cannot be played.", String(err)));
}

function audioErrorText(err) {
  const name = err && err.name;
  if (name === "NotAllowedError") return "Microphone access was denied. Allow it in the address bar and try again.";
  if (name === "NotFoundError") return "No microphone found.";
  if (name === "NotReadableError") return "The microphone is busy in another program.";
  return "Could not start the audio input.";
}

function onPcm(pcm, level) {
  $("level").style.width = `${Math.min(100, level * 300).toFixed(0)}%`;
  if (!state.client || !state.client.sendAudio(pcm)) return;
  state.sentSamples += pcm.byteLength / 2;
  $("sent").textContent = (state.sentSamples / state.audio.rate).toFixed(1);
}

function stopAudio() {
  const audio = state.audio;
  state.audio = null;
  if (!audio) return;
  audio.capture.stop();
  state.sentSamples = 0;
}

// --------------------------------------------------------------------------------------------------------- messages

function onWelcome(msg) {
  const model = msg.model || {};
  state.moods = (model.moods || []).map((m, i) => {
    const label = typeof m === "string" ? m : m.label || m.name || `mood${i}`;
    const given = (model.coordinates || {})[label];
    const fallback = given ? [given.valence, given.arousal]
      : DEFAULT_COORDINATES[label] || [Math.cos(i * 1.7) * 0.6, Math.sin(i * 1.7) * 0.6];
    return {
      label,
      valence: typeof m === "object" && typeof m.valence === "number" ? m.valence : fallback[0],
      arousal: typeof m === "object" && typeof m.arousal === "number" ? m.arousal : fallback[1],
      color: MOOD_COLORS[label] || PALETTE[i % PALETTE.length],
    };
  });
  state.genres = model.genres || [];
  $("model").textContent = `${model.name || "?"} ${model.version || ""}`.trim();
  const analysis = msg.analysis || {};
  $("hop").textContent = analysis.hop_seconds ? `${analysis.hop_seconds} s` : "–";
  $("preset-name").textContent = msg.preset || "–";
  if (msg.role === "source") {
    $("source-state").textContent = "you";
    $("source-state").dataset.state = "connected";
  }
  buildBars();
}

function moodColor(label) {
  const m = state.moods.find((x) => x.label === label);
  return (m && m.color) || MOOD_COLORS[label] || "#cccccc";
}

function onMood(msg) {
  state.updates += 1;
  if ($("source-state").textContent === "unknown") {
    // the welcome does not say whether the room has a source, but updates only flow while one streams
    $("source-state").textContent = "connected";
    $("source-state").dataset.state = "connected";
  }
  state.last = msg;
  $("update-count").textContent = String(state.updates);
  $("seq").textContent = String(msg.seq);
  const label = msg.mood || "–"; // null: the track has had no music yet
  const el = $("mood");
  el.textContent = label;
  el.dataset.mood = label;
  el.style.color = moodColor(label);
  $("confidence").textContent = fmt(msg.confidence, 2);
  $("stream-time").textContent = fmt(msg.stream_time, 1);
  $("latency").textContent = fmt(msg.latency_ms, 1);
  $("genre").textContent = msg.genre && msg.genre.label ? msg.genre.label : "–";
  $("track").textContent = msg.track ? msg.track.title || msg.track.id || "–" : "–";
  if (msg.preset) $("preset-name").textContent = msg.preset;
  document.title = `${label} · ${state.room} · sendreturn-mood`;
  updateBars(msg.probabilities || {}, (msg.instant && msg.instant.probabilities) || {});
  state.trail.push({ v: msg.valence, a: msg.arousal, color: moodColor(label) });
  if (state.trail.length > TRAIL_POINTS) state.trail.shift();
  $("va-text").textContent = `V ${signed(msg.valence)} · A ${signed(msg.arousal)}`;
  drawPlane();
  updateEffects(msg.effects || {});
  scene.setTargets(msg);
}

function fmt(x, digits) {
  return typeof x === "number" ? x.toFixed(digits) : "–";
}

function signed(x) {
  return typeof x === "number" ? (x >= 0 ? "+" : "") + x.toFixed(2) : "–";
}

// -------------------------------------------------------------------------------------------------------- mood bars

function buildBars() {
  const root = $("bars");
  root.textContent = "";
  for (const m of state.moods) {
    const row = document.createElement("div");
    row.className = "bar-row";
    row.dataset.mood = m.label;
    row.innerHTML = `<span class="bar-label"></span><span class="bar"><span class="fill"></span><span class="tick"></span></span><span class="bar-value">–</span>`;
    row.querySelector(".bar-label").textContent = m.label;
    row.querySelector(".fill").style.background = m.color;
    root.appendChild(row);
  }
}

function updateBars(probs, instant) {
  if (!$("bars").children.length) {
    state.moods = Object.keys(probs).map((label, i) => ({
      label, valence: (DEFAULT_COORDINATES[label] || [0, 0])[0], arousal: (DEFAULT_COORDINATES[label] || [0, 0])[1],
      color: MOOD_COLORS[label] || PALETTE[i % PALETTE.length],
    }));
    buildBars();
  }
  for (const row of $("bars").children) {
    const p = probs[row.dataset.mood];
    const q = instant[row.dataset.mood];
    row.querySelector(".fill").style.width = `${((p || 0) * 100).toFixed(1)}%`;
    const tick = row.querySelector(".tick");
    tick.hidden = typeof q !== "number";
    if (typeof q === "number") tick.style.left = `${(q * 100).toFixed(1)}%`;
    row.querySelector(".bar-value").textContent = fmt(p, 2);
  }
}

// ------------------------------------------------------------------------------------------------ valence/arousal

function drawPlane() {
  const canvas = $("va");
  const g = canvas.getContext("2d");
  const w = canvas.width;
  const h = canvas.height;
  const pad = 18;
  const x = (v) => pad + ((v + 1) / 2) * (w - 2 * pad);
  const y = (a) => h - pad - ((a + 1) / 2) * (h - 2 * pad);
  g.clearRect(0, 0, w, h);
  g.fillStyle = "#11131a";
  g.fillRect(0, 0, w, h);
  // quadrant tints from the mood colours
  for (const m of state.moods) {
    const qx = m.valence >= 0 ? x(0) : x(-1);
    const qy = m.arousal >= 0 ? y(1) : y(0);
    g.fillStyle = hexToRgba(m.color, 0.07);
    g.fillRect(qx, qy, (w - 2 * pad) / 2, (h - 2 * pad) / 2);
  }
  g.strokeStyle = "#2c3040";
  g.lineWidth = 1;
  for (let i = -1; i <= 1; i += 0.5) {
    g.beginPath();
    g.moveTo(x(i), y(-1));
    g.lineTo(x(i), y(1));
    g.moveTo(x(-1), y(i));
    g.lineTo(x(1), y(i));
    g.stroke();
  }
  g.strokeStyle = "#565d75";
  g.beginPath();
  g.moveTo(x(0), y(-1));
  g.lineTo(x(0), y(1));
  g.moveTo(x(-1), y(0));
  g.lineTo(x(1), y(0));
  g.stroke();
  g.fillStyle = "#8a90a6";
  g.font = "11px system-ui, sans-serif";
  g.fillText("valence →", w - pad - 58, y(0) - 6);
  g.save();
  g.translate(x(0) + 12, pad + 52);
  g.rotate(-Math.PI / 2);
  g.fillText("arousal →", 0, 0);
  g.restore();
  g.font = "bold 13px system-ui, sans-serif";
  for (const m of state.moods) {
    g.fillStyle = m.color;
    g.fillText(m.label, x(m.valence) - 14, y(m.arousal) - 12);
  }
  // the trail: older points fade out
  const pts = state.trail.filter((p) => typeof p.v === "number" && typeof p.a === "number");
  for (let i = 1; i < pts.length; i++) {
    g.strokeStyle = hexToRgba(pts[i].color, 0.15 + (0.75 * i) / pts.length);
    g.lineWidth = 1 + (2 * i) / pts.length;
    g.beginPath();
    g.moveTo(x(pts[i - 1].v), y(pts[i - 1].a));
    g.lineTo(x(pts[i].v), y(pts[i].a));
    g.stroke();
  }
  const last = state.last;
  if (last && last.instant && typeof last.instant.valence === "number") {
    g.strokeStyle = "#ffffff88";
    g.lineWidth = 1.5;
    g.beginPath();
    g.arc(x(last.instant.valence), y(last.instant.arousal), 5, 0, 2 * Math.PI);
    g.stroke();
  }
  if (pts.length) {
    const p = pts[pts.length - 1];
    g.fillStyle = p.color;
    g.shadowColor = p.color;
    g.shadowBlur = 14;
    g.beginPath();
    g.arc(x(p.v), y(p.a), 7, 0, 2 * Math.PI);
    g.fill();
    g.shadowBlur = 0;
  }
}

function hexToRgba(hex, alpha) {
  const rgb = parseHex(hex) || [200, 200, 200];
  return `rgba(${rgb[0]},${rgb[1]},${rgb[2]},${alpha})`;
}

function parseHex(value) {
  const m = /^#([0-9a-f]{6})$/i.exec(String(value).trim());
  if (!m) return null;
  const n = parseInt(m[1], 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

// --------------------------------------------------------------------------------------------------------- effects

function updateEffects(effects) {
  const body = $("effects").tBodies[0];
  body.textContent = "";
  for (const [name, value] of Object.entries(effects)) {
    const tr = document.createElement("tr");
    tr.dataset.effect = name;
    const tdName = document.createElement("td");
    tdName.textContent = name;
    const tdBar = document.createElement("td");
    tdBar.className = "effect-bar";
    const tdValue = document.createElement("td");
    tdValue.className = "effect-value";
    const rgb = parseHex(value);
    if (rgb) {
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = value;
      tdBar.appendChild(swatch);
      tdValue.textContent = value;
    } else if (typeof value === "number") {
      const bar = document.createElement("span");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = `${(normalise(name, value) * 100).toFixed(1)}%`;
      bar.appendChild(fill);
      tdBar.appendChild(bar);
      tdValue.textContent = Math.abs(value) >= 100 ? value.toFixed(0) : value.toFixed(3);
    } else {
      tdValue.textContent = typeof value === "object" ? JSON.stringify(value) : String(value);
    }
    tr.append(tdName, tdBar, tdValue);
    body.appendChild(tr);
  }
}

// An effect value as 0..1 for bars and the scene: frequencies on a log scale, [0,1] values as they are, anything
// else against the range seen so far (the protocol does not send ranges).
function normalise(name, value) {
  if (/hz$|_hz|freq|cutoff/i.test(name) && value > 0) {
    return clamp01(Math.log(value / 200) / Math.log(20000 / 200));
  }
  if (KNOWN_RANGES[name]) {
    const [lo, hi] = KNOWN_RANGES[name];
    return clamp01((value - lo) / (hi - lo));
  }
  if (value >= 0 && value <= 1) return value;
  const r = state.ranges[name] || (state.ranges[name] = { min: value, max: value });
  r.min = Math.min(r.min, value);
  r.max = Math.max(r.max, value);
  return r.max > r.min ? (value - r.min) / (r.max - r.min) : 0.5;
}

function clamp01(x) {
  return Math.max(0, Math.min(1, x));
}

// ----------------------------------------------------------------------------------------------------------- scene

// The scene reads named effect parameters when the preset has them, and falls back to valence/arousal otherwise.
// Each visual channel lists the effect names that drive it, in order of preference.
const SCENE_CHANNELS = {
  fog: [/fog/i, /haze/i, /reverb/i],
  bloom: [/bloom/i, /glow/i],
  brightness: [/bright/i, /exposure/i],
  motion: [/motion/i, /speed/i, /tempo/i, /energy/i],
  shake: [/shake/i, /jitter/i],
  particles: [/particle/i, /spark/i],
  clarity: [/lowpass|cutoff|filter/i],
  saturation: [/saturat/i, /vivid/i, /drive/i, /distort/i],
};

const scene = (() => {
  const canvas = $("scene");
  const g = canvas.getContext("2d");
  const current = {
    fog: 0.3, bloom: 0.3, brightness: 0.45, motion: 0.3, shake: 0, particles: 0.4, clarity: 1, saturation: 0.5,
    tint: [120, 140, 200],
  };
  const target = { ...current, tint: [...current.tint] };
  const motes = Array.from({ length: 220 }, () => ({ x: Math.random(), y: Math.random(), z: Math.random(), p: Math.random() * 6.28 }));
  let floor = 0;
  let last = performance.now();
  let lastDraw = 0;

  function setTargets(msg) {
    const effects = msg.effects || {};
    const va = { v: typeof msg.valence === "number" ? msg.valence : 0, a: typeof msg.arousal === "number" ? msg.arousal : 0 };
    const fallback = {
      fog: 0.5 - va.v * 0.3, bloom: 0.3 + va.v * 0.3, brightness: 0.45 + va.v * 0.2, motion: (va.a + 1) / 2,
      shake: Math.max(0, va.a) * Math.max(0, -va.v), particles: (va.a + 1) / 2, clarity: 0.5 + va.a * 0.5,
      saturation: (Math.abs(va.v) + Math.abs(va.a)) / 2,
    };
    const rows = [];
    for (const [channel, patterns] of Object.entries(SCENE_CHANNELS)) {
      let found = null;
      for (const re of patterns) {
        found = Object.keys(effects).find((k) => re.test(k) && typeof effects[k] === "number");
        if (found) break;
      }
      target[channel] = clamp01(found ? normalise(found, effects[found]) : fallback[channel]);
      rows.push([channel, found || "valence/arousal"]);
    }
    const colorKey = Object.keys(effects).find((k) => /tint|colou?r|hue/i.test(k) && parseHex(effects[k]));
    const tint = colorKey ? parseHex(effects[colorKey]) : parseHex(moodColor(msg.mood));
    if (tint) target.tint = tint;
    rows.unshift(["tint", colorKey || "mood colour"]);
    showLegend(rows);
  }

  // Which effect parameter drives which part of the look (HTML, not drawn: crisp and cheap).
  function showLegend(rows) {
    const root = $("scene-legend");
    root.textContent = "";
    for (const [channel, source] of rows) {
      const item = document.createElement("span");
      item.innerHTML = "<b></b> ← <code></code>";
      item.querySelector("b").textContent = channel;
      item.querySelector("code").textContent = source;
      root.appendChild(item);
    }
  }

  function ease(dt) {
    const k = 1 - Math.exp(-dt / SCENE_TIME_CONSTANT_S);
    for (const key of Object.keys(SCENE_CHANNELS)) current[key] += (target[key] - current[key]) * k;
    for (let i = 0; i < 3; i++) current.tint[i] += (target.tint[i] - current.tint[i]) * k;
  }

  function frame(now) {
    requestAnimationFrame(frame);
    // ~30 frames per second is plenty here, and leaves the main thread free for audio and messages.
    if (document.hidden || now - lastDraw < SCENE_FRAME_MS) return;
    lastDraw = now;
    const dt = Math.min(0.1, (now - last) / 1000);
    last = now;
    ease(dt);
    draw(dt, now / 1000);
  }

  // The tint pulled toward grey (saturation 0) or pushed past itself (saturation 1), then scaled by brightness.
  function colour(lift = 0, scale = 1) {
    const grey = (current.tint[0] + current.tint[1] + current.tint[2]) / 3;
    const amount = 0.35 + current.saturation * 0.9;
    const light = (0.35 + current.brightness * 1.1) * scale;
    return current.tint.map((c) => Math.max(0, Math.min(255, Math.round((grey + (c - grey) * amount) * light + lift))));
  }

  // Draw at the size the canvas is shown at (no stretching, no letterbox), capped to keep software rendering cheap.
  function fit() {
    const w = Math.min(1400, Math.round(canvas.clientWidth));
    const h = Math.min(600, Math.round(canvas.clientHeight));
    if (w > 0 && h > 0 && (canvas.width !== w || canvas.height !== h)) {
      canvas.width = w;
      canvas.height = h;
    }
  }

  function draw(dt, t) {
    fit();
    const w = canvas.width;
    const h = canvas.height;
    const horizon = h * 0.58;
    const [r, gg, b] = colour();
    const [lr, lg, lb] = colour(90);
    g.save();
    const shake = current.shake * 8;
    g.translate((Math.random() - 0.5) * shake, (Math.random() - 0.5) * shake);
    // sky and ground
    const sky = g.createLinearGradient(0, 0, 0, horizon);
    sky.addColorStop(0, "#07080d");
    sky.addColorStop(1, `rgb(${r * 0.6 | 0},${gg * 0.6 | 0},${b * 0.6 | 0})`);
    g.fillStyle = sky;
    g.fillRect(-10, -10, w + 20, horizon + 10);
    g.fillStyle = "#07080d";
    g.fillRect(-10, horizon, w + 20, h - horizon + 10);
    // the sun: size and halo from bloom, pulse speed from motion
    const pulse = 1 + 0.06 * Math.sin(t * (1 + current.motion * 6));
    const radius = (40 + current.bloom * 40) * pulse;
    const halo = g.createRadialGradient(w / 2, horizon, radius * 0.6, w / 2, horizon, radius * (1.3 + current.bloom * 2));
    halo.addColorStop(0, `rgba(${lr},${lg},${lb},${(0.25 + current.bloom * 0.6).toFixed(3)})`);
    halo.addColorStop(1, `rgba(${r},${gg},${b},0)`);
    g.fillStyle = halo;
    g.fillRect(0, 0, w, horizon);
    g.fillStyle = `rgb(${lr},${lg},${lb})`;
    g.beginPath();
    g.arc(w / 2, horizon, radius, Math.PI, 2 * Math.PI);
    g.fill();
    // floor grid rushing toward the viewer: speed from motion
    floor = (floor + dt * (0.05 + current.motion * 1.2)) % 1;
    g.strokeStyle = `rgba(${r},${gg},${b},0.6)`;
    g.lineWidth = 1;
    g.beginPath();
    for (let i = 0; i < 14; i++) {
      const z = (i + floor) / 14;
      const yy = horizon + (h - horizon) * z * z;
      g.moveTo(0, yy);
      g.lineTo(w, yy);
    }
    for (let i = -10; i <= 10; i++) {
      g.moveTo(w / 2 + i * 12, horizon);
      g.lineTo(w / 2 + i * 90, h);
    }
    g.stroke();
    // motes: how many from particles, drift speed from motion, size from bloom; low clarity (a low-pass) makes
    // them big and faint, like an out-of-focus picture
    g.globalCompositeOperation = "lighter";
    const count = Math.round(20 + current.particles * 200);
    const soft = 1 - current.clarity;
    for (let i = 0; i < count; i++) {
      const m = motes[i];
      m.y -= dt * (0.01 + current.motion * 0.12) * (0.5 + m.z);
      m.x += dt * 0.02 * Math.sin(t * (0.5 + current.motion * 2) + m.p);
      if (m.y < 0) { m.y = 1; m.x = Math.random(); }
      const size = (0.8 + m.z * 2.5 * (0.6 + current.bloom)) * (1 + soft * 2.5);
      g.fillStyle = `rgba(${lr},${lg},${lb},${((0.25 + 0.5 * m.z) / (1 + soft * 3)).toFixed(3)})`;
      g.beginPath();
      g.arc(m.x * w, m.y * h * 0.95, size, 0, 2 * Math.PI);
      g.fill();
    }
    g.globalCompositeOperation = "source-over";
    // fog: a veil that thickens toward the horizon
    const fog = g.createLinearGradient(0, horizon - h * 0.35, 0, h);
    const fa = current.fog * 0.8;
    fog.addColorStop(0, "rgba(200,205,220,0)");
    fog.addColorStop(0.45, `rgba(${(r + 400) / 3 | 0},${(gg + 400) / 3 | 0},${(b + 400) / 3 | 0},${fa.toFixed(3)})`);
    fog.addColorStop(1, `rgba(200,205,220,${(fa * 0.4).toFixed(3)})`);
    g.fillStyle = fog;
    g.fillRect(-10, -10, w + 20, h + 20);
    g.restore();
  }

  requestAnimationFrame(frame);
  return { setTargets };
})();

// -------------------------------------------------------------------------------------------------------- controls

function setControls(connected) {
  $("connect").disabled = connected;
  $("disconnect").disabled = !connected;
  for (const id of ["room", "role", "token", "server"]) $(id).disabled = connected;
}

function updateListenerLink() {
  const params = new URLSearchParams({ role: "listener", room: $("room").value.trim() || "lobby", connect: "1" });
  if ($("server").value.trim()) params.set("server", $("server").value.trim());
  $("listener-link").href = `?${params}`;
}

function init() {
  const params = new URLSearchParams(location.search);
  if (params.get("room")) $("room").value = params.get("room");
  if (["mic", "file", "listener"].includes(params.get("role"))) $("role").value = params.get("role");
  if (params.get("preset")) $("preset").value = params.get("preset");
  if (params.get("server")) $("server").value = params.get("server");
  const showFile = () => {
    $("file-field").hidden = $("role").value !== "file";
    for (const el of document.querySelectorAll(".source-only")) el.hidden = $("role").value === "listener";
  };
  $("role").addEventListener("change", showFile);
  showFile();
  $("room").addEventListener("input", updateListenerLink);
  $("server").addEventListener("input", updateListenerLink);
  updateListenerLink();
  $("connect-form").addEventListener("submit", (event) => {
    event.preventDefault();
    connect();
  });
  $("disconnect").addEventListener("click", () => disconnect("disconnected"));
  $("clear-errors").addEventListener("click", () => {
    $("error-list").textContent = "";
    $("errors").hidden = true;
  });
  $("preset").addEventListener("change", () => {
    const name = $("preset").value.trim();
    if (name && state.role !== "listener" && state.client) state.client.preset(name);
  });
  $("file").addEventListener("change", () => {
    // A new file while streaming: replace the source audio and tell the room a new track starts.
    const file = $("file").files[0];
    if (file && state.wantConnected && state.role === "file" && state.audio) {
      attachFile(state.audio, file);
      if (state.client) state.client.track(fileTrack(file));
    }
  });
  window.addEventListener("beforeunload", () => { if (state.client) state.client.close(1000, "page closed"); });
  drawPlane();
  if (params.get("connect") === "1") connect();
}

init();
