"""The one root of the package's own errors: `except SendReturnError` catches every error this package raises on
purpose (bad configuration, a model or preset file it cannot use, a refused handshake, an unreachable broker ...),
and never a bug's TypeError or KeyError. Each precise error derives from it and keeps its own base (ValueError,
RuntimeError) for callers that already catch those.

A base module: it imports nothing from the package, so every layer may import it.
"""

from __future__ import annotations


class SendReturnError(Exception):
    """Base of every error sendreturn_mood raises on purpose."""
