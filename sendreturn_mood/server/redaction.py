"""Tokens are secrets: no log line may contain one. `redact` cleans a request target before it is logged, and
`install_log_redaction` cleans what other libraries log (the websockets library prints request lines and headers at
debug level, `?token=...` and `Authorization: Bearer` included).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote, unquote

REDACTED = "REDACTED"
SECRET_QUERY_KEYS = ("token", "access_token")
MAX_LOGGED_TARGET = 160


def redact(target: str, limit: int = MAX_LOGGED_TARGET) -> str:
    """A request target as it may be logged: token values replaced by REDACTED, anything but visible ASCII escaped,
    cut to `limit` characters. Use it for every path or query that reaches a log line."""
    path, sep, query = target.partition("?")
    if sep:
        parts = []
        for pair in query.split("&"):
            key, eq, _ = pair.partition("=")
            if unquote(key).strip().lower() in SECRET_QUERY_KEYS:
                pair = f"{key}={REDACTED}"
            parts.append(pair)
        target = path + "?" + "&".join(parts)
    safe = quote(target, safe="".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%") + "%")
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."


SECRET_IN_TEXT_RE = re.compile(
    r"(?i)((?:[?&\s]|^)(?:token|access_token)=)[^&\s\"']+|(bearer\s+)[^\s\"',]+"
)


def redact_text(text: str) -> str:
    """Free text (a log message) with token values and bearer credentials replaced by REDACTED."""
    return SECRET_IN_TEXT_RE.sub(lambda m: (m.group(1) or m.group(2)) + REDACTED, text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts tokens from every record it sees. The server installs it on the websockets
    library's logger, whose debug output prints request lines and headers (`?token=...`, `Authorization: Bearer`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def install_log_redaction(*logger_names: str) -> None:
    """Add one RedactingFilter to each named logger (idempotent)."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


