"""The browser page and the JS client: files of `sendreturn_mood/static/` served on plain GETs ('/' = index.html).

Every path segment must be a plain name (no '..', no hidden files, no Python files), so a path stays inside the
folder: no traversal.
"""

from __future__ import annotations

import mimetypes
import re
from importlib import resources
from pathlib import Path
from urllib.parse import unquote

from websockets.http11 import Response

from .. import protocol
from .routing import error_response, response

STATIC_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
STATIC_HIDDEN_SUFFIXES = (".py", ".pyc")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",
}


def static_root() -> Path:
    return Path(str(resources.files("sendreturn_mood.static")))


class StaticFiles:
    """One folder's files as HTTP responses (never cached: the page and client change with the server)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or static_root()).resolve()

    def response(self, path: str) -> Response:
        rel = unquote(path).lstrip("/") or "index.html"
        parts = rel.split("/")
        not_found = error_response(404, protocol.NOT_FOUND, f"nothing at {path[:100]!r}")
        if not all(STATIC_NAME_RE.match(p) and ".." not in p for p in parts) or rel.endswith(STATIC_HIDDEN_SUFFIXES):
            return not_found
        file = self.root.joinpath(*parts)  # plain names only (checked above): no traversal; a symlink inside is the package's own (static/client -> clients/js/src)
        if not file.is_relative_to(self.root) or not file.is_file() or "__pycache__" in file.parts:
            return not_found
        ctype = CONTENT_TYPES.get(file.suffix.lower()) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        return response(200, file.read_bytes(), ctype, cache=False)
