// sendreturn-mood client for wire protocol v1 (docs/PROTOCOL.md; JSON Schemas in schema/v1/, types in index.d.ts).
// Browsers and Node (>= 22, or 20 with --experimental-websocket, or any WHATWG-style WebSocket passed in, such as
// the `ws` package). No dependencies, no build step: this file is what the server's own page at `/` imports.
//
//   import { MoodClient, startCapture } from "./index.js";
//   const room = new MoodClient({ url: "ws://127.0.0.1:8765", room: "lobby" });     // a listener
//   room.on("mood", (m) => scene.apply(m.effects));
//   await room.connect();                                                           // resolves with the welcome
//
//   const capture = await startCapture(microphoneStream);                           // AudioWorklet -> PCM s16le
//   const source = new MoodClient({ url, room: "lobby", role: "source", sampleRate: capture.sampleRate });
//   capture.onChunk = (pcm) => source.sendAudio(pcm);
//   await source.connect();
//
// Reconnects with exponential backoff after a dropped connection (not after a normal end, 1000, or a policy /
// size / data close, 1003 1008 1009) and re-sends the current `track` on the new connection (analysis restarts
// there). A handshake the server refuses closes before `open`; browsers cannot read the HTTP answer, so the client
// asks the server over plain HTTP what it can (is it up? is the room's source taken? is the room name valid?),
// emits `refused` with that, and retries only what may clear up by itself.

export const PROTOCOL_VERSION = 1;
export const MODEL_RATE = 16000; // what the shipped models hear (a welcome's analysis.sample_rate says it)
export const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;
export const POSITION_EVERY_MS = 5000; // a player's position report (the server's clock runs between reports)
export const CLOSE_TEXT = {
  1000: "the stream ended normally",
  1001: "the server is shutting down or restarting",
  1003: "the server refused the data we sent",
  1006: "the connection was lost without a close frame (network problem, or the server stopped)",
  1008: "closed by server policy (see the error before it: e.g. unauthorized, not allowed)",
  1009: "a message was too big for the server",
  1011: "the server hit an internal error",
  4408: "the server got no answer to its pings in time (a network stall, or this page was frozen)",
};
const NO_RETRY_CODES = new Set([1000, 1003, 1008, 1009]);
const DEFAULTS = {
  role: "listener",
  encoding: "pcm_s16le",
  sampleRate: 48000,
  channels: 1,
  reconnect: true,
  maxRetries: Infinity, // failed attempts in a row before giving up
  backoff: { startMs: 500, maxMs: 10000, factor: 2 },
  keepaliveMs: 30000, // a `keepalive` message after this long without sending anything (0: never)
  maxBufferedBytes: 512 * 1024, // sendAudio drops audio instead of buffering it without bound on a stalled socket
  diagnose: true, // ask the server over HTTP why a handshake failed
};

/** ws://HOST:PORT/v1/rooms/{room}?query (undefined/null/"" parameters left out). */
export function roomUrl(base, room, params = {}) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") query.set(k, String(v));
  const q = query.toString();
  return `${String(base).replace(/\/+$/, "")}/v1/rooms/${encodeURIComponent(room)}${q ? `?${q}` : ""}`;
}

