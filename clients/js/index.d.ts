// Types for sendreturn-mood-client (src/index.js), protocol v1.
// Every interface tagged `@schema FILE[#POINTER]` mirrors that JSON Schema in schema/v1/ field for field (names,
// and which are optional); test/types.test.js checks that they cover exactly the schema's messages and fields.
// Servers only ever add fields and message types: clients must ignore what they do not know.

export declare const PROTOCOL_VERSION: 1;
export declare const ROOM_RE: RegExp;
export declare const CLOSE_TEXT: Record<number, string>;

export type Role = "source" | "listener";
export type Encoding = "pcm_s16le" | "pcm_f32le";
export type ErrorCode =
  | "bad_message" | "bad_audio" | "rate_limited" | "not_allowed" | "too_big" | "unauthorized" | "server_error"
  | "unknown_track" | "clock_mismatch";
export type HttpErrorCode =
  | "bad_request" | "unauthorized" | "forbidden_origin" | "not_found" | "method_not_allowed" | "source_taken"
  | "rate_limited" | "server_full" | "store_full" | "too_big" | "unsupported_media_type" | "bad_audio" | "timeout"
  | "request_timeout" | "server_error" | "cluster_unavailable";
/** label -> probability (they sum to 1), in the model's label order */
export type Probabilities = Record<string, number>;

/** @schema common.json#/$defs/audio */
export interface AudioFormat {
  encoding: Encoding;
  sample_rate: number;
  channels: number;
}

/** @schema common.json#/$defs/track */
export interface Track {
  id: string;
  title?: string;
  artist?: string;
}

/** @schema welcome.json#/properties/model */
export interface ModelInfo {
  name: string;
  version: string;
  moods: string[];
  genres: string[];
  /** where each mood sits on the valence/arousal plane (server extension) */
  coordinates?: Record<string, { valence: number; arousal: number }>;
}

/** @schema welcome.json#/properties/analysis */
export interface AnalysisInfo {
  window_seconds: number;
  hop_seconds: number;
  /** the rate the model hears (server extension): send mono audio at this rate */
  sample_rate?: number;
}

/** @schema welcome.json */
export interface WelcomeMessage {
  type: "welcome";
  protocol: 1;
  room: string;
  role: Role;
  /** sources only */
  audio?: AudioFormat;
  model: ModelInfo;
  analysis: AnalysisInfo;
  preset: string;
  /** sources only (server extension) */
  track_detection?: TrackDetectionInfo;
}

/** @schema welcome.json#/properties/track_detection */
export interface TrackDetectionInfo {
  enabled: boolean;
}

/** @schema mood.json#/properties/instant */
export interface InstantMood {
  probabilities: Probabilities;
  valence: number;
  arousal: number;
}

/** @schema mood.json#/properties/genre */
export interface Genre {
  /** null while the track has had no music yet */
  label: string | null;
  probabilities: Probabilities;
}

/** @schema mood.json */
export interface MoodMessage {
  type: "mood";
  room: string;
  seq: number;
  stream_time: number;
  /** only after a track message */
  track?: Track;
  /** null while the track has had no music yet (a silent start: no label to hold; confidence 0) */
  mood: string | null;
  confidence: number;
  probabilities: Probabilities;
  valence: number;
  arousal: number;
  instant: InstantMood;
  /** only when the model has genres */
  genre?: Genre;
  /** effect parameter -> value (numbers; colours as "#rrggbb") */
  /** numbers; colours as "#rrggbb", and each colour NAME also as NAME_rgb: [r, g, b] in 0..1 */
  effects: Record<string, number | string | [number, number, number]>;
  preset: string;
  /** "silent": the window was below the server's silence threshold (mood held, effects at rest) */
  state?: "music" | "silent";
  /** the analysed window's level in dB re a full-scale sine (-120: digital silence) */
  level_db?: number;
  /** server extension: from the room's prepared track, sent at its position (stream_time) minus lead_seconds */
  prepared?: true;
  latency_ms: number;
}

/** @schema source.json */
export interface SourceMessage {
  type: "source";
  state: "connected" | "disconnected";
}

/** @schema error.json */
export interface ErrorMessage {
  type: "error";
  code: ErrorCode;
  message: string;
  fatal: boolean;
}

/** @schema track_change.json */
export interface TrackChangeMessage {
  type: "track_change";
  room: string;
  source: "detected";
  /** where the new track is estimated to start (the mood messages' stream_time clock) */
  stream_time: number;
  /** stream_time of the update that confirmed it */
  detected_at: number;
  score: number;
  threshold: number;
  /** heard in the room's prepared track, sent at its position */
  prepared?: true;
}

