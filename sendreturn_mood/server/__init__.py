"""The server: the HTTP/websocket transport and its routing, access (tokens, origins, limits), worker processes and
the event loop. The thin I/O shell around the sans-I/O `room` layer.

May import every layer below it (audio, model, room, broker, outputs, the base modules); never `cli`.
"""
