"""Shared fixtures: the real-music folder, a tiny model."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

# A shell starts a background job (`pytest &`, nohup) with SIGINT ignored, and child processes inherit that: the
# examples and servers the tests start would then ignore the Ctrl-C the tests send them (asyncio.run only installs its
# SIGINT handler where Python's default one is in place). Give the children a normal Ctrl-C however pytest started.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data_or_skip(sub: str = "") -> Path:
    """../shared/data (or a sub-folder); skip the test with a clear reason when it is absent."""
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real music data not found at {path} (it lives beside the repository in ../shared/data)")
    return path


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")
