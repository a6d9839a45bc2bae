"""Spotify dataset builder (the original SEND/RETURN way) and the old "predict one Spotify track" flow, with spotipy.

For each mood, search its queries for the top N playlists, page through their tracks, de-duplicate, drop (or keep
the first mood of) tracks found under two moods, and download each track's 30 s preview into ROOT/<mood>/<id>.mp3
with a manifest (file,label,group,source + track_id, track, artists, playlist). Group = the primary artist, so
evaluation can stay artist-disjoint.

It resumes where it stopped: searches and fully paged playlists are recorded in ROOT/.spotify_state.json and files
already downloaded are skipped. Rate limits are respected: a 429 waits for its Retry-After (bounded by --max-wait
and --max-retries; beyond that the run stops with its progress saved, because Spotify's penalty waits can be hours).

IMPORTANT: since 27 November 2024 Spotify no longer returns 30 s previews (preview_url is null) or audio features
to apps created after that date (and editorial playlists may answer 403/404). With such an app this builder finds
tracks but can download almost nothing; it says so with counts instead of failing silently.

Credentials the spotipy way: SPOTIPY_CLIENT_ID and SPOTIPY_CLIENT_SECRET (client-credentials flow), or --token.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .manifest import MOODS_4Q, ManifestError

API_URL = "https://api.spotify.com/v1/"
STATE_FILE = ".spotify_state.json"
MANIFEST_FILE = "manifest.csv"
CONFLICTS_FILE = "conflicts.csv"
MANIFEST_COLUMNS = ("file", "label", "group", "source", "track_id", "track", "artists", "playlist")
SOURCE = "spotify"
DEFAULT_QUERIES = {mood: [mood] for mood in MOODS_4Q}
SEARCH_PAGE = 50  # the Web API's maximum `limit` for search
ITEMS_PAGE = 100  # ... and for playlist items
MAX_RETRIES = 5
MAX_WAIT_SECONDS = 120.0
DEFAULT_WAIT_SECONDS = 2.0  # when a 429/5xx carries no Retry-After; doubled per attempt
TIMEOUT_SECONDS = 20.0
CONFLICT_POLICIES = ("drop", "first")
NO_PREVIEW_REASON = (
    "Spotify stopped serving 30 s previews (preview_url is null) and audio features to apps created after "
    "27 November 2024; previews may also be missing for some markets (try --market)"
)
STATE_VERSION = 1


class SpotifyError(ManifestError):
    """A Spotify problem the user must act on (credentials, a rate limit too long to wait for, ...)."""


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    value = (headers or {}).get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


@dataclass
class Patience:
    """Bounded retrying for 429 (rate limit: wait Retry-After) and 5xx (back off). Counts what it did."""

    max_retries: int = MAX_RETRIES
    max_wait: float = MAX_WAIT_SECONDS
    default_wait: float = DEFAULT_WAIT_SECONDS
    sleep: Callable[[float], None] = time.sleep
    log: Callable[[str], None] = print
    rate_limited: int = 0
    waited: float = 0.0

    def wait_or_raise(self, status: int, headers: Mapping[str, str] | None, attempt: int, what: str) -> None:
        if attempt >= self.max_retries:
            raise SpotifyError(f"{what}: HTTP {status} after {attempt} retries; progress is saved, run again later to resume")
        wait = _retry_after(headers)
        if wait is None:
            wait = self.default_wait * 2**attempt
        if wait > self.max_wait:
            raise SpotifyError(
                f"{what}: Spotify asked to wait {wait:.0f} s (more than --max-wait {self.max_wait:.0f} s); "
                "progress is saved, run the same command again later to resume"
            )
        if status == 429:
            self.rate_limited += 1
        self.log(f"  HTTP {status} on {what}: waiting {wait:.1f} s (retry {attempt + 1}/{self.max_retries})")
        self.waited += wait
        self.sleep(wait)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from spotipy.exceptions import SpotifyException

        attempt = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except SpotifyException as e:
                if e.http_status != 429 and not 500 <= e.http_status < 600:
                    raise
                self.wait_or_raise(e.http_status, e.headers, attempt, what)
                attempt += 1

    def get(self, session: Any, url: str, what: str) -> bytes:
        attempt = 0
        while True:
            r = session.get(url, timeout=TIMEOUT_SECONDS)
            if r.status_code == 429 or 500 <= r.status_code < 600:
                self.wait_or_raise(r.status_code, r.headers, attempt, what)
                attempt += 1
                continue
            r.raise_for_status()
            return r.content


def make_client(token: str | None = None, api_url: str | None = None) -> Any:
    """A spotipy client: client credentials from SPOTIPY_CLIENT_ID/SPOTIPY_CLIENT_SECRET unless a token is given.

    Retries are off inside spotipy (a plain requests.Session) so that 429s reach `Patience` with their Retry-After
    header: spotipy's own urllib3 retry would sleep whatever Spotify asks, sometimes hours, without saying so.
    """
    import logging

    import requests
    import spotipy
    from spotipy.oauth2 import SpotifyClientCredentials

    # spotipy logs every HTTP error at ERROR level; 429s, 404s on editorial playlists etc. are handled and reported
    # here, so its log would only be noise.
    logging.getLogger("spotipy.client").setLevel(logging.CRITICAL)
    if token:
        sp = spotipy.Spotify(auth=token, requests_session=requests.Session(), requests_timeout=TIMEOUT_SECONDS)
    else:
        missing = [v for v in ("SPOTIPY_CLIENT_ID", "SPOTIPY_CLIENT_SECRET") if not os.environ.get(v)]
        if missing:
            raise SpotifyError(
                f"Spotify credentials missing: set {' and '.join(missing)} (create an app at "
                "https://developer.spotify.com/dashboard), or pass --token"
            )
        sp = spotipy.Spotify(
            auth_manager=SpotifyClientCredentials(), requests_session=requests.Session(), requests_timeout=TIMEOUT_SECONDS
        )
    if api_url:
        sp.prefix = api_url.rstrip("/") + "/"
    return sp


@dataclass
class Report:
    """What a build did, in numbers (printed at the end, and returned for tests)."""

    playlists: dict[str, int] = field(default_factory=dict)  # per mood
    playlists_unavailable: list[str] = field(default_factory=list)
    tracks_found: int = 0
    skipped_items: int = 0  # episodes, local files, removed tracks
    conflicts: int = 0
    conflicts_dropped: int = 0
    no_preview: int = 0
    downloaded: int = 0
    already_present: int = 0
    failed: int = 0
    per_mood: dict[str, int] = field(default_factory=dict)  # clips in the manifest
    rate_limited: int = 0
    manifest: str = ""

    def lines(self) -> list[str]:
        out = [
            "playlists per mood: " + ", ".join(f"{m} {n}" for m, n in self.playlists.items()),
            f"unique tracks found: {self.tracks_found} (skipped {self.skipped_items} episodes/local/removed items)",
            f"tracks under two or more moods: {self.conflicts}"
            + (f" (dropped {self.conflicts_dropped}; listed in {CONFLICTS_FILE})" if self.conflicts else ""),
            f"previews: {self.downloaded} downloaded, {self.already_present} already present, {self.failed} failed",
            f"tracks WITHOUT a preview_url: {self.no_preview} of {self.tracks_found - self.conflicts_dropped}"
            + (f" - {NO_PREVIEW_REASON}" if self.no_preview else ""),
            "clips in the manifest: " + ", ".join(f"{m} {n}" for m, n in self.per_mood.items()),
        ]
        if self.playlists_unavailable:
            out.insert(1, f"playlists Spotify refused (403/404, e.g. editorial playlists for new apps): {len(self.playlists_unavailable)}")
        if self.rate_limited:
            out.append(f"rate limited (429) {self.rate_limited} time(s); waited as asked")
        return out


class SpotifyBuilder:
    """Builds ROOT/<mood>/<track_id>.mp3 + ROOT/manifest.csv from Spotify playlist searches, resumably."""

    def __init__(
        self,
        sp: Any,
        root: str | Path,
        queries: Mapping[str, Sequence[str]] = DEFAULT_QUERIES,
        playlists_per_query: int = 10,
        max_tracks_per_playlist: int | None = None,
        max_per_mood: int | None = None,
        market: str | None = None,
        conflicts: str = "drop",
        patience: Patience | None = None,
        session: Any = None,
        log: Callable[[str], None] = print,
        progress: bool = True,
    ) -> None:
        import requests

        if conflicts not in CONFLICT_POLICIES:
            raise SpotifyError(f"conflict policy must be one of {CONFLICT_POLICIES}")
        self.sp = sp
        self.root = Path(root)
        self.queries = {m: list(q) for m, q in queries.items()}
        self.playlists_per_query = playlists_per_query
        self.max_tracks_per_playlist = max_tracks_per_playlist
        self.max_per_mood = max_per_mood
        self.market = market
        self.conflicts = conflicts
        self.log = log
        self.patience = patience or Patience(log=log)
        self.session = session or requests.Session()
        self.progress = progress
        self.state_path = self.root / STATE_FILE
        self.state = self._load_state()

    # -- state ------------------------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        empty = {"version": STATE_VERSION, "searched": [], "playlists": {}, "done": [], "unavailable": [], "tracks": {}}
        if not self.state_path.is_file():
            return empty
        try:
            state = json.loads(self.state_path.read_text())
        except json.JSONDecodeError:
            self.log(f"{self.state_path}: unreadable state file, starting over (downloaded files are still reused)")
            return empty
        if state.get("version") != STATE_VERSION:
            return empty
        self.log(f"resuming from {self.state_path}: {len(state['done'])} playlists done, {len(state['tracks'])} tracks known")
        return state

    def _save_state(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        tmp.replace(self.state_path)

    # -- collection -------------------------------------------------------------------------------------------
    def search_playlists(self) -> None:
        """Top N playlists per (mood, query), de-duplicated within a mood."""
        for mood, queries in self.queries.items():
            found = self.state["playlists"].setdefault(mood, [])
            known = {p["id"] for p in found}
            for query in queries:
                key = f"{mood}\t{query}"
                if key in self.state["searched"]:
                    continue
                offset, taken = 0, 0
                while taken < self.playlists_per_query:
                    limit = min(SEARCH_PAGE, self.playlists_per_query - taken)
                    res = self.patience.call(
                        f"search {query!r}", self.sp.search, q=query, limit=limit, offset=offset, type="playlist", market=self.market
                    )
                    page = (res or {}).get("playlists") or {}
                    items = page.get("items") or []
                    for pl in items:
                        taken += 1
                        if pl and pl.get("id") and pl["id"] not in known:  # the API returns null entries nowadays
                            known.add(pl["id"])
                            found.append({"id": pl["id"], "name": pl.get("name") or pl["id"]})
                    offset += len(items)
                    if not items or not page.get("next"):
                        break
                self.state["searched"].append(key)
                self._save_state()

    def collect_tracks(self) -> int:
        """Page through every playlist's items; returns how many items were skipped (episodes, local, removed)."""
        from spotipy.exceptions import SpotifyException

        skipped = 0
        tracks: dict[str, Any] = self.state["tracks"]
        todo = [(m, p) for m, pls in self.state["playlists"].items() for p in pls if f"{m}\t{p['id']}" not in self.state["done"]]
        for mood, pl in self._bar(todo, "playlists"):
            taken = 0
            try:
                res = self.patience.call(
                    f"playlist {pl['id']}", self.sp.playlist_items, pl["id"], limit=ITEMS_PAGE, market=self.market,
                    additional_types=("track",),
                )
                while res:
                    for item in res.get("items") or []:
                        t = (item or {}).get("track") or (item or {}).get("item")
                        if not t or t.get("type", "track") != "track" or not t.get("id") or t.get("is_local"):
                            skipped += 1
                            continue
                        if self.max_tracks_per_playlist is not None and taken >= self.max_tracks_per_playlist:
                            break
                        taken += 1
                        rec = tracks.setdefault(t["id"], {
                            "name": t.get("name") or "",
                            "artists": [a.get("name") or "" for a in t.get("artists") or []],
                            "preview_url": t.get("preview_url"),
                            "moods": [],
                            "playlists": [],
                        })
                        if t.get("preview_url") and not rec["preview_url"]:
                            rec["preview_url"] = t["preview_url"]
                        if mood not in rec["moods"]:
                            rec["moods"].append(mood)
                        if pl["name"] not in rec["playlists"]:
                            rec["playlists"].append(pl["name"])
                    full = self.max_tracks_per_playlist is not None and taken >= self.max_tracks_per_playlist
                    res = None if full or not res.get("next") else self.patience.call(
                        f"playlist {pl['id']} (next page)", self.sp.next, res
                    )
            except SpotifyException as e:
                if e.http_status not in (403, 404):
                    raise
                self.log(f"  playlist {pl['name']!r} ({pl['id']}): HTTP {e.http_status}, skipped")
                self.state["unavailable"].append(pl["id"])
            self.state["done"].append(f"{mood}\t{pl['id']}")
            self._save_state()
        return skipped

    # -- labels and downloads ---------------------------------------------------------------------------------
    def labelled(self) -> tuple[dict[str, str], list[str]]:
        """track id -> mood, and the ids found under two or more moods (dropped or kept under the first)."""
        labels, conflicting = {}, []
        for tid, t in self.state["tracks"].items():
            moods = [m for m in t["moods"] if m in self.queries]
            if not moods:
                continue
            if len(moods) > 1:
                conflicting.append(tid)
                if self.conflicts == "drop":
                    continue
            labels[tid] = moods[0]
        return labels, conflicting

    def path_for(self, tid: str, mood: str) -> Path:
        return self.root / mood / f"{tid}.mp3"

    def download(self, labels: Mapping[str, str], report: Report) -> list[str]:
        """Fetch missing previews (to .part, then rename, so an interrupted file is never mistaken for a clip)."""
        kept: list[str] = []
        per_mood: dict[str, int] = {m: 0 for m in self.queries}
        for tid, mood in self._bar(list(labels.items()), "previews"):
            if self.max_per_mood is not None and per_mood[mood] >= self.max_per_mood:
                continue
            path = self.path_for(tid, mood)
            url = self.state["tracks"][tid]["preview_url"]
            if path.is_file() and path.stat().st_size > 0:
                report.already_present += 1
            elif not url:
                report.no_preview += 1
                continue
            else:
                try:
                    data = self.patience.get(self.session, url, f"preview of {tid}")
                except SpotifyError:
                    raise
                except Exception as e:  # network errors, 403 on an expired preview link: count and go on
                    self.log(f"  preview of {tid} failed: {e}")
                    report.failed += 1
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                part = path.with_suffix(".part")
                part.write_bytes(data)
                part.replace(path)
                report.downloaded += 1
            per_mood[mood] += 1
            kept.append(tid)
        return kept

    def write_outputs(self, kept: Sequence[str], labels: Mapping[str, str], conflicting: Sequence[str], out: Path | None) -> Path:
        tracks = self.state["tracks"]
        rows = []
        for tid in kept:
            t = tracks[tid]
            rows.append({
                "file": str(self.path_for(tid, labels[tid]).resolve()),
                "label": labels[tid],
                "group": t["artists"][0] if t["artists"] else tid,
                "source": SOURCE,
                "track_id": tid,
                "track": t["name"],
                "artists": "; ".join(t["artists"]),
                "playlist": "; ".join(t["playlists"]),
            })
        manifest = self._write_rows(rows, self.root / MANIFEST_FILE)
        if out is not None:
            self._write_rows(rows, out)
        with open(self.root / CONFLICTS_FILE, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["track_id", "track", "artists", "moods", "kept_as"])
            for tid in conflicting:
                t = tracks[tid]
                w.writerow([tid, t["name"], "; ".join(t["artists"]), "; ".join(t["moods"]), labels.get(tid, "-")])
        return manifest

    @staticmethod
    def _write_rows(rows: Sequence[dict[str, str]], path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        base = path.resolve().parent
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS))
            w.writeheader()
            for r in rows:
                w.writerow({**r, "file": os.path.relpath(r["file"], base)})
        return path

    def _bar(self, seq: list, desc: str) -> Any:
        if not self.progress:
            return seq
        from tqdm import tqdm

        return tqdm(seq, desc=desc, unit="", leave=False, file=sys.stderr)

    def run(self, out: str | Path | None = None) -> Report:
        report = Report()
        self.search_playlists()
        report.skipped_items = self.collect_tracks()
        report.playlists = {m: len(self.state["playlists"].get(m, [])) for m in self.queries}
        report.playlists_unavailable = list(self.state["unavailable"])
        labels, conflicting = self.labelled()
        report.tracks_found = sum(1 for t in self.state["tracks"].values() if any(m in self.queries for m in t["moods"]))
        report.conflicts = len(conflicting)
        report.conflicts_dropped = len(conflicting) if self.conflicts == "drop" else 0
        kept = self.download(labels, report)
        report.per_mood = {m: sum(1 for tid in kept if labels[tid] == m) for m in self.queries}
        report.manifest = str(self.write_outputs(kept, labels, conflicting, Path(out) if out else None))
        report.rate_limited = self.patience.rate_limited
        return report