export class MoodClient {
  constructor(options) {
    const given = Object.fromEntries(Object.entries(options || {}).filter(([, v]) => v !== undefined)); // undefined: the default
    const o = { ...DEFAULTS, ...given, backoff: { ...DEFAULTS.backoff, ...given.backoff } };
    if (!o.url) throw new TypeError("options.url is required (e.g. ws://127.0.0.1:8765)");
    if (!ROOM_RE.test(o.room || "")) throw new TypeError("options.room must be 1 to 64 characters of A-Z a-z 0-9 _ . -");
    if (o.role !== "source" && o.role !== "listener") throw new TypeError('options.role must be "source" or "listener"');
    o.WebSocket = o.WebSocket || globalThis.WebSocket;
    if (typeof o.WebSocket !== "function") {
      throw new TypeError(
        "no WebSocket implementation: pass one as options.WebSocket (e.g. the ws package), or run Node >= 22 " +
          "(Node 20: node --experimental-websocket)",
      );
    }
    this.options = o;
    this.state = "idle"; // idle | connecting | open | closed
    this.welcome = null;
    this.last = null; // the latest mood message
    this.currentTrack = null;
    this.playing = null; // {track, leadSeconds} of the prepared track played (followPlayer plays it again after a reconnect)
    this.sentBytes = 0;
    this.droppedChunks = 0;
    this._listeners = new Map();
    this._ws = null;
    this._want = false;
    this._opened = false;
    this._hadConnection = false;
    this._attempt = 0;
    this._delay = o.backoff.startMs;
    this._retryTimer = null;
    this._keepaliveTimer = null;
    this._lastSend = 0;
    this._ending = null;
    this._pendingConnect = null;
  }

  /** The websocket URL this client connects to (the handshake query of protocol v1). */
  get url() {
    const o = this.options;
    const params = { role: o.role, token: o.token };
    if (o.role === "source") {
      Object.assign(params, { encoding: o.encoding, sample_rate: o.sampleRate, channels: o.channels, preset: o.preset });
      if (typeof o.trackDetection === "boolean") params.track_detection = o.trackDetection ? "on" : "off";
    }
    return roomUrl(o.url, o.room, params);
  }

