"""The README's runtime install, for real: `pip install .` (not editable) into a fresh venv, then the commands run
from the repository root (where `python -m` finds the source folder first) and from elsewhere (where it finds the
installed package). Both must find the shipped models, schemas and page.

The fresh venv sees this interpreter's site-packages through a .pth file, for the dependencies only (a plain path,
so none of their .pth hooks run: an editable install of this project there stays invisible), and the package is
installed with --no-deps --no-build-isolation: no download, a few seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.cluster_support import RedisServer

REPO = Path(__file__).resolve().parent.parent
COPY_IGNORED = (".git", "__pycache__", "build", "*.egg-info", "node_modules", ".pytest_cache", "docs", "tests")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    source = tmp_path_factory.mktemp("source") / "checkout"  # setuptools builds in the tree: a copy, not this one
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(*COPY_IGNORED))
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q", str(source)],
        capture_output=True, text=True, timeout=600, cwd=source.parent, env=env_for(root),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def env_for(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return dict(env, OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1", PATH=f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}")


def run(venv: Path, cwd: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "python"), "-m", "sendreturn_mood", *args], cwd=cwd, env=env_for(venv),
                          capture_output=True, text=True, timeout=timeout)


def installed_package(venv: Path) -> Path:
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import sendreturn_mood; print(sendreturn_mood.__file__)"],
                         cwd="/", env=env_for(venv), capture_output=True, text=True, check=True).stdout.strip()
    return Path(out).parent


def places(tmp_path: Path) -> list[Path]:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return [REPO, elsewhere]


def test_the_installed_package_is_the_wheel_not_the_checkout(venv):
    package = installed_package(venv)
    assert REPO not in package.parents and (package / "exported_models" / "mood_cnn.onnx").is_file()
    assert (package / "schema" / "v1" / "mood.json").is_file() and (package / "static" / "client" / "index.js").is_file()


def test_models_and_analyze_from_the_repository_root_and_elsewhere(venv, tmp_path):
    song = tmp_path / "tone.wav"
    t = np.arange(int(6 * 22050)) / 22050
    sf.write(song, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 22050)
    for place in places(tmp_path):
        listed = run(venv, place, "models", "--json")
        assert listed.returncode == 0, (place, listed.stderr)
        names = [Path(row["file"]).stem for row in json.loads(listed.stdout)]
        assert "mood_cnn" in names
        one = run(venv, place, "models", names[-1])
        assert one.returncode == 0 and f"{names[-1]}.onnx" in one.stdout, (place, one.stderr)
        analysed = run(venv, place, "analyze", str(song), "--json", "--model", "mood_cnn")
        assert analysed.returncode == 0, (place, analysed.stderr)
        assert json.loads(analysed.stdout)["mood"]


def serve(venv: Path, cwd: Path, *args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([str(venv / "bin" / "python"), "-m", "sendreturn_mood", "serve", "--port", "0", *args],
                            cwd=cwd, env=env_for(venv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line.startswith("listening on "):
        proc.kill()
        raise AssertionError(f"serve {args} in {cwd} did not start: {line!r} {proc.stderr.read()}")  # type: ignore[union-attr]
    return proc, int(line.split()[2].split(":")[-1])


def get(port: int, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as r:
        return r.status, r.read()


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        proc.kill()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_serve_by_model_name_and_with_workers_from_the_repository_root_and_elsewhere(venv, tmp_path):
    redis = RedisServer().start()
    try:
        for place in places(tmp_path):
            for args in (["--model", "mood_cnn"], ["--workers", "2", "--broker", redis.url]):
                proc, port = serve(venv, place, *args)
                try:
                    status, body = get(port, "/healthz")
                    assert status == 200 and json.loads(body)["model"]["name"], (place, args)
                    assert get(port, "/client/index.js")[0] == 200
                finally:
                    assert stop(proc) == 0, (place, args)
    finally:
        redis.stop()
