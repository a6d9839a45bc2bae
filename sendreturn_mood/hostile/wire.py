"""A deliberately minimal websocket client over a raw socket: it sends exactly the bytes it is told to (odd headers,
raw control characters, bad frames), which a real client library would refuse to produce."""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass, field

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_READ = 1 << 22  # stop reading a connection after this many bytes (the invariants bound replies far below)


def handshake_request(target: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def default_headers(host: str) -> list[tuple[str, str]]:
    return [("Host", host), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]


def frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, masked: bool = True) -> bytes:
    """One websocket frame as a client sends it (masked unless told otherwise)."""
    head = bytes([(0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)])
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask_fast(payload, key)
    return head + key + body


def _mask_fast(payload: bytes, key: bytes) -> bytes:
    import numpy as np

    k = np.frombuffer((key * (len(payload) // 4 + 1))[: len(payload)], dtype=np.uint8)
    return (np.frombuffer(payload, dtype=np.uint8) ^ k).tobytes()


@dataclass
class Reply:
    """What the server answered: HTTP status and body, then (after 101) its frames."""

    status: int = 0
    head: bytes = b""
    body: bytes = b""
    frames: list[tuple[int, bytes]] = field(default_factory=list)  # (opcode, payload)
    close_code: int | None = None
    bytes_read: int = 0


class RawClient:
    """One TCP connection driven byte by byte."""

    def __init__(self, host: str, port: int, timeout: float = 5.0, source_address: str | None = None) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=(source_address, 0) if source_address else None)
        self.buf = b""
        self.reply = Reply()

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def _fill(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except (TimeoutError, socket.timeout):
            return False
        except OSError:
            chunk = b""
        if not chunk:
            raise EOFError
        self.buf += chunk
        self.reply.bytes_read += len(chunk)
        if self.reply.bytes_read > MAX_READ:
            raise OverflowError(f"the server sent more than {MAX_READ} bytes")
        return True

    def read_response(self, timeout: float) -> Reply:
        """The HTTP response to the handshake (status, head, and the body if there is one)."""
        try:
            while b"\r\n\r\n" not in self.buf:
                if not self._fill(timeout):
                    raise TimeoutError("no HTTP response")
        except EOFError:
            if b"\r\n\r\n" not in self.buf:
                raise ConnectionError("connection closed without an HTTP response") from None
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        self.reply.head = head
        self.reply.status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if self.reply.status != 101:
            try:
                while len(rest) < length:
                    if not self._fill(timeout):
                        break
                    rest = self.buf.partition(b"\r\n\r\n")[2]
            except EOFError:
                pass
            self.reply.body = rest[:length] if length else rest
            self.buf = b""
        else:
            self.buf = rest
        return self.reply

    def read_frames(self, idle: float, total: float) -> bool:
        """Read server frames until `idle` seconds pass without data, `total` elapse, or the server closes.
        True if the connection is closed."""
        import time

        deadline = time.monotonic() + total
        while time.monotonic() < deadline:
            while self._parse_one():
                if self.reply.close_code is not None:
                    return True
            try:
                if not self._fill(min(idle, max(0.001, deadline - time.monotonic()))):
                    return False
            except EOFError:
                while self._parse_one():
                    pass
                return True
        return False

    def _parse_one(self) -> bool:
        b = self.buf
        if len(b) < 2:
            return False
        opcode = b[0] & 0xF
        n = b[1] & 0x7F
        i = 2
        if n == 126:
            if len(b) < 4:
                return False
            n = struct.unpack("!H", b[2:4])[0]
            i = 4
        elif n == 127:
            if len(b) < 10:
                return False
            n = struct.unpack("!Q", b[2:10])[0]
            i = 10
        if b[1] & 0x80:
            raise ValueError("the server sent a masked frame")
        if len(b) < i + n:
            return False
        payload = b[i : i + n]
        self.buf = b[i + n :]
        self.reply.frames.append((opcode, payload))
        if opcode == OP_CLOSE:
            self.reply.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