  /** Subscribe to an event; returns a function that unsubscribes. */
  on(type, listener) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(listener);
    return () => this.off(type, listener);
  }

  off(type, listener) {
    const set = this._listeners.get(type);
    if (set) set.delete(listener);
  }

  _emit(type, data) {
    for (const fn of [...(this._listeners.get(type) || [])]) {
      try {
        fn(data);
      } catch (err) {
        queueMicrotask(() => { throw err; }); // a listener's bug must not break the connection
      }
    }
  }

  /** Connect (reconnecting until close() or a refusal that cannot clear up); resolves with the first welcome. */
  connect() {
    if (this._pendingConnect) return this._pendingConnect;
    this._want = true;
    this._hadConnection = false;
    this._attempt = 0;
    this._delay = this.options.backoff.startMs;
    this._pendingConnect = new Promise((resolve, reject) => {
      const offWelcome = this.on("welcome", (w) => { done(); resolve(w); });
      const offClose = this.on("close", (c) => {
        if (!c.willReconnect) { done(); reject(new Error(`connection closed before welcome: ${c.code} ${c.reason}`.trim())); }
      });
      const done = () => { offWelcome(); offClose(); this._pendingConnect = null; };
    });
    this._open();
    return this._pendingConnect;
  }

  _open() {
    if (!this._want) return;
    this.state = "connecting";
    this._opened = false;
    let ws;
    try {
      ws = new this.options.WebSocket(this.url);
    } catch (err) {
      this._onClose(null, { code: 1006, reason: String(err && err.message ? err.message : err), wasClean: false });
      return;
    }
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    ws.onopen = () => {
      if (ws !== this._ws) return;
      this._opened = true;
      this._hadConnection = true;
      this._attempt = 0;
      this._delay = this.options.backoff.startMs;
      this.state = "open";
      this._lastSend = Date.now();
      this._startKeepalive();
      this._emit("open", { url: this.url });
      if (this.options.role === "source" && this.currentTrack) this._sendJson({ type: "track", ...this.currentTrack });
    };
    ws.onmessage = (event) => {
      if (ws !== this._ws || typeof event.data !== "string") return;
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch (err) {
        return; // not JSON: nothing a v1 client can use
      }
      this._onMessage(msg);
    };
    ws.onerror = () => {
      // Once open, a close event follows with the code. A failed handshake gets only this error in some
      // implementations (Node 20's undici), so it counts as the close then; a later close event is ignored.
      if (!this._opened) this._onClose(ws, { code: 1006, reason: "handshake failed", wasClean: false });
    };
    ws.onclose = (event) => this._onClose(ws, event);
  }

  _onMessage(msg) {
    if (!msg || typeof msg !== "object") return;
    if (msg.type === "welcome") this.welcome = msg;
    if (msg.type === "mood") this.last = msg;
    this._emit("message", msg);
    if (["welcome", "mood", "source", "error", "track_change", "timeline", "resync"].includes(msg.type)) this._emit(msg.type, msg);
    // other types: a newer server's additions; `message` listeners see them, v1 clients ignore them
  }

  async _onClose(ws, event) {
    if (ws !== null && ws !== this._ws) return; // an old socket we already replaced
    this._ws = null;
    this._stopKeepalive();
    const opened = this._opened;
    const code = event.code || 1006;
    const reason = event.reason || "";
    let retry = this._want && this.options.reconnect && !NO_RETRY_CODES.has(code) && this._ending === null;
    let refusal = null;
    if (!opened && this._want && this.options.diagnose) {
      refusal = await this.diagnose();
      // what may clear up by itself: the server is down or restarting, or (after a drop) it still has our old
      // source connection; everything else (bad room, taken source, token, preset) needs a person
      const transient = refusal.code === "unreachable" || refusal.code === "server_full" ||
        (refusal.code === "source_taken" && this._hadConnection);
      retry = retry && transient;
      this._emit("refused", { ...refusal, willRetry: retry });
    }
    this._attempt += 1;
    if (this._attempt > this.options.maxRetries) retry = false;
    if (!this._want) retry = false;
    const delayMs = retry ? this._delay : 0;
    this.state = retry ? "connecting" : "closed";
    this._emit("close", { code, reason, wasClean: Boolean(event.wasClean), opened, willReconnect: retry, delayMs, refusal });
    if (this._ending) {
      const ending = this._ending;
      this._ending = null;
      ending({ last: this.last, code, reason });
    }
    if (!retry) {
      this._want = false;
      return;
    }
    this._emit("reconnecting", { attempt: this._attempt, delayMs, reason: refusal ? refusal.code : `closed ${code}` });
    this._delay = Math.min(this._delay * this.options.backoff.factor, this.options.backoff.maxMs);
    this._retryTimer = setTimeout(() => this._open(), delayMs);
  }

  /**
   * Why a handshake may have failed, from plain HTTP on the same port (browsers cannot read the refusal itself):
   * {code: "unreachable" | "server_full" | "bad_request" | "source_taken" | "unknown", message}.
   */
  async diagnose() {
    const base = this.options.url.replace(/^ws/, "http").replace(/\/+$/, "");
    const get = async (path) => {
      const response = await fetch(`${base}${path}`, { cache: "no-store" });
      let body = null;
      try {
        body = await response.json();
      } catch (err) {
        body = null;
      }
      return { status: response.status, body };
    };
    let health;
    try {
      health = await get("/healthz");
    } catch (err) {
      return { code: "unreachable", message: `cannot reach the server at ${base}` };
    }
    if (health.body && health.body.status === "shutting_down") {
      return { code: "server_full", message: "the server is shutting down" };
    }
    try {
      const room = await get(`/v1/rooms/${encodeURIComponent(this.options.room)}`);
      if (room.status === 400 && room.body && room.body.error) {
        return { code: "bad_request", message: room.body.error.message };
      }
      if (this.options.role === "source" && room.status === 200 && room.body && room.body.source === true) {
        return {
          code: "source_taken",
          message: `room "${this.options.room}" already has a source (one per room): join it as a listener, or pick another room`,
        };
      }
    } catch (err) {
      // no room summary: fall through
    }
    return {
      code: "unknown",
      message:
        "the server refused the connection; likely: it needs a token (401), an unknown preset or parameter (400), " +
        "or it is full (503)",
    };
  }

  _startKeepalive() {
    const every = this.options.keepaliveMs;
    if (!every) return;
    this._keepaliveTimer = setInterval(() => {
      if (Date.now() - this._lastSend >= every) this.keepalive();
    }, Math.max(50, every / 4));
  }

  _stopKeepalive() {
    clearInterval(this._keepaliveTimer);
    this._keepaliveTimer = null;
  }

  get isOpen() {
    return this._ws !== null && this._ws.readyState === 1;
  }

  _sendJson(msg) {
    if (!this.isOpen) return false;
    this._ws.send(JSON.stringify(msg));
    this._lastSend = Date.now();
    return true;
  }

  /** PCM in the announced format (ArrayBuffer or a typed array view). False when not sent (not open, or the
   * socket has more than maxBufferedBytes waiting: audio is dropped rather than delayed without bound). */
  sendAudio(pcm) {
    if (!this.isOpen) return false;
    if (this._ws.bufferedAmount > this.options.maxBufferedBytes) {
      this.droppedChunks += 1;
      return false;
    }
    this._ws.send(pcm);
    this._lastSend = Date.now();
    this.sentBytes += pcm.byteLength;
    return true;
  }

  /** Float samples (interleaved when channels > 1, -1..1) encoded in the announced encoding, then sendAudio. */
  sendFloat(samples) {
    return this.sendAudio(encodePcm(samples, this.options.encoding));
  }

  /** A new track starts (source only); sent again after a reconnect. */
  track(track) {
    const t = {};
    for (const k of ["id", "title", "artist"]) if (track[k] !== undefined && track[k] !== null) t[k] = String(track[k]);
    if (!t.id) throw new TypeError("a track needs an id");
    this.currentTrack = t;
    return this._sendJson({ type: "track", ...t });
  }

  /** Switch the room's effect preset (source only; an unknown name comes back as a bad_message error). */
  preset(name) {
    this.options.preset = name;
    return this._sendJson({ type: "preset", name });
  }

  keepalive() {
    return this._sendJson({ type: "keepalive" });
  }

  /** Prepare the room's track `id` before it plays (server extension): PUT the audio file (a Blob, ArrayBuffer or
   * typed array) to /v1/rooms/{room}/tracks/{id}, or refer to a stored analysis (`{analysis}`, the id an earlier PUT
   * answered). Resolves with the server's description ({track, analysis, duration, updates, ...}); rejects with an
   * Error carrying `status` and `body` (413 too long, 415 not audio, 507 store full). Uses `fetch`. */
  async prepare(id, audio, { title, artist, analysis, fetch: fetchImpl = globalThis.fetch } = {}) {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries({ title, artist, analysis, token: this.options.token })) if (v) query.set(k, v);
    const base = this.options.url.replace(/^ws/, "http").replace(/\/+$/, "");
    const url = `${base}/v1/rooms/${encodeURIComponent(this.options.room)}/tracks/${encodeURIComponent(id)}` + (query.size ? `?${query}` : "");
    const res = await fetchImpl(url, { method: "PUT", body: analysis ? undefined : audio, headers: { "Content-Type": "application/octet-stream" } });
    const body = await res.json().catch(() => null);
    if (!res.ok) {
      const err = new Error(`prepare ${id}: HTTP ${res.status} ${body && body.error ? body.error.message : ""}`.trim());
      Object.assign(err, { status: res.status, body });
      throw err;
    }
    return body;
  }

  /** The room follows its prepared track from `position` seconds (source only; server extension). */
  play(track, position = 0, { leadSeconds } = {}) {
    this.playing = { track, leadSeconds };
    const msg = { type: "play", track, position: Math.max(0, Math.round(position * 1000) / 1000) };
    if (leadSeconds !== undefined) msg.lead_seconds = leadSeconds;
    return this._sendJson(msg);
  }

  /** Where the player is in the prepared track now (every few seconds is enough: the server's clock runs). */
  position(position) {
    return this._sendJson({ type: "position", position: Math.max(0, Math.round(position * 1000) / 1000) });
  }

  pause() {
    return this._sendJson({ type: "pause" });
  }

  /** Stop following the prepared track (live audio may follow). */
  stop() {
    this.playing = null;
    return this._sendJson({ type: "stop" });
  }

  /** Report a player's position every `everyMs` until the returned function is called: `clock()` gives the
   * position in seconds, or null while paused (an <audio> element: () => (el.paused ? null : el.currentTime)).
   * After a reconnect the track is played again at the clock's position. */
  followPlayer(clock, { everyMs = POSITION_EVERY_MS } = {}) {
    let paused = false;
    const report = () => {
      const position = clock();
      if (position === null || position === undefined) {
        if (!paused) this.pause();
        paused = true;
      } else {
        this.position(position);
        paused = false;
      }
    };
    const timer = setInterval(report, everyMs);
    const offWelcome = this.on("welcome", () => {
      const position = clock();
      if (this.playing && position !== null && position !== undefined) this.play(this.playing.track, position, this.playing);
    });
    return () => { clearInterval(timer); offWelcome(); };
  }

  /** Switch the room's track-change detection on or off (source only). */
  trackDetection(enabled) {
    return this._sendJson({ type: "track_detection", enabled: Boolean(enabled) });
  }

  /** No more audio: the server analyses the tail, sends the last mood and closes with 1000. Resolves then with
   * {last, code, reason} (or after timeoutMs, closing the socket itself). */
  end({ timeoutMs = 30000 } = {}) {
    if (!this.isOpen) return Promise.resolve({ last: this.last, code: null, reason: "not connected" });
    return new Promise((resolve) => {
      const timer = setTimeout(() => this._ws && this._ws.close(1000, "end timed out"), timeoutMs);
      this._ending = (result) => { clearTimeout(timer); this._want = false; resolve(result); };
      this._sendJson({ type: "end" });
    });
  }

  /** Disconnect for good (no reconnect). */
  close(code = 1000, reason = "bye") {
    this._want = false;
    clearTimeout(this._retryTimer);
    this._stopKeepalive();
    const ws = this._ws;
    if (ws && (ws.readyState === 0 || ws.readyState === 1)) ws.close(code, reason);
    else this.state = "closed";
  }
}

