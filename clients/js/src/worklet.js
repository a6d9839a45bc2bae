// AudioWorklet processor "pcm-sender": mono PCM s16le at the model's rate (16 kHz unless told), ~100 ms per message.
//
// Why a worklet: it runs on the audio rendering thread, so capture never drops samples when the page is busy
// drawing, and it sees the exact samples at the context's rate. Why resample here: the model hears 16 kHz mono;
// the context runs at the device's rate (44.1 or 48 kHz), and sending that would upload three times the bytes for
// the server to throw away. The context itself stays at the device's rate (an <audio> element keeps playing to
// the speakers through it at full quality). processorOptions.sampleRate 0 sends the context's own rate.
// Main thread <- {pcm: ArrayBuffer (Int16 little-endian), level: rms 0..1}  (the buffer is transferred, not copied)
// Main thread -> {active: bool}  (paused sources send nothing, so stream_time only counts real audio)
// Loaded by startCapture() in index.js (same folder), so the page and npm users get it from the same place.
// `Resampler` is exported for tests (Node imports this file; the processor is only defined inside a worklet).

const DEFAULT_CHUNK_MS = 100;
export const MODEL_RATE = 16000;

/**
 * Streaming band-limited resampler for one channel: Hann-windowed sinc, cut off below the lower Nyquist frequency,
 * evaluated from a table at any fractional position (so 44.1 -> 16 kHz works as well as 48 -> 16). Output samples
 * come out as soon as the input right of them is known, so the delay is `half` input samples (~1 ms).
 */
export class Resampler {
  constructor(inRate, outRate, { zeroCrossings = 16, tableResolution = 256 } = {}) {
    this.step = inRate / outRate; // input samples per output sample
    this.cutoff = 0.5 * Math.min(1, outRate / inRate) * 0.9; // cycles per input sample: 90 % of the lower Nyquist
    this.half = Math.ceil(zeroCrossings / (2 * this.cutoff)); // kernel half-width in input samples
    this.res = tableResolution;
    this.table = new Float32Array(this.half * this.res + 2);
    for (let i = 0; i < this.table.length; i++) {
      const x = i / this.res;
      const u = 2 * this.cutoff * x;
      const sinc = u === 0 ? 1 : Math.sin(Math.PI * u) / (Math.PI * u);
      this.table[i] = x >= this.half ? 0 : 2 * this.cutoff * sinc * 0.5 * (1 + Math.cos((Math.PI * x) / this.half));
    }
    this.buf = new Float32Array(this.half); // the history before the first sample: silence
    this.start = -this.half; // input index of buf[0]
    this.t = 0; // input position of the next output sample
  }

  kernel(x) {
    const p = Math.abs(x) * this.res;
    const i = Math.floor(p);
    if (i + 1 >= this.table.length) return 0;
    return this.table[i] + (p - i) * (this.table[i + 1] - this.table[i]);
  }

  /** Float32Array of input samples -> Float32Array of the output samples now complete. */
  push(input) {
    const joined = new Float32Array(this.buf.length + input.length);
    joined.set(this.buf);
    joined.set(input, this.buf.length);
    this.buf = joined;
    const end = this.start + joined.length; // one past the last input index known
    const out = [];
    while (this.t + this.half < end) {
      const first = Math.ceil(this.t - this.half);
      const last = Math.floor(this.t + this.half);
      let acc = 0;
      let norm = 0;
      for (let k = Math.max(first, this.start); k <= last; k++) {
        const w = this.kernel(this.t - k);
        acc += w * joined[k - this.start];
        norm += w;
      }
      out.push(norm > 0 ? acc / norm : 0); // normalised: exactly unity gain at DC whatever the phase
      this.t += this.step;
    }
    const keep = Math.max(this.start, Math.floor(this.t - this.half) - 1);
    this.buf = joined.slice(keep - this.start);
    this.start = keep;
    return Float32Array.from(out);
  }
}

if (typeof AudioWorkletProcessor !== "undefined") {
  class PcmSender extends AudioWorkletProcessor {
    constructor(options) {
      super();
      const opts = (options && options.processorOptions) || {};
      const chunkMs = opts.chunkMs || DEFAULT_CHUNK_MS;
      const target = opts.sampleRate === 0 ? sampleRate : opts.sampleRate || MODEL_RATE;
      this.resampler = target === sampleRate ? null : new Resampler(sampleRate, target);
      this.size = Math.max(128, Math.round((target * chunkMs) / 1000));
      this.buffer = new Int16Array(this.size);
      this.mono = new Float32Array(128);
      this.filled = 0;
      this.sumSquares = 0;
      this.active = true;
      this.port.onmessage = (event) => {
        if (typeof event.data.active === "boolean") {
          this.active = event.data.active;
          if (!this.active) this.filled = 0; // drop a half-filled chunk: it belongs to audio that stopped
        }
      };
    }

    process(inputs) {
      const input = inputs[0];
      if (!this.active || !input || input.length === 0) return true;
      const frames = input[0].length;
      const channels = input.length;
      if (this.mono.length !== frames) this.mono = new Float32Array(frames);
      for (let i = 0; i < frames; i++) {
        let x = 0;
        for (let c = 0; c < channels; c++) x += input[c][i];
        this.mono[i] = x / channels; // downmix: the page always announces channels=1
      }
      const samples = this.resampler ? this.resampler.push(this.mono) : this.mono;
      for (let i = 0; i < samples.length; i++) {
        const x = samples[i];
        this.sumSquares += x * x;
        const clipped = x < -1 ? -1 : x > 1 ? 1 : x;
        this.buffer[this.filled++] = clipped < 0 ? Math.round(clipped * 32768) : Math.round(clipped * 32767);
        if (this.filled === this.size) this.flush();
      }
      return true; // keep running while the graph exists
    }

    flush() {
      const level = Math.sqrt(this.sumSquares / this.size);
      // Int16Array uses the platform byte order; every browser platform is little-endian, as s16le requires.
      const out = this.buffer.buffer;
      this.port.postMessage({ pcm: out, level }, [out]);
      this.buffer = new Int16Array(this.size);
      this.filled = 0;
      this.sumSquares = 0;
    }
  }

  registerProcessor("pcm-sender", PcmSender);
}