def parse_queries(pairs: Sequence[str]) -> dict[str, list[str]]:
    """["happy=happy hits", "happy=feel good", "sad=sad songs"] -> {"happy": [...], "sad": [...]}."""
    if not pairs:
        return {m: list(q) for m, q in DEFAULT_QUERIES.items()}
    queries: dict[str, list[str]] = {}
    for pair in pairs:
        mood, sep, query = pair.partition("=")
        if not sep or not mood.strip() or not query.strip():
            raise SpotifyError(f"--query {pair!r}: expected MOOD=SEARCH TEXT")
        queries.setdefault(mood.strip(), []).append(query.strip())
    return queries


def _add_client_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token", default=os.environ.get("SPOTIPY_ACCESS_TOKEN"),
                   help="a ready access token instead of client credentials (default: $SPOTIPY_ACCESS_TOKEN)")
    p.add_argument("--api-url", default=API_URL, help=f"Web API base URL (default {API_URL}; tests point it at a local fake)")
    p.add_argument("--market", help="ISO country code; previews and availability depend on it")
    p.add_argument("--max-retries", type=int, default=MAX_RETRIES, help=f"retries per request on 429/5xx (default {MAX_RETRIES})")
    p.add_argument("--max-wait", type=float, default=MAX_WAIT_SECONDS,
                   help=f"longest Retry-After to honour, in seconds; longer stops the run with progress saved (default {MAX_WAIT_SECONDS:.0f})")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `python -m training dataset spotify`."""
    p.add_argument("root", help="folder for ROOT/<mood>/<track_id>.mp3, manifest.csv, conflicts.csv and the resume state")
    p.add_argument("--out", help="also write the manifest here (paths relative to it)")
    p.add_argument("--query", action="append", default=[], metavar="MOOD=TEXT",
                   help="a playlist search for a mood (repeatable; default: each of happy, angry, sad, calm searched by its name)")
    p.add_argument("--playlists", type=int, default=10, help="top N playlists per query (default 10)")
    p.add_argument("--max-tracks-per-playlist", type=int, help="take at most this many tracks from each playlist")
    p.add_argument("--max-per-mood", type=int, help="download at most this many previews per mood (class balance)")
    p.add_argument("--conflicts", choices=CONFLICT_POLICIES, default="drop",
                   help="tracks found under two moods: drop them (default) or keep them under the first mood; "
                   f"either way they are listed in ROOT/{CONFLICTS_FILE}")
    _add_client_arguments(p)


def _spotify_errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn spotipy/requests failures (bad credentials, unknown track, no network) into one clear line, no traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        import requests
        from spotipy.exceptions import SpotifyException
        from spotipy.oauth2 import SpotifyOauthError

        try:
            return fn(args)
        except SpotifyOauthError as e:
            raise SpotifyError(f"Spotify refused the credentials (SPOTIPY_CLIENT_ID/SPOTIPY_CLIENT_SECRET): {e}") from None
        except SpotifyException as e:
            raise SpotifyError(f"Spotify Web API error {e.http_status}: {e.msg}") from None
        except requests.RequestException as e:
            raise SpotifyError(f"cannot reach Spotify: {e}") from None

    return wrapper


@_spotify_errors
def run(args: argparse.Namespace) -> int:
    sp = make_client(args.token, args.api_url)
    builder = SpotifyBuilder(
        sp, args.root, parse_queries(args.query), playlists_per_query=args.playlists,
        max_tracks_per_playlist=args.max_tracks_per_playlist, max_per_mood=args.max_per_mood, market=args.market,
        conflicts=args.conflicts, patience=Patience(max_retries=args.max_retries, max_wait=args.max_wait),
    )
    report = builder.run(args.out)
    for line in report.lines():
        print(line)
    print(f"manifest: {report.manifest}" + (f" (and {args.out})" if args.out else ""))
    if sum(report.per_mood.values()) == 0:
        print("no audio could be downloaded, so there is no dataset to train on"
              + (f": {NO_PREVIEW_REASON}" if report.no_preview else ""), file=sys.stderr)
        return 1
    return 0


# -- the old flow: one track's mood ------------------------------------------------------------------------------


def predict_description() -> str:
    return (
        "Fetch one track's 30 s preview from Spotify (if it offers one) and print the mood the model hears, using\n"
        "the runtime's own model loader and analysis pipeline (the same windows the server analyses).\n\n"
        "Spotify returns no preview (preview_url is null) for most tracks to apps created after 27 November 2024;\n"
        "then this says so and exits with status 3. Exit status 1: credentials, network or Web API errors.\n"
        "Credentials: SPOTIPY_CLIENT_ID/SPOTIPY_CLIENT_SECRET (client credentials) or --token."
    )


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("track", help="a track ID, spotify:track:URI or open.spotify.com URL")
    p.add_argument("--model", help="ONNX model (default: the shipped exported_models/mood_cnn.onnx)")
    p.add_argument("--hop", type=float, help="seconds between analysed windows (default: the runtime's config)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_client_arguments(p)


@dataclass(frozen=True)
class TrackMood:
    track_id: str
    name: str
    artists: list[str]
    analysis: dict[str, Any]  # `sendreturn_mood.room.offline.analyze_file`'s summary of the preview (without the timeline)

    def text(self) -> str:
        a = self.analysis
        probs = ", ".join(f"{k} {v:.2f}" for k, v in sorted(a["probabilities"].items(), key=lambda kv: -kv[1]))
        line = (f"{self.name} - {', '.join(self.artists)}: {a['mood']} (valence {a['valence']:+.2f}, "
                f"arousal {a['arousal']:+.2f}; {probs}; {a['windows']} windows of the 30 s preview)")
        if "genre" in a:
            line += f"; genre {a['genre']['label']}"
        return line


class NoPreview(SpotifyError):
    """Spotify knows the track but offers no 30 s preview of it."""


def predict_track(sp: Any, track: str, model: Any, market: str | None = None, hop_seconds: float | None = None,
                  patience: Patience | None = None, session: Any = None) -> TrackMood:
    """Track -> its preview -> mood, through the runtime's own `analyze` path (the windows a room would see).

    Raises NoPreview with a clear message when Spotify has no preview for the track.
    """
    import requests

    from sendreturn_mood.room.offline import analyze_file
    from sendreturn_mood.config import load_config

    patience = patience or Patience()
    t = patience.call(f"track {track}", sp.track, track, market=market)
    artists = [a.get("name") or "" for a in t.get("artists") or []]
    if not t.get("preview_url"):
        raise NoPreview(
            f"Spotify offers no 30 s preview for {t.get('name')!r} by {', '.join(artists)} (preview_url is null): "
            f"{NO_PREVIEW_REASON}. Analyse the audio itself instead: python -m sendreturn_mood analyze FILE"
        )
    data = patience.get(session or requests.Session(), t["preview_url"], f"preview of {t['id']}")
    config = load_config(None, {"analysis.hop_seconds": hop_seconds} if hop_seconds else None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{t['id']}.mp3"
        path.write_bytes(data)
        result = analyze_file(path, model, config)
    result.pop("timeline", None)
    result.pop("file", None)
    return TrackMood(track_id=t["id"], name=t.get("name") or "", artists=artists, analysis=result)


@_spotify_errors
def run_predict(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from sendreturn_mood.model.contract import MoodModel

    model = MoodModel(args.model, threads=1)
    sp = make_client(args.token, args.api_url)
    try:
        result = predict_track(sp, args.track, model, args.market, args.hop,
                               Patience(max_retries=args.max_retries, max_wait=args.max_wait))
    except NoPreview as e:
        print(str(e), file=sys.stderr)
        return 3
    print(json.dumps(asdict(result), indent=2) if args.json else result.text())
    return 0