/** Float samples (-1..1) -> PCM bytes: s16le (rounded, clipped) or f32le. Little-endian whatever the platform. */
export function encodePcm(samples, encoding = "pcm_s16le") {
  const n = samples.length;
  if (encoding === "pcm_f32le") {
    const out = new DataView(new ArrayBuffer(n * 4));
    for (let i = 0; i < n; i++) out.setFloat32(i * 4, samples[i], true);
    return out.buffer;
  }
  if (encoding !== "pcm_s16le") throw new TypeError(`unknown encoding ${encoding}`);
  const out = new DataView(new ArrayBuffer(n * 2));
  for (let i = 0; i < n; i++) {
    const x = Math.max(-1, Math.min(32767 / 32768, samples[i]));
    out.setInt16(i * 2, Math.round(x * 32768), true);
  }
  return out.buffer;
}

/**
 * Stream float samples (interleaved, -1..1) through a source client in chunkMs pieces, paced at `speed` times real
 * time (0: as fast as the socket takes them). Resolves with the number of frames sent. For Node sources and tests;
 * browsers capture live audio with startCapture.
 */
export async function streamSamples(client, samples, { chunkMs = 100, speed = 1 } = {}) {
  const { sampleRate, channels } = client.options;
  const step = Math.max(1, Math.round((sampleRate * chunkMs) / 1000)) * channels;
  const t0 = Date.now();
  let frames = 0;
  for (let i = 0; i < samples.length; i += step) {
    const piece = samples.subarray(i, i + step);
    client.sendFloat(piece);
    frames += piece.length / channels;
    const due = t0 + (speed > 0 ? (frames / sampleRate / speed) * 1000 : 0);
    await new Promise((r) => setTimeout(r, Math.max(0, due - Date.now())));
  }
  return frames;
}

