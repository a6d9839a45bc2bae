// MoodClient against a real server: SENDRETURN_URL (ws://HOST:PORT) of a running `python -m sendreturn_mood serve`
// that allows fast streaming (tests/test_js_client.py starts one and runs these tests). Every text message sent
// and received goes to SENDRETURN_SENT_LOG / SENDRETURN_RECV_LOG (JSON lines) when set, and the pytest side
// validates them against the JSON Schemas.
import { test } from "node:test";
import assert from "node:assert/strict";
import { appendFileSync } from "node:fs";

import { MoodClient, encodePcm, roomUrl, streamSamples } from "../src/index.js";

const URL_ = process.env.SENDRETURN_URL;
const skip = URL_ ? false : "SENDRETURN_URL is not set (run through pytest: tests/test_js_client.py)";
const RATE = 16000;

function log(file, text) {
  if (file) appendFileSync(file, text.endsWith("\n") ? text : `${text}\n`);
}

/** The global WebSocket, passed in explicitly (the "implementation passed in" path), logging text frames. */
class LoggingWebSocket extends globalThis.WebSocket {
  constructor(url) {
    super(url);
    this.addEventListener("message", (e) => { if (typeof e.data === "string") log(process.env.SENDRETURN_RECV_LOG, e.data); });
  }

  send(data) {
    if (typeof data === "string") log(process.env.SENDRETURN_SENT_LOG, data);
    super.send(data);
  }
}

function tone(seconds, rate, channels = 1) {
  const out = new Float32Array(Math.round(seconds * rate) * channels);
  for (let i = 0; i < out.length; i++) out[i] = 0.3 * Math.sin((2 * Math.PI * 440 * Math.floor(i / channels)) / rate);
  return out;
}

function client(options) {
  return new MoodClient({ url: URL_, WebSocket: LoggingWebSocket, backoff: { startMs: 50 }, ...options });
}

function until(emitter, type, predicate = () => true, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error(`no ${type} event in ${timeoutMs} ms`)); }, timeoutMs);
    const off = emitter.on(type, (data) => { if (predicate(data)) { clearTimeout(timer); off(); resolve(data); } });
  });
}

test("a source and a listener: typed events, track, preset, end", { skip }, async () => {
  const listener = client({ room: "js-typed" });
  const heard = [];
  listener.on("message", (m) => heard.push(m));
  const welcomeL = await listener.connect();
  assert.equal(welcomeL.type, "welcome");
  assert.equal(welcomeL.role, "listener");
  assert.equal(welcomeL.protocol, 1);

  const source = client({ room: "js-typed", role: "source", sampleRate: RATE, channels: 2, encoding: "pcm_f32le", preset: "subtle", trackDetection: false });
  const moods = [];
  source.on("mood", (m) => moods.push(m));
  const welcome = await source.connect();
  assert.deepEqual(welcome.audio, { encoding: "pcm_f32le", sample_rate: RATE, channels: 2 });
  assert.equal(welcome.preset, "subtle");
  assert.deepEqual(welcome.track_detection, { enabled: false });
  assert.ok(source.trackDetection(true));
  assert.ok(source.track({ id: "js:1", title: "One", artist: "Someone" }));
  assert.ok(source.preset("dramatic"));
  const frames = await streamSamples(source, tone(3, RATE, 2), { speed: 0 });
  assert.equal(frames, 3 * RATE);
  const sourceGone = until(listener, "source", (m) => m.state === "disconnected");
  const result = await source.end();
  assert.equal(result.code, 1000);
  assert.equal(result.last.type, "mood");
  assert.deepEqual(result.last.track, { id: "js:1", title: "One", artist: "Someone" });
  assert.equal(result.last.preset, "dramatic");
  assert.ok(welcome.model.moods.includes(result.last.mood));
  assert.ok(Math.abs(result.last.stream_time - 3) < 0.1, `stream_time ${result.last.stream_time}`);
  assert.equal(source.state, "closed");
  await sourceGone;
  const heardMoods = heard.filter((m) => m.type === "mood").map((m) => m.seq);
  assert.deepEqual(heardMoods, moods.map((m) => m.seq));
  assert.deepEqual(heard.filter((m) => m.type === "source").map((m) => m.state), ["connected", "disconnected"]);
  listener.close();
});

/** A WAV file (16-bit PCM, mono) of `samples`. */
function wav(samples, rate) {
  const pcm = encodePcm(samples, "pcm_s16le");
  const out = new DataView(new ArrayBuffer(44 + pcm.byteLength));
  const text = (at, s) => [...s].forEach((c, i) => out.setUint8(at + i, c.charCodeAt(0)));
  text(0, "RIFF"); out.setUint32(4, 36 + pcm.byteLength, true); text(8, "WAVE"); text(12, "fmt ");
  out.setUint32(16, 16, true); out.setUint16(20, 1, true); out.setUint16(22, 1, true); out.setUint32(24, rate, true);
  out.setUint32(28, rate * 2, true); out.setUint16(32, 2, true); out.setUint16(34, 16, true); text(36, "data");
  out.setUint32(40, pcm.byteLength, true);
  new Uint8Array(out.buffer, 44).set(new Uint8Array(pcm.buffer ?? pcm, pcm.byteOffset ?? 0, pcm.byteLength));
  return new Uint8Array(out.buffer);
}

