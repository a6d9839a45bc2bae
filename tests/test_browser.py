"""The page served at `/`, in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no browser
download). Chromium's fake media flags feed a real song as the microphone; the page's AudioWorklet streams it to a
real `python -m sendreturn_mood serve` (subprocess, the tiny test model), and the test checks what a person would
see (mood updates, bars, plane, effects), that the server got audio for that room (a protocol v1 listener in the
test hears the room, and the room summary counts audio seconds), that a second tab can listen to the same room, and
that a refused connection is explained on the page.

SENDRETURN_SCREENSHOT=docs/screenshot.png python -m pytest tests/test_browser.py   # also saves the page picture
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf

from tests.conftest import REPO, shared_data_or_skip
from tests.server_support import checked
from tests.test_examples import start_server

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ROOM = "browser-test"
SONG = "Q1"  # a happy/energetic quadrant clip: a lively picture for the screenshot
FAKE_MIC_RATE = 48000
UPDATE_TIMEOUT_MS = 45000
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
CONFIG = """
analysis:
  hop_seconds: 0.5
"""


def chromium_or_skip() -> str:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not path:
        pytest.skip("Chromium not installed (apt-get install chromium; .ci/run installs it)")
    return path


def fake_microphone(tmp_path: Path) -> Path:
    """A real song as a 16-bit WAV at 48 kHz, for --use-file-for-fake-audio-capture (Chromium loops it)."""
    import soxr

    song = sorted(shared_data_or_skip(f"moods-4q/{SONG}").glob("*.mp3"))[0]
    audio, rate = sf.read(song, dtype="float32")
    path = tmp_path / "microphone.wav"
    sf.write(path, soxr.resample(audio, rate, FAKE_MIC_RATE), FAKE_MIC_RATE, subtype="PCM_16")
    return path


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def listen_once(ws_url: str, room: str) -> tuple[dict, dict]:
    """A protocol v1 listener: (welcome, first mood update) for the room."""
    from websockets.sync.client import connect

    with connect(f"{ws_url}/v1/rooms/{room}", compression=None, proxy=None, open_timeout=10) as ws:
        welcome = checked(json.loads(ws.recv(timeout=10)))
        while True:
            msg = checked(json.loads(ws.recv(timeout=15)))
            if msg["type"] == "mood":
                return welcome, msg


def model_for_the_run(tiny_model_path: Path) -> Path:
    """The tiny test model; the shipped model when making the docs picture (if it has landed), so the picture
    shows the real product."""
    if os.environ.get("SENDRETURN_SCREENSHOT"):
        from sendreturn_mood.model.contract import default_model_path

        if Path(default_model_path()).is_file():
            return Path(default_model_path())
    return tiny_model_path


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    config = tmp_path_factory.mktemp("server") / "server.yaml"
    config.write_text(CONFIG)
    proc, url = start_server(model_for_the_run(tiny_model_path), config)
    yield url
    proc.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """One headless Chromium for the module (starting it is the slow part); each test opens its own tabs."""
    tmp_path = tmp_path_factory.mktemp("chromium")
    executable = chromium_or_skip()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    mic = fake_microphone(tmp_path)
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile every run
            executable_path=executable,
            headless=True,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={mic}"],
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


def watch(page) -> list[str]:
    """Collect the page's uncaught errors, so a broken script fails the test with its message."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def test_page_streams_the_microphone_and_shows_the_room_mood(server: str, browser) -> None:
    http = server.replace("ws://", "http://")
    page = browser.new_page()
    page_errors = watch(page)
    page.goto(f"{http}/?room={ROOM}")
    assert page.title().startswith("sendreturn-mood")
    assert page.input_value("#role") == "mic"
    assert page.is_hidden("#file-field"), "the file picker is only for the file role"
    page.click("#connect")

    # the page shows mood updates coming from the server
    page.wait_for_function("window.sendreturnMood.updates >= 3", timeout=UPDATE_TIMEOUT_MS)
    state = page.evaluate(
        "(() => { const s = window.sendreturnMood; return {rate: s.audio.rate, sent: s.sentSamples, "
        "updates: s.updates, errors: s.errors, last: s.last, moods: s.moods.map((m) => m.label)}; })()"
    )
    last = state["last"]
    assert last["type"] == "mood" and last["room"] == ROOM
    assert len(state["moods"]) >= 2 and "happy" in state["moods"]  # from the welcome message
    assert page.inner_text("#mood").lower() == last["mood"] or int(page.inner_text("#update-count")) > 3
    assert page.inner_text("#mood").lower() in state["moods"]
    assert "connected to browser-test as source" in page.inner_text("#status")
    assert page.locator("#bars .bar-row").count() == len(state["moods"])
    assert page.locator("#effects tr[data-effect]").count() == len(last["effects"]) > 0
    assert page.locator("#scene-legend span").count() >= 5
    assert state["sent"] / state["rate"] >= 3.0, "the worklet sent at least a window of audio"
    assert state["errors"] == 0 and page.locator("#errors").is_hidden()
    welcome_audio = page.evaluate("window.sendreturnMood.audio.rate")
    assert welcome_audio == 16000  # the model's rate: the worklet downmixes and resamples the 48 kHz microphone
    context_rate = page.evaluate("window.sendreturnMood.audio.capture.context.sampleRate")
    assert context_rate in (44100, 48000)  # while the AudioContext (what the speakers play) keeps the device's rate

    # the server received audio for that room: a protocol listener hears its updates, the room summary counts it
    welcome, update = listen_once(server, ROOM)
    assert welcome["role"] == "listener" and welcome["room"] == ROOM
    assert update["room"] == ROOM and update["stream_time"] > 3.0
    room = get_json(f"{http}/v1/rooms/{ROOM}")
    assert room["source"] is True and room["audio_seconds"] >= 3.0

    # a second tab joins the same room as listener only and sees the same updates
    tab = browser.new_page()
    tab_errors = watch(tab)
    tab.goto(f"{http}/?room={ROOM}&role=listener&connect=1")
    tab.wait_for_function("window.sendreturnMood.updates >= 2", timeout=UPDATE_TIMEOUT_MS)
    assert "as listener" in tab.inner_text("#status")
    assert tab.evaluate("window.sendreturnMood.audio") is None, "a listener captures no audio"
    assert tab.is_hidden("#sent") and tab.inner_text("#source-state") == "connected"
    seq_tab = tab.evaluate("window.sendreturnMood.last.seq")
    page.wait_for_function(f"window.sendreturnMood.last.seq >= {seq_tab}", timeout=10000)
    assert tab.inner_text("#mood").lower() in state["moods"]

    if target := os.environ.get("SENDRETURN_SCREENSHOT"):
        page.wait_for_timeout(2500)  # let the trail grow and the scene ease in
        page.screenshot(path=str(REPO / target), full_page=True)

    # disconnecting is clean: the server sees the source leave, the listener tab is told
    page.click("#disconnect")
    tab.wait_for_function("document.getElementById('source-state').textContent === 'disconnected'", timeout=10000)
    assert page_errors == [] and tab_errors == []


