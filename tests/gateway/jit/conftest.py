"""Fixtures for the JIT tests: a JitService on the shared test Redis, unique prefix."""
from __future__ import annotations

import pytest

from gateway.jit import JitConfig, JitService
from gateway.jit.store import connect_redis


class Clock:
    """A settable clock, so expiry tests do not sleep."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def audit_log():
    events: list[dict] = []

    async def audit(event: dict) -> None:
        events.append(event)

    audit.events = events
    return audit


@pytest.fixture
async def make_jit(redis_url, redis_prefix, audit_log):
    made: list[JitService] = []

    def make(**kw) -> JitService:
        config = kw.pop("config", None) or JitConfig(redis_prefix=redis_prefix)
        client = connect_redis(redis_url)
        kw.setdefault("audit", audit_log)
        svc = JitService(client, config, owns_redis=True, **kw)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        await svc.close()


@pytest.fixture
async def jit(make_jit):
    return make_jit(instance="gw-test")