/** @schema timeline.json#/properties/updates/items */
export interface TimelineUpdate {
  /** seconds into the track (the update's stream_time) */
  position: number;
  mood: string;
  confidence: number;
  valence: number;
  arousal: number;
  genre?: string;
  state?: "music" | "silent";
  effects: Record<string, number | string | [number, number, number]>;
}

/** @schema timeline.json#/properties/track_changes/items */
export interface TimelineTrackChange {
  source: "detected";
  stream_time: number;
  detected_at: number;
  score: number;
  threshold: number;
}

/** @schema timeline.json */
export interface TimelineMessage {
  type: "timeline";
  room: string;
  track: Track;
  /** the analysis id (a PUT may refer to it instead of uploading the audio again) */
  analysis: string;
  duration: number;
  lead_seconds: number;
  hop_seconds: number;
  track_changes: TimelineTrackChange[];
  updates: TimelineUpdate[];
}

/** @schema resync.json */
export interface ResyncMessage {
  type: "resync";
  room: string;
  /** seq numbers from_seq..to_seq will not arrive (a cluster could not carry them, or the source moved process):
   * the next mood is the room's current state; snap to it */
  from_seq: number;
  to_seq: number;
}

export type ServerMessage = WelcomeMessage | MoodMessage | SourceMessage | ErrorMessage | TrackChangeMessage | TimelineMessage | ResyncMessage;

/** @schema track.json */
export interface TrackMessage {
  type: "track";
  id: string;
  title?: string;
  artist?: string;
}

/** @schema preset.json */
export interface PresetMessage {
  type: "preset";
  name: string;
}

/** @schema end.json */
export interface EndMessage {
  type: "end";
}

/** @schema keepalive.json */
export interface KeepaliveMessage {
  type: "keepalive";
}

/** @schema track_detection.json */
export interface TrackDetectionMessage {
  type: "track_detection";
  enabled: boolean;
}

/** @schema play.json */
export interface PlayMessage {
  type: "play";
  track: string;
  position?: number;
  lead_seconds?: number;
}

/** @schema position.json */
export interface PositionMessage {
  type: "position";
  position: number;
}

/** @schema pause.json */
export interface PauseMessage {
  type: "pause";
}

/** @schema stop.json */
export interface StopMessage {
  type: "stop";
}

export type ClientMessage = TrackMessage | PresetMessage | EndMessage | KeepaliveMessage | TrackDetectionMessage | PlayMessage | PositionMessage | PauseMessage | StopMessage;

/** @schema handshake-query.json */
export interface HandshakeQuery {
  role?: Role;
  encoding?: Encoding;
  sample_rate?: number;
  channels?: number;
  preset?: string;
  token?: string;
  /** server extension, source only */
  track_detection?: "on" | "off";
}

/** @schema http-error.json#/properties/error */
export interface HttpErrorDetail {
  code: HttpErrorCode;
  message: string;
}

/** @schema http-error.json */
export interface HttpError {
  error: HttpErrorDetail;
}

/** @schema analysis.json#/$defs/features/properties/spotify_compatible */
export interface SpotifyCompatibleFeatures {
  /** null: not computed here (drop the column explicitly) */
  danceability: null;
  energy: number;
  key: number;
  loudness: number | null;
  mode: 0 | 1 | null;
  speechiness: null;
  acousticness: null;
  instrumentalness: null;
  liveness: null;
  valence: number;
  tempo: number | null;
  time_signature: null;
  duration_ms: number;
}

/** @schema analysis.json#/$defs/features */
export interface TrackFeatures {
  /** 0..1: (model valence + 1) / 2 */
  valence: number;
  /** 0..1: 0.7 (model arousal + 1) / 2 + 0.3 level (from loudness) */
  energy: number;
  mood: string;
  mood_probabilities: Probabilities;
  genre: string | null;
  genre_probabilities: Probabilities | null;
  /** beats per minute (0 with confidence 0: none found) */
  tempo: number;
  tempo_confidence: number;
  /** pitch class 0 (C) .. 11, -1 undecided */
  key: number;
  /** 1 major, 0 minor, -1 undecided */
  mode: -1 | 0 | 1;
  key_confidence: number;
  /** integrated loudness (EBU R128), LUFS */
  loudness: number | null;
  duration_ms: number;
  spotify_compatible: SpotifyCompatibleFeatures;
}

