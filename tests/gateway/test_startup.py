"""The gateway starts while its database is still down (containers start in any
order): clients get 08001 while it is unreachable, sessions under PII policy a clear
57P03 until the schema is read, and then everything works without a restart."""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from gateway.config import parse_config

from .conftest import PASSWORD, start_gateway
from .rawclient import RawClient, errors
from .test_enforcement import _policy_config


class Forwarder:
    """A TCP port that refuses connections until ``open()``, then forwards to PG."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()                         # nothing listens yet: connections are refused
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = None

    async def _pipe(self, reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def open(self) -> None:
        async def start():
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def close(self) -> None:
        async def stop():
            if self.server is not None:
                self.server.close()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def late_database(pg_server, sample_db_fresh, tmp_path):
    fwd = Forwarder(pg_server.host, pg_server.port)
    text = _policy_config(pg_server, sample_db_fresh.dbname, tmp_path)
    text = text.replace(f"port = {pg_server.port}", f"port = {fwd.port}", 1)
    (tmp_path / "gw.toml").write_text(text)
    gw = start_gateway(parse_config(text, str(tmp_path / "gw.toml")))
    gw.dbname = sample_db_fresh.dbname
    try:
        yield gw, fwd
    finally:
        gw.stop()
        fwd.close()


def _ann_query(gw, sql: str):
    client = RawClient("127.0.0.1", gw.port, "ann", PASSWORD, gw.dbname)
    try:
        msgs = client.query(sql)
        return msgs, bytes(client.received)
    finally:
        client.close()


def test_starts_without_its_database_and_catches_up(late_database):
    gw, fwd = late_database
    health = gw.call(gw.runtime._health)
    assert health["schema"].startswith("not read yet")
    # the database is down: a clear 08001 at connect, not a dropped socket
    with pytest.raises(Exception) as exc:
        RawClient("127.0.0.1", gw.port, "ann", PASSWORD, gw.dbname)
    assert "08001" in str(exc.value) or "upstream" in str(exc.value).lower()
    fwd.open()
    # until the schema is read: 57P03 with what to do; then masked results, no restart
    deadline = time.monotonic() + 10
    while True:
        msgs, received = _ann_query(gw, "SELECT ssn FROM customers WHERE id = 7")
        errs = errors(msgs)
        if not errs:
            break
        assert errs[0].sqlstate == "57P03", errs[0]
        assert "try again" in errs[0].fields.get("H", "")
        assert time.monotonic() < deadline, "the gateway never read the schema"
        time.sleep(0.2)
    assert b"000-00-0007" not in received                 # masked: the catalog applies
    assert gw.call(gw.runtime._health)["schema"] == "ok"
