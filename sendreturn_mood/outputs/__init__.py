"""Outputs: where a room's updates go besides its websocket members (engines and tools such as OSC targets).

May import `room` and everything below it; never the server.
"""