/** @schema analysis.json */
export interface Analysis {
  file: string;
  duration: number;
  model: { name: string; version: string };
  preset: string;
  windows: number;
  mood: string;
  probabilities: Probabilities;
  valence: number;
  arousal: number;
  genre?: { label: string; probabilities: Probabilities };
  silent_spans: [number, number][];
  track_detection: boolean;
  track_changes: { source: "detected"; stream_time: number }[];
  /** what the server would broadcast for the audio, per hop (mood messages without type, room, seq, track, latency_ms) */
  timeline: Omit<MoodMessage, "type" | "room" | "seq" | "track" | "latency_ms" | "prepared">[];
  /** POST /v1/analyze only */
  features?: TrackFeatures;
  /** POST /v1/analyze: the id to PUT as a room's prepared track (?analysis=ID; MoodClient.prepare(id, null, {analysis})) */
  analysis?: string;
}

/** A refused POST /v1/analyze: the HTTP status, the error body's code and message, Retry-After on a 429. */
export declare class AnalyzeError extends Error {
  readonly status: number;
  readonly code: HttpErrorCode | "";
  readonly retryAfter: number | null;
}

/** POST an audio file (a browser File/Blob, an ArrayBuffer, a typed array or a Node Buffer) to `url`'s /v1/analyze. */
export declare function analyzeFile(
  url: string,
  file: Blob | ArrayBuffer | ArrayBufferView,
  options?: { token?: string; name?: string; signal?: AbortSignal; fetch?: typeof fetch },
): Promise<Analysis>;

/** @schema room-info.json */
export interface RoomInfo {
  room: string;
  source: boolean;
  listeners: number;
  seq: number;
  track: Track | null;
  preset: string;
  audio_seconds: number;
}

/** @schema healthz.json#/properties/model */
export interface HealthModel {
  name: string;
  version: string;
}

/** @schema healthz.json#/properties/broker/properties/cluster */
export interface HealthCluster {
  nodes: number;
  rooms: number;
  connections: number;
}

/** @schema healthz.json#/properties/broker */
export interface HealthBroker {
  kind: "memory" | "redis";
  node: string;
  connected: boolean;
  /** redis: the broker URL, password redacted */
  url?: string;
  reconnects?: number;
  pending?: number;
  /** redis: the whole cluster (the top-level rooms and connections are this process's) */
  cluster?: HealthCluster;
}

/** @schema healthz.json */
export interface Health {
  status: "ok" | "degraded" | "shutting_down";
  version: string;
  protocol: 1;
  model: HealthModel;
  rooms: number;
  connections: number;
  broker?: HealthBroker;
}

// ------------------------------------------------------------------------------------------------- the client

export interface Refusal {
  code: "unreachable" | "server_full" | "bad_request" | "source_taken" | "unknown";
  message: string;
}

export interface CloseInfo {
  code: number;
  reason: string;
  wasClean: boolean;
  /** false: the handshake failed (see `refusal`) */
  opened: boolean;
  willReconnect: boolean;
  delayMs: number;
  refusal: Refusal | null;
}

export interface MoodClientEvents {
  open: { url: string };
  welcome: WelcomeMessage;
  mood: MoodMessage;
  source: SourceMessage;
  /** an `error` message from the server (fatal ones are followed by a close) */
  error: ErrorMessage;
  /** the server heard a new track start in the audio (the room's smoothing restarted) */
  track_change: TrackChangeMessage;
  /** a prepared track's whole timeline, once per play of a new track (server extension) */
  timeline: TimelineMessage;
  /** updates that will not arrive (with a Redis broker: an outage, or the source moved to another process) */
  resync: ResyncMessage;
  /** every server message, including types this version does not know */
  message: ServerMessage | { type: string; [field: string]: unknown };
  close: CloseInfo;
  reconnecting: { attempt: number; delayMs: number; reason: string };
  refused: Refusal & { willRetry: boolean };
}

/** The parts of a WHATWG WebSocket the client uses (browsers, Node >= 22, the `ws` package). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly bufferedAmount: number;
  binaryType: string;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  onclose: ((event: { code: number; reason: string; wasClean: boolean }) => void) | null;
  send(data: string | ArrayBufferLike | ArrayBufferView): void;
  close(code?: number, reason?: string): void;
}

export interface MoodClientOptions {
  /** server base URL, e.g. "ws://127.0.0.1:8765" */
  url: string;
  room: string;
  role?: Role;
  encoding?: Encoding;
  sampleRate?: number;
  channels?: number;
  preset?: string;
  token?: string;
  /** source: the room's track-change detection at connect (the track_detection query; default: the server's setting) */
  trackDetection?: boolean;
  /** a WebSocket constructor; default: globalThis.WebSocket */
  WebSocket?: new (url: string) => WebSocketLike;
  reconnect?: boolean;
  /** failed attempts in a row before giving up (default: no limit) */
  maxRetries?: number;
  backoff?: { startMs?: number; maxMs?: number; factor?: number };
  /** send `keepalive` after this long without sending anything; 0: never (default 30000) */
  keepaliveMs?: number;
  /** sendAudio drops audio while more than this many bytes wait in the socket (default 512 KiB) */
  maxBufferedBytes?: number;
  /** ask the server over HTTP why a handshake failed (default true) */
  diagnose?: boolean;
}

