"""The Spotify dataset builder and `spotify-predict` against a local fake of the Web API (tests/fake_spotify.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import soundfile as sf

from tests.fake_spotify import PREVIEW_SECONDS, TOKEN, FakeSpotify
from training.__main__ import main
from training.manifest import read_manifest
from training.spotify import NO_PREVIEW_REASON, Patience, SpotifyBuilder, SpotifyError, make_client

QUERIES = {"happy": ["happy"], "sad": ["sad"]}


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def previews(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake's MP3 files, written once for the module."""
    return tmp_path_factory.mktemp("previews")


@pytest.fixture
def fake(previews: Path):
    with FakeSpotify(previews) as f:
        yield f


def build(fake: FakeSpotify, root: Path, waits: list[float] | None = None, **kw) -> tuple[SpotifyBuilder, object]:
    sleeps = waits if waits is not None else []
    builder = SpotifyBuilder(
        make_client(TOKEN, fake.api_url), root, QUERIES, playlists_per_query=5,
        patience=Patience(sleep=sleeps.append, log=lambda s: None), log=lambda s: None, progress=False, **kw,
    )
    return builder, builder.run(root / "out.csv")


def test_builder_collects_pages_dedups_drops_conflicts_and_downloads(fake: FakeSpotify, tmp_path: Path) -> None:
    waits: list[float] = []
    root = tmp_path / "ds"
    _, report = build(fake, root, waits)

    # The single 429 was honoured with its Retry-After, and both search and playlist items were paged.
    assert waits == [1.0] and report.rate_limited == 1
    assert any("/v1/search" in r and "offset=2" in r for r in fake.requests)
    assert any("/playlists/plh1/items" in r and "offset=4" in r for r in fake.requests)
    assert report.playlists == {"happy": 3, "sad": 1} and report.playlists_unavailable == ["pled"]
    # h1 h2 h3 h4 both s1 s2 s3: h2 appears in two happy playlists but counts once; episode + removed item skipped.
    assert report.tracks_found == 8 and report.skipped_items == 2
    assert report.conflicts == 1 and report.conflicts_dropped == 1
    assert report.no_preview == 2 and report.downloaded == 5 and report.failed == 0
    assert any("WITHOUT a preview_url: 2" in line and "November 2024" in line for line in report.lines())

    manifest = rows(root / "manifest.csv")
    assert {(r["track_id"], r["label"]) for r in manifest} == {("h1", "happy"), ("h2", "happy"), ("h4", "happy"), ("s1", "sad"), ("s2", "sad")}
    h2 = next(r for r in manifest if r["track_id"] == "h2")
    assert h2["group"] == "Bob" and h2["artists"] == "Bob" and h2["playlist"] == "Happy Hits; Feel Good" and h2["source"] == "spotify"
    conflicts = rows(root / "conflicts.csv")
    assert [(c["track_id"], c["moods"], c["kept_as"]) for c in conflicts] == [("both", "happy; sad", "-")]

    # Both manifests read back through the shared manifest reader, and the files are real 30 s-style previews.
    for manifest in (root / "manifest.csv", root / "out.csv"):
        items = read_manifest(manifest)
        assert sorted(Path(it.file).name for it in items) == ["h1.mp3", "h2.mp3", "h4.mp3", "s1.mp3", "s2.mp3"]
    for it in read_manifest(root / "manifest.csv"):
        assert Path(it.file).parent.name == it.label
        assert sf.info(it.file).duration == pytest.approx(PREVIEW_SECONDS, abs=0.2)
    assert not list(root.rglob("*.part"))


