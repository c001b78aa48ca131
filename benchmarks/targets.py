"""The three things pgbench is pointed at: PostgreSQL directly, pgbouncer, the gateway."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .pgbench import Endpoint
from .processes import Service, StartError, free_port, start_service

REPO = Path(__file__).resolve().parent.parent

# Client credentials for the proxies (both authenticate clients; only loopback).
BENCH_USER = "bench"
BENCH_PASSWORD = "bench-only-password"

TARGET_NAMES = ("direct", "pgbouncer", "gateway")

#: How the gateway is configured; each mode measured is its own target,
#: ``gateway-<mode>`` (see gateway_config).
GATEWAY_MODES = ("transparent", "noaudit", "full")


def gateway_target_name(mode: str) -> str:
    return f"gateway-{mode}"


@dataclass
class Target:
    """One target of the run: an endpoint to benchmark, or the reason it has none."""

    name: str
    endpoint: Endpoint | None
    service: Service | None = None  # the proxy process, for CPU accounting
    unavailable: str | None = None  # why it is not benchmarked (skipped or failed)

    @property
    def pid(self) -> int | None:
        return self.service.pid if self.service else None


@dataclass(frozen=True)
class Upstream:
    """The PostgreSQL server under test and the database pgbench was initialised in."""

    host: str
    port: int
    user: str
    password: str | None
    dbname: str


def direct_target(upstream: Upstream) -> Target:
    return Target(
        "direct",
        Endpoint(upstream.host, upstream.port, upstream.user, upstream.dbname, upstream.password),
    )


def find_pgbouncer() -> str | None:
    for candidate in (shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def pgbouncer_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "unknown"


def pgbouncer_ini(upstream: Upstream, port: int, auth_file: Path) -> str:
    """Session pooling, SCRAM for clients (as the gateway does), pool large enough
    that no client ever waits for a server connection."""
    server_auth = f" password={upstream.password}" if upstream.password else ""
    return (
        "[databases]\n"
        f"* = host={upstream.host} port={upstream.port} user={upstream.user}{server_auth}\n"
        "\n[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = scram-sha-256\n"
        f"auth_file = {auth_file}\n"
        "pool_mode = session\n"
        "max_client_conn = 500\n"
        "default_pool_size = 64\n"
        "ignore_startup_parameters = extra_float_digits\n"
        "log_connections = 0\n"
        "log_disconnections = 0\n"
        "log_pooler_errors = 1\n"
        "stats_period = 3600\n"
    )


def start_pgbouncer(upstream: Upstream, work_dir: Path) -> Target:
    binary = find_pgbouncer()
    if binary is None:
        return Target(
            "pgbouncer", None,
            unavailable="pgbouncer is not installed (apt-get install pgbouncer); skipped",
        )
    port = free_port()
    auth_file = work_dir / "pgbouncer-userlist.txt"
    auth_file.write_text(f'"{BENCH_USER}" "{BENCH_PASSWORD}"\n')
    ini = work_dir / "pgbouncer.ini"
    ini.write_text(pgbouncer_ini(upstream, port, auth_file))
    for path in (auth_file, ini):
        os.chmod(path, 0o644)  # pgbouncer runs as 'nobody' under root; a throwaway password
    try:
        # pgbouncer refuses to run as root.
        service = start_service(
            "pgbouncer", [binary, str(ini)], port=port,
            log_path=work_dir / "pgbouncer.log", cwd=work_dir, unprivileged=True,
        )
    except StartError as exc:
        return Target("pgbouncer", None, unavailable=str(exc))
    return Target(
        "pgbouncer",
        Endpoint("127.0.0.1", port, BENCH_USER, upstream.dbname, BENCH_PASSWORD),
        service,
    )


#: Gateway modes full and noaudit: the bench user is under PII policy (every
#: statement is analysed and decided, and in full audited, before it is forwarded);
#: pgbench's tables hold no catalogued column, so the decision is "allow" by the
#: non-PII default.
FULL_POLICY = """
[defaults]
pii_read = "mask"
unknown = "deny"
[[rule]]
name = "dba-unrestricted"
roles = ["dba"]
actions = ["*"]
categories = ["*"]
effect = "allow"
"""


def gateway_config(upstream: Upstream, port: int, verifier: str, mode: str = "transparent",
                   work_dir: Path | None = None) -> str:
    """The gateway's TOML config: listen on loopback, one SCRAM user for pgbench.
    ``transparent``: no policy (the relay with analysis); ``full``: policy, decision
    and audit trail (file sink, group fsync) for every statement; ``noaudit``: the
    same without the audit trail (what auditing costs is full against noaudit)."""
    if mode not in GATEWAY_MODES:
        raise ValueError(f"unknown gateway mode {mode!r}; expected one of {', '.join(GATEWAY_MODES)}")

    def q(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        "[server]",
        f"listen = {q(f'127.0.0.1:{port}')}",
        "",
        "[upstream]",
        f"host = {q(upstream.host)}",
        f"port = {upstream.port}",
        f"user = {q(upstream.user)}",
    ]
    if upstream.password:
        lines.append(f"password = {q(upstream.password)}")
    lines += [
        f"database = {q(upstream.dbname)}",
        "",
        f"[users.{BENCH_USER}]",
        f"password_verifier = {q(verifier)}",
        'roles = ["app"]' if mode == "transparent" else 'roles = ["analyst"]',
        "",
    ]
    if mode in ("full", "noaudit"):
        assert work_dir is not None
        (work_dir / "policy.toml").write_text(FULL_POLICY)
        lines += [
            "[policy]",
            f"file = {q(str(work_dir / 'policy.toml'))}",
            "",
        ]
    if mode == "full":
        (work_dir / "audit").mkdir(exist_ok=True)
        lines += [
            "[audit]",
            'sinks = ["file"]',
            f"file = {q(str(work_dir / 'audit' / 'audit.jsonl'))}",
            'fsync = "group"',
            "",
        ]
    return "\n".join(lines)


def start_gateway(upstream: Upstream, work_dir: Path, mode: str = "transparent") -> Target:
    """``python -m gateway.cli serve --config <generated toml>`` as a subprocess: the
    target ``gateway-<mode>``. Its config, policy, audit trail and log go to
    ``work_dir``, which should be its own (two gateways in one would collide)."""
    name = gateway_target_name(mode)
    try:
        from gateway.protocol.scram import make_verifier
    except ImportError as exc:
        return Target(name, None, unavailable=f"the gateway cannot be configured: {exc}")
    work_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = work_dir / "piigate.toml"
    config.write_text(gateway_config(upstream, port, make_verifier(BENCH_PASSWORD), mode, work_dir))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    try:
        service = start_service(
            name,
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
            port=port, log_path=work_dir / "gateway.log", cwd=REPO, env=env,
        )
    except StartError as exc:
        return Target(name, None, unavailable=str(exc))
    return Target(
        name,
        Endpoint("127.0.0.1", port, BENCH_USER, upstream.dbname, BENCH_PASSWORD),
        service,
    )
