// The capture worklet's resampler (src/worklet.js), in Node: the AudioWorklet itself only runs in a browser
// (tests/test_browser.py drives it through the page), but its DSP is plain JS. A tone keeps its frequency and level
// across any block size, and content above the new Nyquist frequency does not fold back into the music.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Resampler, MODEL_RATE } from "../src/worklet.js";

function tone(freq, rate, seconds) {
  const x = new Float32Array(Math.round(rate * seconds));
  for (let i = 0; i < x.length; i++) x[i] = 0.5 * Math.sin((2 * Math.PI * freq * i) / rate);
  return x;
}

function resampleInBlocks(x, inRate, outRate, block) {
  const r = new Resampler(inRate, outRate);
  const parts = [];
  for (let i = 0; i < x.length; i += block) parts.push(r.push(x.subarray(i, i + block)));
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Amplitude of `freq` in `y` (one DFT bin, Hann window, skipping the first and last 50 ms). */
function amplitude(y, rate, freq) {
  const skip = Math.round(rate * 0.05);
  const n = y.length - 2 * skip;
  let re = 0;
  let im = 0;
  let wsum = 0;
  for (let i = 0; i < n; i++) {
    const w = 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / (n - 1));
    re += w * y[skip + i] * Math.cos((2 * Math.PI * freq * i) / rate);
    im -= w * y[skip + i] * Math.sin((2 * Math.PI * freq * i) / rate);
    wsum += w;
  }
  return (2 * Math.hypot(re, im)) / wsum;
}

for (const inRate of [48000, 44100]) {
  test(`${inRate} Hz -> ${MODEL_RATE} Hz keeps a 1 kHz tone (any block size)`, () => {
    for (const block of [128, 441, 4800]) {
      const y = resampleInBlocks(tone(1000, inRate, 2), inRate, MODEL_RATE, block);
      const delay = Math.ceil(new Resampler(inRate, MODEL_RATE).half * (MODEL_RATE / inRate)); // ~1 ms held back
      assert.ok(y.length <= 2 * MODEL_RATE && y.length >= 2 * MODEL_RATE - delay - 1, `length ${y.length}`);
      assert.ok(Math.abs(amplitude(y, MODEL_RATE, 1000) - 0.5) < 0.01, `level ${amplitude(y, MODEL_RATE, 1000)}`);
    }
  });

  test(`${inRate} Hz -> ${MODEL_RATE} Hz does not fold 12 kHz back into the band`, () => {
    const y = resampleInBlocks(tone(12000, inRate, 2), inRate, MODEL_RATE, 128);
    const alias = Math.abs(MODEL_RATE - 12000); // where 12 kHz would land: 4 kHz
    let rms = 0;
    for (const v of y.subarray(800)) rms += v * v;
    rms = Math.sqrt(rms / (y.length - 800));
    assert.ok(amplitude(y, MODEL_RATE, alias) < 0.005, `alias ${amplitude(y, MODEL_RATE, alias)}`);
    assert.ok(rms < 0.005, `rms ${rms}`);
  });
}