def test_resume_skips_finished_work(fake: FakeSpotify, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    build(fake, root)
    (root / "sad" / "s2.mp3").unlink()  # as if the first run had stopped before this download
    fake.requests.clear()
    _, report = build(fake, root)
    assert fake.requests == ["/previews/s2.mp3"], "a resumed run must not search or page playlists again"
    assert report.already_present == 4 and report.downloaded == 1
    assert sum(report.per_mood.values()) == 5


def test_conflicts_can_keep_the_first_mood(fake: FakeSpotify, tmp_path: Path) -> None:
    _, report = build(fake, tmp_path / "ds", conflicts="first")
    assert report.conflicts == 1 and report.conflicts_dropped == 0
    labels = {r["track_id"]: r["label"] for r in rows(tmp_path / "ds" / "manifest.csv")}
    assert labels["both"] == "happy"
    assert rows(tmp_path / "ds" / "conflicts.csv")[0]["kept_as"] == "happy"


def test_long_retry_after_stops_with_progress_saved(previews: Path, tmp_path: Path) -> None:
    with FakeSpotify(previews, retry_after="3600") as fake:
        with pytest.raises(SpotifyError, match="wait 3600 s.*run the same command again"):
            build(fake, tmp_path / "ds")
    state = json.loads((tmp_path / "ds" / ".spotify_state.json").read_text())
    assert state["searched"] == ["happy\thappy", "sad\tsad"]


def test_spotipy_default_retry_client_is_handled(fake: FakeSpotify, tmp_path: Path) -> None:
    """The plain `Spotify(auth=..., retries=0)` turns a 429 into an exception without headers: back off anyway."""
    import spotipy

    sp = spotipy.Spotify(auth=TOKEN, retries=0)
    sp.prefix = fake.api_url
    waits: list[float] = []
    builder = SpotifyBuilder(sp, tmp_path / "ds", QUERIES, playlists_per_query=5, log=lambda s: None, progress=False,
                             patience=Patience(sleep=waits.append, default_wait=0.5, log=lambda s: None))
    report = builder.run()
    assert waits == [0.5] and report.downloaded == 5


def test_cli_builds_a_dataset(fake: FakeSpotify, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake.rate_limit_once = None
    out = tmp_path / "spotify.csv"
    rc = main(["dataset", "spotify", str(tmp_path / "ds"), "--token", TOKEN, "--api-url", fake.api_url,
               "--query", "happy=happy", "--query", "sad=sad", "--playlists", "5", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "tracks WITHOUT a preview_url: 2" in printed and NO_PREVIEW_REASON in printed
    assert len(read_manifest(out)) == 5


def test_cli_without_credentials_says_what_to_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for var in ("SPOTIPY_CLIENT_ID", "SPOTIPY_CLIENT_SECRET", "SPOTIPY_ACCESS_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    assert main(["dataset", "spotify", str(tmp_path / "ds")]) == 1
    err = capsys.readouterr().err
    assert "SPOTIPY_CLIENT_ID and SPOTIPY_CLIENT_SECRET" in err


def test_predict_prints_the_mood_of_a_preview(fake: FakeSpotify, tiny_model_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    fake.rate_limit_once = None
    args = ["--model", str(tiny_model_path), "--token", TOKEN, "--api-url", fake.api_url]
    assert main(["spotify-predict", "spotify:track:h1", "--json", *args]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["name"] == "Sunny Day" and result["artists"] == ["Ann"]
    a = result["analysis"]
    assert a["mood"] in ("happy", "angry", "sad", "calm") and a["windows"] >= 1
    assert sum(a["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert -1 <= a["valence"] <= 1 and -1 <= a["arousal"] <= 1
    assert set(a["genre"]["probabilities"]) == {"classical", "electronic", "pop", "rock"}
    # Exactly what the runtime's `analyze` says about the same preview file (one implementation of the audio path).
    from sendreturn_mood.room.offline import analyze_file
    from sendreturn_mood.config import load_config
    from sendreturn_mood.model.contract import MoodModel

    direct = analyze_file(fake.folder / "h1.mp3", MoodModel(tiny_model_path), load_config(None))
    assert {k: v for k, v in direct.items() if k not in ("timeline", "file")} == a

    assert main(["spotify-predict", "h1", *args]) == 0
    assert "Sunny Day - Ann: " in capsys.readouterr().out


def test_predict_without_preview_says_why(fake: FakeSpotify, tiny_model_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["spotify-predict", "h3", "--model", str(tiny_model_path), "--token", TOKEN, "--api-url", fake.api_url])
    err = capsys.readouterr().err
    assert rc == 3
    assert "no 30 s preview for 'Dance Floor' by Cat" in err and "27 November 2024" in err


def test_predict_unknown_track_is_one_clear_line(fake: FakeSpotify, tiny_model_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    fake.rate_limit_once = None
    rc = main(["spotify-predict", "nope", "--model", str(tiny_model_path), "--token", TOKEN, "--api-url", fake.api_url])
    err = capsys.readouterr().err
    assert rc == 1 and "Spotify Web API error 404" in err and "Traceback" not in err


def test_predict_with_a_missing_model_file_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["spotify-predict", "h1", "--model", str(tmp_path / "none.onnx"), "--token", TOKEN])
    err = capsys.readouterr().err
    assert rc == 1 and "no such model file" in err and "Traceback" not in err
