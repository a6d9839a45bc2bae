"""Which asyncio event loop runs the server: uvloop when it is installed (`server.event_loop: auto`), else asyncio's.

Why: at a few hundred rooms most of the event loop's own time is socket reads and writes and callback scheduling,
which uvloop (libuv) does in C; the server code is the same on both (docs/PERFORMANCE.md has the measured
difference). uvloop is a dependency where it builds (not on Windows); `auto` falls back to asyncio's loop without it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine

from ..config import EVENT_LOOPS as LOOPS
from ..errors import SendReturnError


class EventLoopError(SendReturnError, ValueError):
    """`server.event_loop: uvloop` without uvloop installed."""


def resolve(name: str) -> str:
    """The loop `name` stands for here: 'uvloop' or 'asyncio'. Raises EventLoopError for uvloop without uvloop."""
    if name not in LOOPS:
        raise EventLoopError(f"server.event_loop must be one of {', '.join(LOOPS)}, got {name!r}")
    if name == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if name == "uvloop":
            raise EventLoopError("server.event_loop is 'uvloop' but uvloop is not installed (pip install uvloop)") from None
        return "asyncio"
    return "uvloop"


def run(name: str, main: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run(main) on the loop `name` resolves to."""
    if resolve(name) == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
