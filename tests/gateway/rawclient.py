"""A tiny PostgreSQL client over a raw socket that keeps every byte it receives.

Used where the question is "what exactly did the client get": leak tests look
for catalogued values in all of it (rows, COPY data, notices, notifications,
error text), not just in what a driver chooses to surface.
"""
from __future__ import annotations

import socket
import struct
import time

from gateway.protocol import codec
from gateway.protocol.codec import BackendParser
from gateway.protocol.messages import Authentication, BackendKeyData, ErrorResponse, ReadyForQuery
from gateway.protocol.scram import ScramClient


class RawClient:
    def __init__(self, host: str, port: int, user: str, password: str, database: str, timeout: float = 30,
                 params: dict[str, str] | None = None):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.received = bytearray()
        self.parser = BackendParser()
        self.sock.sendall(codec.encode_startup({"user": user, "database": database,
                                                "application_name": "rawclient", **(params or {})}))
        scram = None
        while True:
            msg = self._next()
            if isinstance(msg, Authentication):
                if msg.code == 10:
                    scram = ScramClient(user, password)
                    self.sock.sendall(codec.encode_sasl_initial("SCRAM-SHA-256", scram.first()))
                elif msg.code == 11:
                    self.sock.sendall(codec.encode_password(scram.final(msg.data)))
                elif msg.code == 12:
                    scram.verify(msg.data)
            elif isinstance(msg, ErrorResponse) and not msg.notice:
                raise ConnectionError(f"{msg.sqlstate}: {msg.message}")
            elif isinstance(msg, BackendKeyData):
                self.key = msg                 # for a CancelRequest
            elif isinstance(msg, ReadyForQuery):
                break
        self.received.clear()

    def _next(self):
        while True:
            msg = self.parser.next_message()
            if msg is not None:
                return msg
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.received += data
            self.parser.feed(data)

    def _until_ready(self) -> list:
        msgs = []
        while True:
            msg = self._next()
            msgs.append(msg)
            if isinstance(msg, ReadyForQuery):
                return msgs
            if isinstance(msg, codec.Opaque if hasattr(codec, "Opaque") else tuple) and False:
                pass
            # COPY FROM STDIN: answer CopyFail so the statement ends
            if getattr(msg, "type", None) == b"G":
                self.sock.sendall(codec.frame(b"f", b"piigate test: no data\x00"))

    def query(self, sql: str) -> list:
        self.sock.sendall(codec.encode_query(sql))
        return self._until_ready()

    def extended(self, sql: str, params: list[str | None] = ()) -> list:
        body = b"\x00\x00" + struct.pack("!h", 0)
        body += struct.pack("!h", len(params))
        for p in params:
            if p is None:
                body += struct.pack("!i", -1)
            else:
                b = p.encode()
                body += struct.pack("!i", len(b)) + b
        body += struct.pack("!h", 0)
        self.sock.sendall(codec.encode_parse("", sql) + codec.frame(b"B", body)
                          + codec.frame(b"D", b"P\x00") + codec.frame(b"E", b"\x00" + struct.pack("!i", 0))
                          + codec.frame(b"S"))
        return self._until_ready()

    def prepare(self, name: str, sql: str) -> list:
        """Parse a named statement (protocol level), then Sync."""
        self.sock.sendall(codec.encode_parse(name, sql) + codec.frame(b"S"))
        return self._until_ready()

    def execute(self, name: str) -> list:
        """Bind the named statement (no parameters), Execute it, Sync."""
        body = b"\x00" + name.encode() + b"\x00" + struct.pack("!hhh", 0, 0, 0)
        self.sock.sendall(codec.frame(b"B", body) + codec.frame(b"E", b"\x00" + struct.pack("!i", 0))
                          + codec.frame(b"S"))
        return self._until_ready()

    def drain(self, seconds: float = 0.2) -> None:
        """Collect anything that arrives unasked (notifications) for a moment."""
        self.sock.settimeout(0.05)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, BlockingIOError):
                continue
            if not data:
                break
            self.received += data
        self.sock.settimeout(30)

    def close(self) -> None:
        try:
            self.sock.sendall(codec.frame(b"X"))
        except OSError:
            pass
        self.sock.close()


def errors(msgs) -> list[ErrorResponse]:
    return [m for m in msgs if isinstance(m, ErrorResponse) and not m.notice]
