"""Brokers carry a room across processes: the in-memory broker (one process) and the Redis broker (a cluster), and
the prepared-track stores beside them; `factory` picks the ones a configuration asks for.

May import `room` and everything below it; never outputs or the server.
"""
