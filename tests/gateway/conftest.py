"""A real gateway for tests: started in a thread with its own event loop, in front of
the test PostgreSQL, reachable by any client (psql, psycopg, asyncpg, pgbench)."""
from __future__ import annotations

import asyncio
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from gateway.config import Config, parse_config
from gateway.protocol.scram import make_verifier
from gateway.server import Gate, Gateway

PASSWORD = "secret-pw"
_VERIFIER = make_verifier(PASSWORD, iterations=64)   # fast in tests; real configs use 4096


def gateway_toml(pg, *, users: dict[str, list[str]] | None = None, extra: str = "",
                 server_extra: str = "", database: str = "postgres") -> str:
    users = users if users is not None else {"alice": ["app"]}
    user_tables = "\n".join(
        f'[users.{name}]\npassword_verifier = "{_VERIFIER}"\nroles = {roles!r}\n'.replace("'", '"')
        for name, roles in users.items())
    password = f'password = "{pg.password}"\n' if getattr(pg, "password", None) else ""
    return textwrap.dedent(f"""\
        [server]
        listen = "127.0.0.1:0"
        {server_extra}
        [upstream]
        host = "{pg.host}"
        port = {pg.port}
        user = "{pg.user}"
        database = "{database}"
        """) + password + "\n" + user_tables + "\n" + extra


@dataclass
class RunningGateway:
    gateway: Gateway
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    config: Config
    runtime: object = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self.gateway.port

    def dsn(self, dbname: str, user: str = "alice", password: str = PASSWORD) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{dbname}"

    def libpq(self, dbname: str, user: str = "alice") -> str:
        return f"host=127.0.0.1 port={self.port} user={user} dbname={dbname} sslmode=disable"

    def call(self, fn: Callable, *args):
        """Run fn(*args) (sync or coroutine function) on the gateway's loop."""
        async def run():
            r = fn(*args)
            if asyncio.iscoroutine(r):
                r = await r
            return r
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def stop(self) -> None:
        if not self.loop.is_closed():
            closer = self.runtime.close() if self.runtime is not None else self.gateway.close()
            asyncio.run_coroutine_threadsafe(closer, self.loop).result(30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def start_gateway(config: Config, gate_factory: Callable[[Config], Gate] | None = None) -> RunningGateway:
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict = {}

    def run():
        asyncio.set_event_loop(loop)
        try:
            if gate_factory is not None:
                gw = Gateway(config, gate_factory(config))
                loop.run_until_complete(gw.start())
                box["runtime"] = None
            else:
                # the real assembly: schema + catalog loaded, policy, audit, JIT, admin
                from gateway.app import Runtime, build_components
                runtime = Runtime(config, build_components(config))
                gw = loop.run_until_complete(runtime.start())
                box["runtime"] = runtime
            box["gw"] = gw
        except BaseException as e:       # reported to the test below
            box["error"] = e
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name="piigate-test-gateway", daemon=True)
    thread.start()
    started.wait(30)
    if "error" in box:
        raise box["error"]
    return RunningGateway(box["gw"], loop, thread, config, box["runtime"])


@pytest.fixture
def gateway_factory(pg_server, tmp_path: Path) -> Iterator[Callable[..., RunningGateway]]:
    """gateway_factory(extra_toml="", users=..., gate_factory=None) -> RunningGateway."""
    running: list[RunningGateway] = []

    def make(extra: str = "", users=None, server_extra: str = "", gate_factory=None,
             config_text: str | None = None) -> RunningGateway:
        text = config_text or gateway_toml(pg_server, users=users, extra=extra, server_extra=server_extra)
        path = tmp_path / f"gateway{len(running)}.toml"
        path.write_text(text)
        cfg = parse_config(text, str(path))
        gw = start_gateway(cfg, gate_factory)
        running.append(gw)
        return gw

    yield make
    for gw in running:
        gw.stop()


@pytest.fixture
def gateway(gateway_factory) -> RunningGateway:
    """A transparent gateway (issue 2 behaviour) in front of the test PostgreSQL."""
    return gateway_factory()
