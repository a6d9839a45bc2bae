// AudioWorklet processor "pcm-sender": mono PCM s16le at the AudioContext's own sample rate, ~100 ms per message.
//
// Why a worklet: it runs on the audio rendering thread, so capture never drops samples when the page is busy
// drawing, and it sees the exact samples at the context's rate (no resampling here: the server resamples, and the
// page announces `sample_rate=<context rate>` when it connects, as protocol v1 asks).
// Main thread <- {pcm: ArrayBuffer (Int16 little-endian), level: rms 0..1}  (the buffer is transferred, not copied)
// Main thread -> {active: bool}  (paused sources send nothing, so stream_time only counts real audio)
// Loaded by startCapture() in index.js (same folder), so the page and npm users get it from the same place.

const DEFAULT_CHUNK_MS = 100;

class PcmSender extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const chunkMs = (options && options.processorOptions && options.processorOptions.chunkMs) || DEFAULT_CHUNK_MS;
    this.size = Math.max(128, Math.round((sampleRate * chunkMs) / 1000));
    this.buffer = new Int16Array(this.size);
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
    for (let i = 0; i < frames; i++) {
      let x = 0;
      for (let c = 0; c < channels; c++) x += input[c][i];
      x /= channels; // downmix: the page always announces channels=1
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