test("a prepared track: prepare, play, the player's clock reported, timeline and prepared moods", { skip }, async () => {
  const source = client({ room: "js-prepared", role: "source", sampleRate: RATE });
  const info = await source.prepare("js:song", wav(tone(6, RATE), RATE), { title: "Song" });
  assert.equal(info.track.id, "js:song");
  assert.ok(info.updates > 3 && /^[0-9a-f]{32}$/.test(info.analysis));
  await assert.rejects(source.prepare("js:nothing", new Uint8Array(200)), (e) => e.status === 415);
  const listener = client({ room: "js-prepared" });
  await listener.connect();
  await source.connect();
  const timeline = until(listener, "timeline");
  const moods = [];
  const three = new Promise((resolve) => listener.on("mood", (m) => { moods.push(m); if (moods.length === 3) resolve(); }));
  const started = Date.now();
  assert.ok(source.play("js:song", 0, { leadSeconds: 0.25 }));
  const stop = source.followPlayer(() => (Date.now() - started) / 1000, { everyMs: 300 });
  const t = await timeline;
  assert.equal(t.updates.length, info.updates);
  assert.equal(t.lead_seconds, 0.25);
  await three;
  stop();
  assert.ok(moods.every((m) => m.prepared === true && m.track.title === "Song"));
  assert.deepEqual(moods.map((m) => m.stream_time), t.updates.slice(0, 3).map((u) => u.position));
  assert.ok(source.stop());
  source.close();
  listener.close();
});

test("a dropped connection reconnects with backoff and re-sends the track", { skip }, async () => {
  const source = client({ room: "js-drop", role: "source", sampleRate: RATE });
  await source.connect();
  source.track({ id: "js:drop" });
  const reconnecting = until(source, "reconnecting");
  const second = until(source, "welcome");
  source._ws.close(4000, "test: drop"); // the socket goes away under the client (not client.close())
  const r = await reconnecting;
  assert.equal(r.attempt, 1);
  assert.equal(r.delayMs, 50);
  await second;
  await streamSamples(source, tone(1.5, RATE), { speed: 0 });
  const result = await source.end();
  assert.equal(result.code, 1000);
  assert.equal(result.last.track.id, "js:drop", "the new connection got the track again");
});

test("a refused source is explained and not retried", { skip }, async () => {
  const first = client({ room: "js-busy", role: "source", sampleRate: RATE });
  await first.connect();
  const second = client({ room: "js-busy", role: "source", sampleRate: RATE });
  const refused = until(second, "refused");
  await assert.rejects(second.connect(), /closed before welcome/);
  const r = await refused;
  assert.equal(r.code, "source_taken");
  assert.equal(r.willRetry, false);
  assert.equal(second.state, "closed");
  first.close();
});

test("an unreachable server is retried, then given up", { skip }, async () => {
  const gone = new MoodClient({ url: "ws://127.0.0.1:9", room: "nowhere", maxRetries: 1, backoff: { startMs: 20 } });
  const closes = [];
  gone.on("close", (c) => closes.push(c));
  await assert.rejects(gone.connect());
  assert.deepEqual(closes.map((c) => [c.opened, c.willReconnect, c.refusal.code]), [
    [false, true, "unreachable"],
    [false, false, "unreachable"],
  ]);
});

test("keepalive when idle", { skip }, async () => {
  const listener = client({ room: "js-idle", keepaliveMs: 100 });
  const sent = [];
  await listener.connect();
  const send = listener._ws.send.bind(listener._ws);
  listener._ws.send = (d) => { sent.push(d); send(d); };
  await new Promise((r) => setTimeout(r, 450));
  assert.ok(sent.filter((d) => JSON.parse(d).type === "keepalive").length >= 2, JSON.stringify(sent));
  assert.equal(listener.state, "open");
  listener.close();
});

test("helpers: urls, PCM encoding, option errors", () => {
  assert.equal(roomUrl("ws://h:1/", "a.b", { role: "source", token: undefined, sample_rate: 8000 }),
    "ws://h:1/v1/rooms/a.b?role=source&sample_rate=8000");
  assert.deepEqual([...new Int16Array(encodePcm([0, 1, -1, 0.5]))], [0, 32767, -32768, 16384]);
  assert.deepEqual([...new Float32Array(encodePcm([0.25], "pcm_f32le"))], [0.25]);
  assert.throws(() => new MoodClient({ url: "ws://h:1", room: "no spaces" }), /room/);
  assert.throws(() => new MoodClient({ url: "ws://h:1", room: "r", role: "dj" }), /role/);
  const defaults = new MoodClient({ url: "ws://h:1", room: "r", role: "source", sampleRate: undefined });
  assert.equal(defaults.url, "ws://h:1/v1/rooms/r?role=source&encoding=pcm_s16le&sample_rate=48000&channels=1");
  const saved = globalThis.WebSocket;
  try {
    globalThis.WebSocket = undefined;
    assert.throws(() => new MoodClient({ url: "ws://h:1", room: "r" }), /no WebSocket implementation/);
  } finally {
    globalThis.WebSocket = saved;
  }
});