/**
 * Capture a MediaStream (microphone) or an <audio>/<video> element through the "pcm-sender" AudioWorklet: mono
 * PCM s16le chunks at `sampleRate` (default 16000, what the model hears: a welcome's analysis.sample_rate says it;
 * 0 = the AudioContext's own rate, as it is), downmixed and resampled in the worklet. Announce capture.sampleRate
 * as the client's sampleRate. An element keeps playing to the speakers at the context's full rate; a paused
 * element sends nothing. Set capture.onChunk(pcm, level).
 */
export async function startCapture(input, { context, chunkMs = 100, workletUrl, onChunk, sampleRate = MODEL_RATE } = {}) {
  const ctx = context || new AudioContext({ latencyHint: "interactive" });
  await ctx.audioWorklet.addModule(workletUrl || new URL("./worklet.js", import.meta.url).href);
  const node = new AudioWorkletNode(ctx, "pcm-sender", {
    numberOfInputs: 1,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    processorOptions: { chunkMs, sampleRate },
  });
  node.connect(ctx.destination); // silent output: keeps the worklet pulled by the graph
  const capture = {
    context: ctx,
    node,
    sampleRate: sampleRate === 0 ? ctx.sampleRate : sampleRate,
    onChunk: onChunk || null,
    level: 0,
    source: null,
    element: null,
    setActive(active) {
      node.port.postMessage({ active: Boolean(active) });
    },
    /** Feed another <audio> element (a media element can feed only one graph in its life: pass a fresh one). */
    attachElement(element) {
      if (capture.source) capture.source.disconnect();
      const source = ctx.createMediaElementSource(element);
      source.connect(ctx.destination);
      source.connect(node);
      element.addEventListener("play", () => capture.setActive(true));
      element.addEventListener("pause", () => capture.setActive(false));
      element.addEventListener("ended", () => capture.setActive(false));
      capture.setActive(!element.paused);
      Object.assign(capture, { source, element });
    },
    async stop() {
      node.port.onmessage = null;
      if (capture.element) capture.element.pause();
      if (capture.stream) capture.stream.getTracks().forEach((t) => t.stop());
      if (!context) await ctx.close();
    },
  };
  node.port.onmessage = (event) => {
    capture.level = event.data.level;
    if (capture.onChunk) capture.onChunk(event.data.pcm, event.data.level);
  };
  if (typeof MediaStream !== "undefined" && input instanceof MediaStream) {
    capture.stream = input;
    capture.source = ctx.createMediaStreamSource(input);
    capture.source.connect(node);
  } else if (input) {
    capture.attachElement(input);
  }
  if (ctx.state === "suspended") await ctx.resume();
  return capture;
}