def test_page_streams_a_local_file_as_a_track(server: str, browser, tmp_path: Path) -> None:
    """Role "audio file": the page plays the file (the person hears it), streams it, and names the track."""
    http = server.replace("ws://", "http://")
    song = fake_microphone(tmp_path)  # any real audio file will do
    page = browser.new_page()
    errors = watch(page)
    page.goto(f"{http}/?room=file-room")
    page.select_option("#role", "file")
    assert page.is_visible("#file")
    page.set_input_files("#file", str(song))
    page.click("#connect")
    page.wait_for_function("window.sendreturnMood.updates >= 2", timeout=UPDATE_TIMEOUT_MS)
    last = page.evaluate("window.sendreturnMood.last")
    assert last["room"] == "file-room" and last["track"]["id"] == f"file:{song.name}"
    assert page.inner_text("#track") == song.stem
    assert page.evaluate("!document.getElementById('player').paused")
    # pausing the player stops the audio: a paused source sends nothing
    page.evaluate("document.getElementById('player').pause()")
    page.wait_for_timeout(300)
    sent = page.evaluate("window.sendreturnMood.sentSamples")
    page.wait_for_timeout(800)
    assert page.evaluate("window.sendreturnMood.sentSamples") == sent
    page.click("#disconnect")
    assert errors == []


def test_page_explains_a_refused_connection(server: str, browser) -> None:
    """A second source for a busy room is refused (409 source_taken): the page says so and does not spin."""
    http = server.replace("ws://", "http://")
    first = browser.new_page()
    first.goto(f"{http}/?room=busy")
    first.click("#connect")
    first.wait_for_function("window.sendreturnMood.opened", timeout=UPDATE_TIMEOUT_MS)
    second = browser.new_page()
    errors = watch(second)
    second.goto(f"{http}/?room=busy")
    second.click("#connect")
    second.wait_for_selector("#errors:not([hidden])", timeout=15000)
    text = second.inner_text("#error-list")
    assert "source_taken" in text and "listener" in text
    assert "refused" in second.inner_text("#status")
    assert second.is_enabled("#connect"), "the person can try again"

    # a bad room name is caught on the page before anything is sent
    second.fill("#room", "no spaces")
    second.click("#connect")
    second.wait_for_function("document.getElementById('error-list').textContent.includes('room name')")
    assert errors == []
