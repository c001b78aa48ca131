"""pgbench command lines and output parsing (pure: no processes here)."""

from __future__ import annotations

import re
from dataclasses import dataclass

MODES = ("simple", "extended", "prepared")


@dataclass(frozen=True)
class Endpoint:
    """Where pgbench connects, and as whom."""

    host: str
    port: int
    user: str
    dbname: str
    password: str | None = None


@dataclass(frozen=True)
class RunResult:
    """One pgbench run's numbers."""

    tps: float
    latency_ms: float
    transactions: int
    failed: int = 0


class PgbenchOutputError(ValueError):
    """pgbench's output did not contain the numbers we need."""


def select_only_command(pgbench: str, endpoint: Endpoint, *, mode: str, clients: int, seconds: int) -> list[str]:
    """``pgbench -S -n -T seconds -c clients -j min(clients, 2) -M mode`` against ``endpoint``.

    Two pgbench threads at most: the machine has two cores and the thing measured is
    the server side, not the load generator.
    """
    if mode not in MODES:
        raise ValueError(f"unknown pgbench mode {mode!r}; expected one of {', '.join(MODES)}")
    return [
        pgbench,
        "-S", "-n",
        "-T", str(seconds),
        "-c", str(clients),
        "-j", str(min(clients, 2)),
        "-M", mode,
        "-h", endpoint.host,
        "-p", str(endpoint.port),
        "-U", endpoint.user,
        endpoint.dbname,
    ]


_TPS = re.compile(r"^tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)", re.M)
_TPS_ANY = re.compile(r"^tps = ([0-9.]+)", re.M)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)


def parse_output(text: str) -> RunResult:
    """The TPS (without connection time), mean latency and counts from pgbench's report."""
    tps = _TPS.search(text) or _TPS_ANY.search(text)
    latency = _LATENCY.search(text)
    processed = _PROCESSED.search(text)
    if not tps or not latency or not processed:
        tail = "\n".join(text.strip().splitlines()[-8:])
        raise PgbenchOutputError(f"pgbench printed no tps/latency/transaction lines; its output ended with:\n{tail}")
    failed = _FAILED.search(text)
    return RunResult(
        tps=float(tps.group(1)),
        latency_ms=float(latency.group(1)),
        transactions=int(processed.group(1)),
        failed=int(failed.group(1)) if failed else 0,
    )