/** A refused POST /v1/analyze: the HTTP status, the error body's code and message, Retry-After (seconds) on a 429. */
export class AnalyzeError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(`HTTP ${status} ${code}: ${message}`);
    this.name = "AnalyzeError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/**
 * POST an audio file to the server's /v1/analyze: resolves with what `analyze --json` prints for it plus `features`
 * (valence, energy, mood, genre, tempo, key, mode, loudness, duration, a spotify_compatible view). `file`: a browser
 * File or Blob, an ArrayBuffer, a typed array or a Node Buffer (wav, mp3, flac or ogg: the server goes by the
 * content). `url`: the server's ws:// or http:// address. Rejects with an AnalyzeError when the server refuses
 * (401 token, 413 too big or too long, 415 not audio, 422 corrupt or truncated, 429 busy: see retryAfter).
 */
export async function analyzeFile(url, file, { token, name, signal, fetch: fetchImpl = globalThis.fetch } = {}) {
  const base = String(url).replace(/^ws(s?):\/\//, "http$1://");
  const target = new URL("/v1/analyze", base);
  const shown = name ?? (typeof file?.name === "string" ? file.name : undefined);
  if (shown) target.searchParams.set("name", shown);
  const headers = { "Content-Type": "application/octet-stream" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetchImpl(target, { method: "POST", body: file, headers, signal });
  const text = await res.text();
  if (!res.ok) {
    let code = "";
    let message = text;
    try {
      ({ code, message } = JSON.parse(text).error);
    } catch {
      // not the server's JSON error body (a proxy's page): keep the text
    }
    const retry = res.headers.get("Retry-After");
    throw new AnalyzeError(res.status, code, message, retry ? Number(retry) : null);
  }
  return JSON.parse(text);
}
