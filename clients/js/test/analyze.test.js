// analyzeFile against a real server: SENDRETURN_URL (ws://HOST:PORT) of a running server and SENDRETURN_AUDIO, an
// audio file (tests/test_http_analyze.py starts the server, writes the file and runs this). The analyses received
// are written to SENDRETURN_RECV_LOG (JSON lines) for the pytest side to validate against schema/v1/analysis.json.
import { test } from "node:test";
import assert from "node:assert/strict";
import { appendFileSync, readFileSync } from "node:fs";

import { AnalyzeError, analyzeFile } from "../src/index.js";

const URL_ = process.env.SENDRETURN_URL;
const AUDIO = process.env.SENDRETURN_AUDIO;
const skip = URL_ && AUDIO ? false : "SENDRETURN_URL / SENDRETURN_AUDIO not set (run through pytest: tests/test_http_analyze.py)";

function logged(result) {
  if (process.env.SENDRETURN_RECV_LOG) appendFileSync(process.env.SENDRETURN_RECV_LOG, `${JSON.stringify(result)}\n`);
  return result;
}

test("a Node Buffer and a Blob (what a browser File is) give the same analysis", { skip }, async () => {
  const bytes = readFileSync(AUDIO);
  const fromBuffer = logged(await analyzeFile(URL_, bytes, { name: "song.mp3" }));
  assert.equal(fromBuffer.file, "song.mp3");
  assert.ok(fromBuffer.windows > 0 && fromBuffer.timeline.length === fromBuffer.windows);
  const f = fromBuffer.features;
  assert.ok(f.valence >= 0 && f.valence <= 1 && f.energy >= 0 && f.energy <= 1);
  for (const name of ["danceability", "speechiness", "acousticness", "instrumentalness", "liveness", "time_signature"]) {
    assert.equal(f.spotify_compatible[name], null, name);
  }
  const blob = new Blob([bytes], { type: "audio/mpeg" });
  const fromBlob = logged(await analyzeFile(URL_, blob, { name: "song.mp3" }));
  assert.deepEqual(fromBlob, fromBuffer);
});

test("a refusal is an AnalyzeError with the server's status, code and message", { skip }, async () => {
  await assert.rejects(analyzeFile(URL_, new TextEncoder().encode("not audio at all")), (e) => {
    assert.ok(e instanceof AnalyzeError);
    assert.equal(e.status, 415);
    assert.equal(e.code, "unsupported_media_type");
    assert.match(e.message, /wav, mp3, flac and ogg/);
    return true;
  });
});
