"""A local fake of the parts of the Spotify Web API the dataset builder and `spotify-predict` use, on 127.0.0.1.

Serves /v1/search (type=playlist, with a null entry as the real API returns nowadays), /v1/playlists/{id}/items and
/tracks (paged through `next` with small pages), /v1/tracks/{id}, and preview files (real short MP3s written with
soundfile). It reproduces what the builder must cope with: tracks without preview_url, a track under two moods, a
duplicate track in two playlists of one mood, an episode and a removed (null) track in a playlist, an editorial
playlist answering 404, and one 429 with Retry-After. Every request is logged so tests can assert on the traffic.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import numpy as np

PAGE_CAP = 2  # the fake's largest page, whatever `limit` asks for, so paging is always exercised
PREVIEW_SECONDS = 4.0
PREVIEW_RATE = 22050
TOKEN = "fake-token"


def write_preview(path: Path, freq: float, seconds: float = PREVIEW_SECONDS) -> Path:
    """A short real MP3 (a chord with some noise) at 22.05 kHz stereo, like a (short) Spotify preview."""
    import soundfile as sf

    t = np.arange(int(seconds * PREVIEW_RATE)) / PREVIEW_RATE
    rng = np.random.default_rng(int(freq))
    y = 0.3 * np.sin(2 * np.pi * freq * t) + 0.2 * np.sin(2 * np.pi * 1.5 * freq * t) + 0.02 * rng.standard_normal(len(t))
    sf.write(str(path), np.stack([y, y], axis=1).astype(np.float32), PREVIEW_RATE, format="MP3")
    return path


def _track(tid: str, name: str, artist: str, preview: bool) -> dict[str, Any]:
    return {"id": tid, "type": "track", "name": name, "artists": [{"name": artist, "id": f"a-{artist}"}],
            "preview_url": f"@/previews/{tid}.mp3" if preview else None, "is_local": False}


# The catalogue. Moods: happy (two playlists + one null search entry + one editorial 404), sad (one playlist).
TRACKS = {
    "h1": _track("h1", "Sunny Day", "Ann", True),
    "h2": _track("h2", "Jump", "Bob", True),
    "h3": _track("h3", "Dance Floor", "Cat", False),  # no preview
    "h4": _track("h4", "Smile", "Ann", True),
    "both": _track("both", "Bittersweet", "Dee", True),  # in a happy and a sad playlist
    "s1": _track("s1", "Rain", "Eve", True),
    "s2": _track("s2", "Alone", "Fay", True),
    "s3": _track("s3", "Grey", "Gus", False),  # no preview
}
PLAYLISTS = {
    "plh1": ("Happy Hits", ["h1", "h2", None, "h3", "episode", "both"]),  # None = removed track, "episode" = podcast
    "plh2": ("Feel Good", ["h2", "h4"]),  # h2 again: a duplicate within the mood
    "pled": ("Editorial Happy", ["h1"]),  # answers 404, like Spotify's own playlists for new apps
    "pls1": ("Sad Songs", ["s1", "both", "s2", "s3"]),
}
SEARCH = {"happy": ["plh1", None, "plh2", "pled"], "sad": ["pls1"]}


@dataclass
class FakeSpotify:
    """Run with `with FakeSpotify(tmp_path) as fake:`; `fake.api_url` is the base to give spotipy."""

    folder: Path
    rate_limit_once: str | None = "/playlists/"  # the first request whose path contains this gets a 429
    retry_after: str = "1"
    requests: list[str] = field(default_factory=list)
    previews_served: int = 0

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for i, (tid, t) in enumerate(TRACKS.items()):
            if t["preview_url"] and not (self.folder / f"{tid}.mp3").is_file():  # a folder can be shared by fakes
                write_preview(self.folder / f"{tid}.mp3", 220.0 + 70.0 * i)
        self._lock = threading.Lock()
        self._limited = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.api_url = self.base + "/v1/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeSpotify":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def track_json(self, tid: str) -> dict[str, Any]:
        t = dict(TRACKS[tid])
        if t["preview_url"]:
            t["preview_url"] = t["preview_url"].replace("@", self.base)
        return t

    def _page(self, items: list[Any], path: str, query: dict[str, str]) -> dict[str, Any]:
        offset = int(query.get("offset", 0))
        limit = min(int(query.get("limit", 20)), PAGE_CAP)
        page = items[offset : offset + limit]
        nxt = None
        if offset + limit < len(items):
            nxt = f"{self.base}{path}?" + urlencode({**query, "offset": offset + limit, "limit": limit})
        return {"items": page, "offset": offset, "limit": limit, "total": len(items), "next": nxt}

    def respond(self, path: str, query: dict[str, str], auth: str | None) -> tuple[int, dict[str, str], bytes]:
        def js(code: int, obj: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
            return code, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode()

        with self._lock:
            self.requests.append(path + ("?" + urlencode(query) if query else ""))
            if self.rate_limit_once and self.rate_limit_once in path and not self._limited:
                self._limited = True
                return js(429, {"error": {"status": 429, "message": "API rate limit exceeded"}}, {"Retry-After": self.retry_after})
        if path.startswith("/previews/"):
            f = self.folder / Path(path).name
            if not f.is_file():
                return 404, {}, b""
            self.previews_served += 1
            return 200, {"Content-Type": "audio/mpeg"}, f.read_bytes()
        if auth != f"Bearer {TOKEN}":
            return js(401, {"error": {"status": 401, "message": "No token provided"}})
        parts = path.strip("/").split("/")
        if parts[:2] == ["v1", "search"]:
            if query.get("type") != "playlist":
                return js(400, {"error": {"status": 400, "message": "only type=playlist in this fake"}})
            ids = SEARCH.get(query.get("q", ""), [])
            page = self._page(ids, path, query)
            page["items"] = [None if pid is None else {"id": pid, "name": PLAYLISTS[pid][0], "type": "playlist"} for pid in page["items"]]
            return js(200, {"playlists": page})
        if parts[:2] == ["v1", "playlists"] and len(parts) == 4 and parts[3] in ("items", "tracks"):
            pid = parts[2]
            if pid not in PLAYLISTS or pid == "pled":
                return js(404, {"error": {"status": 404, "message": "Resource not found"}})
            page = self._page(PLAYLISTS[pid][1], path, query)
            items = []
            for tid in page["items"]:
                if tid is None:
                    items.append({"track": None})
                elif tid == "episode":
                    items.append({"track": {"id": "ep1", "type": "episode", "name": "A podcast"}})
                else:
                    items.append({"track": self.track_json(tid)})
            page["items"] = items
            return js(200, page)
        if parts[:2] == ["v1", "tracks"] and len(parts) == 3:
            if parts[2] not in TRACKS:
                return js(404, {"error": {"status": 404, "message": "Resource not found"}})
            return js(200, self.track_json(parts[2]))
        return js(404, {"error": {"status": 404, "message": f"no such endpoint in the fake: {path}"}})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                code, headers, body = fake.respond(url.path, query, self.headers.get("Authorization"))
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
