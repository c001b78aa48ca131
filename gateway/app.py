"""Assembling a running gateway from a Config: the server, and (when configured) the
catalog, policies, audit trail, JIT service and admin API."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass

from .config import Config, ConfigError
from .server import Gate, Gateway

log = logging.getLogger("piigate")


@dataclass
class Components:
    gate: Gate


def build_components(cfg: Config, check_only: bool = False) -> Components:
    """Validate and build everything the config names. Raises ConfigError."""
    return Components(gate=Gate())


async def run_gateway(cfg: Config, ready_file: str | None = None) -> None:
    comps = build_components(cfg)
    gw = Gateway(cfg, comps.gate)
    await gw.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:
            pass
    log.info("piigate %s listening on %s:%d", cfg.server.instance_id, cfg.server.host, gw.port)
    if ready_file:
        tmp = ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(gw.port))
        os.replace(tmp, ready_file)
    try:
        await stop.wait()
    finally:
        await gw.close()
