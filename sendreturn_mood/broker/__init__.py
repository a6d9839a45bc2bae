"""Brokers carry a room across processes: the in-memory broker (one process) and the Redis broker (a cluster).

May import `room` and everything below it; never outputs or the server.
"""
