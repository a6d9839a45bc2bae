"""sendreturn-mood: real-time music mood analysis for SEND/RETURN rooms."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
