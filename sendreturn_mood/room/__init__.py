"""A room's behaviour without I/O: smoothing, label hysteresis, track changes heard in the audio, effect presets,
the tracker that turns model outputs into a room's update, the room and its members, the sans-I/O session (one
connection's protocol), and a room played offline over audio files.

May import `audio`, `model` and the base modules; never brokers, outputs or the server (a
room tells its broker about members through the `rooms.Membership` protocol, which the broker implements).
"""
