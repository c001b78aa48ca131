"""The Redis Stream sink against real Redis: the shared test server for the happy
paths, a redis-server of our own (stopped, frozen, restarted) for failures."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.audit import AuditConfig, AuditTrail, AuditUnavailable
from gateway.audit.chain import split_lines, verify
from gateway.audit.config import FileSinkConfig, RedisSinkConfig
from gateway.audit.query import read_trail
from gateway.audit.sinks import read_stream

from .conftest import decision, trail_files


async def test_stream_sink_holds_every_record_in_order(redis_url, redis_prefix):
    stream = redis_prefix + "audit"
    cfg = AuditConfig.from_table({"sinks": ["redis"], "instance": "gw-r",
                                  "redis": {"url": redis_url, "stream": stream}}, "<test>")
    async with AuditTrail(cfg) as trail:
        sent = [await trail.record(decision(i)) for i in range(30)]
        sent += await asyncio.gather(*(trail.record(decision(i)) for i in range(30, 60)))
    client = aioredis.from_url(redis_url)
    try:
        got = await read_stream(client, stream)
        entries = await client.xrange(stream, count=1)
    finally:
        await client.aclose()
    assert {r["hash"] for r in sent} <= {r["hash"] for r in got}
    assert got[-1]["type"] == "checkpoint"
    assert entries[0][1][b"instance"] == b"gw-r"
    res = verify(got)
    assert res.ok, res.summary()


async def test_stream_is_capped(redis_url, redis_prefix):
    stream = redis_prefix + "capped"
    cfg = AuditConfig(instance="gw-cap", redis=RedisSinkConfig(url=redis_url, stream=stream, maxlen=100),
                      checkpoint_every=10_000)
    async with AuditTrail(cfg) as trail:
        for start in range(0, 2000, 200):
            await asyncio.gather(*(trail.record(decision(i)) for i in range(start, start + 200)))
    client = aioredis.from_url(redis_url)
    try:
        n = await client.xlen(stream)
    finally:
        await client.aclose()
    assert 100 <= n < 400          # MAXLEN ~ trims whole nodes: about the cap, never all 2000
    client = aioredis.from_url(redis_url)
    try:
        window = await read_stream(client, stream)
    finally:
        await client.aclose()
    assert window[0]["seq"] > 1
    assert verify(window).first_bad.kind == "missing_start"
    assert verify(window, partial=True).ok          # a capped stream is a window of the chain


async def test_stream_only_trail_resumes_its_chain_after_restart(redis_url, redis_prefix):
    stream = redis_prefix + "resume"
    cfg = AuditConfig.from_table({"sinks": ["redis"], "instance": "gw-re",
                                  "redis": {"url": redis_url, "stream": stream}}, "<test>")
    async with AuditTrail(cfg) as trail:
        first = [await trail.record(decision(i)) for i in range(3)]
    async with AuditTrail(cfg) as trail:
        again = await trail.record(decision(9))
    assert again["seq"] == first[-1]["seq"] + 2          # after the shutdown checkpoint
    client = aioredis.from_url(redis_url)
    try:
        assert verify(await read_stream(client, stream)).ok
    finally:
        await client.aclose()


async def test_stream_checkpoints_anchor_a_truncated_file(tmp_path, redis_url, redis_prefix, seed_b64):
    stream = redis_prefix + "anchor"
    path = tmp_path / "audit.jsonl"
    cfg = AuditConfig.from_table({"sinks": ["file", "redis"], "instance": "gw-a", "signing_key": seed_b64,
                                  "checkpoint_every": 10,
                                  "file": {"path": str(path), "fsync": "none"},
                                  "redis": {"url": redis_url, "stream": stream}}, "<test>")
    async with AuditTrail(cfg) as trail:
        for i in range(35):
            await trail.record(decision(i))
    f = trail_files(path)[0]
    lines = f.read_bytes().splitlines(keepends=True)
    f.write_bytes(b"".join(lines[:-6]))              # someone cut the tail of the local file
    pub = cfg.signing_key.public_key()
    assert verify(read_trail([f]), pub).ok           # the file alone cannot tell
    from gateway.audit.cli import _redis_anchors
    anchors = await _redis_anchors(redis_url, stream)
    assert anchors and anchors[0]["instance"] == "gw-a"
    res = verify(read_trail([f]), pub, anchors=anchors)
    assert not res.ok and res.first_bad.kind == "truncated"
    assert res.first_bad.line == len(lines) - 6


# -- failures, on a redis-server of our own -------------------------------------------


class OwnRedis:
    """A redis-server process this test starts, freezes, kills and restarts by PID."""

    def __init__(self, workdir: Path):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.skip("redis-server binary not installed")
        self.workdir = workdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("own redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture
def own_redis(tmp_path):
    r = OwnRedis(tmp_path)
    r.start()
    yield r
    r.kill()


async def test_required_stream_failure_fails_closed_then_recovers(own_redis):
    cfg = AuditConfig(instance="gw-f", redis=RedisSinkConfig(url=own_redis.url, stream="audit"),
                      sink_timeout_ms=300, retry_ms=200)
    trail = await AuditTrail(cfg).start()
    try:
        await trail.record(decision(0))
        own_redis.freeze()                                  # a slow (hung) sink
        t0 = time.perf_counter()
        with pytest.raises(AuditUnavailable, match="redis sink: no answer within 300 ms"):
            await trail.record(decision(1))
        assert time.perf_counter() - t0 < 1.0
        assert not trail.healthy and trail.health()["sinks"][0]["ok"] is False
        t0 = time.perf_counter()
        with pytest.raises(AuditUnavailable):
            await trail.record(decision(2))                 # fails fast: no stall per statement
        assert time.perf_counter() - t0 < 0.25          # < the 300 ms timeout: not tried
        own_redis.thaw()
        await asyncio.sleep(0.25)
        await trail.record(decision(3))
        assert trail.healthy and trail.last_error is not None

        own_redis.kill()                                    # a dead sink
        await asyncio.sleep(0.25)
        with pytest.raises(AuditUnavailable, match="redis sink"):
            await trail.record(decision(4))
        assert not trail.healthy
        own_redis.start()
        await asyncio.sleep(0.25)
        for _ in range(20):                                 # reconnects by itself
            try:
                await trail.record(decision(5))
                break
            except AuditUnavailable:
                await asyncio.sleep(0.1)
        assert trail.healthy
    finally:
        own_redis.thaw() if own_redis.proc.poll() is None else None
        await trail.close()


async def test_optional_slow_stream_never_delays_records(tmp_path, own_redis):
    cfg = AuditConfig(instance="gw-o",
                      file=FileSinkConfig(path=tmp_path / "audit.jsonl", fsync="none"),
                      redis=RedisSinkConfig(url=own_redis.url, stream="audit", required=False),
                      sink_timeout_ms=300, retry_ms=5000)
    trail = await AuditTrail(cfg).start()
    try:
        await trail.record(decision(0))
        own_redis.freeze()
        t0 = time.perf_counter()
        for i in range(20):
            await trail.record(decision(i))
        assert time.perf_counter() - t0 < 0.25           # < the 300 ms timeout: not waited for
        await asyncio.sleep(0.4)
        h = trail.health()
        assert h["healthy"] and h["degraded"]
        assert [s for s in h["sinks"] if s["kind"] == "redis"][0]["ok"] is False
    finally:
        own_redis.thaw()
        await trail.close()
    assert verify(read_trail(trail_files(tmp_path / "audit.jsonl"))).ok


async def test_two_instances_share_a_stream_each_chain_verifies(tmp_path, redis_url, redis_prefix):
    stream = redis_prefix + "shared"
    trails = []
    for name in ("gw-a", "gw-b"):
        cfg = AuditConfig.from_table({"sinks": ["file", "redis"], "instance": name,
                                      "file": {"path": str(tmp_path / f"{name}.jsonl"), "fsync": "none"},
                                      "redis": {"url": redis_url, "stream": stream}}, "<test>")
        trails.append(await AuditTrail(cfg).start())
    try:
        await asyncio.gather(*(t.record(decision(i)) for i in range(40) for t in trails))
    finally:
        for t in trails:
            await t.close()
    client = aioredis.from_url(redis_url)
    try:
        interleaved = await read_stream(client, stream)
    finally:
        await client.aclose()
    assert {r["instance"] for r in interleaved} == {"gw-a", "gw-b"}
    res = verify(interleaved)
    assert res.ok and set(res.heads) == {"gw-a", "gw-b"}
    files = sorted(tmp_path.glob("gw-*.jsonl"))
    both = verify(read_trail(files))
    assert both.ok and both.heads["gw-a"]["seq"] == both.heads["gw-b"]["seq"] == 42
    # tampering in one instance's file is named there
    lines = files[1].read_bytes().splitlines(keepends=True)
    files[1].write_bytes(b"".join(lines[:10] + lines[11:]))
    res = verify(read_trail(files))
    assert (res.first_bad.kind, res.first_bad.source, res.first_bad.line) == ("deleted", str(files[1]), 11)