export interface EndResult {
  last: MoodMessage | null;
  code: number | null;
  reason: string;
}

export declare function roomUrl(base: string, room: string, params?: Partial<Record<keyof HandshakeQuery, string | number | undefined | null>>): string;

/** What a PUT of a prepared track answers. */
export interface PreparedTrackInfo {
  track: Track;
  analysis: string;
  duration: number;
  updates: number;
  track_changes: TimelineTrackChange[];
  model: { name: string; version: string };
  preset: string;
}

export declare const POSITION_EVERY_MS: number;

export declare class MoodClient {
  constructor(options: MoodClientOptions);
  readonly options: Required<Omit<MoodClientOptions, "preset" | "token">> & Pick<MoodClientOptions, "preset" | "token">;
  readonly url: string;
  readonly state: "idle" | "connecting" | "open" | "closed";
  readonly isOpen: boolean;
  readonly welcome: WelcomeMessage | null;
  readonly last: MoodMessage | null;
  readonly currentTrack: Track | null;
  readonly sentBytes: number;
  readonly droppedChunks: number;
  on<K extends keyof MoodClientEvents>(type: K, listener: (data: MoodClientEvents[K]) => void): () => void;
  off<K extends keyof MoodClientEvents>(type: K, listener: (data: MoodClientEvents[K]) => void): void;
  /** resolves with the first welcome; rejects when closed before it without reconnecting */
  connect(): Promise<WelcomeMessage>;
  diagnose(): Promise<Refusal>;
  sendAudio(pcm: ArrayBufferLike | ArrayBufferView): boolean;
  sendFloat(samples: Float32Array | number[]): boolean;
  track(track: Track): boolean;
  preset(name: string): boolean;
  keepalive(): boolean;
  /** source: switch the room's track-change detection on or off */
  trackDetection(enabled: boolean): boolean;
  /** PUT the audio (or refer to a stored analysis) as the room's prepared track `id` (server extension) */
  prepare(id: string, audio?: Blob | ArrayBuffer | ArrayBufferView, options?: { title?: string; artist?: string; analysis?: string; fetch?: typeof fetch }): Promise<PreparedTrackInfo>;
  play(track: string, position?: number, options?: { leadSeconds?: number }): boolean;
  position(position: number): boolean;
  pause(): boolean;
  stop(): boolean;
  /** report clock() (seconds, null while paused) every everyMs (default 5000); returns a function that stops */
  followPlayer(clock: () => number | null | undefined, options?: { everyMs?: number }): () => void;
  playing: { track: string; leadSeconds?: number } | null;
  end(options?: { timeoutMs?: number }): Promise<EndResult>;
  close(code?: number, reason?: string): void;
}

export declare function encodePcm(samples: Float32Array | number[], encoding?: Encoding): ArrayBuffer;

export declare function streamSamples(
  client: MoodClient, samples: Float32Array, options?: { chunkMs?: number; speed?: number },
): Promise<number>;

export interface Capture {
  context: AudioContext;
  node: AudioWorkletNode;
  /** the rate of the chunks (16000 by default, the model's): announce it as the source client's sampleRate */
  sampleRate: number;
  onChunk: ((pcm: ArrayBuffer, level: number) => void) | null;
  level: number;
  setActive(active: boolean): void;
  attachElement(element: HTMLMediaElement): void;
  stop(): Promise<void>;
}

export declare function startCapture(
  input: MediaStream | HTMLMediaElement | null,
  options?: {
    context?: AudioContext; chunkMs?: number; workletUrl?: string; onChunk?: (pcm: ArrayBuffer, level: number) => void;
    /** the rate to send (default MODEL_RATE, 16000: mono at the model's rate; 0: the AudioContext's own rate) */
    sampleRate?: number;
  },
): Promise<Capture>;

/** what the shipped models hear; a welcome's analysis.sample_rate says what this server's model hears */
export declare const MODEL_RATE: number;
