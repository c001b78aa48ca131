"""Starting and stopping the processes a benchmark run needs, by PID (I/O)."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# Programs that refuse to run as root (pgbouncer) run as this account when we are root.
UNPRIVILEGED_USER = "nobody"


class StartError(RuntimeError):
    """A process could not be started; the message says why and ends with its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        kept = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(kept) if kept else "(log is empty)"


def unprivileged_popen_kwargs() -> dict:
    """subprocess arguments that drop root to ``nobody``; nothing when not root."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(UNPRIVILEGED_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@dataclass
class Service:
    """A started background process: its name, PID, log, and how to reach it."""

    name: str
    host: str
    port: int
    log_path: Path
    _proc: subprocess.Popen = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if self._proc.poll() is not None:
                return
            try:
                self._proc.send_signal(sig)
            except ProcessLookupError:
                return
            try:
                self._proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def start_service(
    name: str,
    args: list[str],
    *,
    port: int,
    log_path: Path,
    cwd: Path,
    env: dict[str, str] | None = None,
    unprivileged: bool = False,
    timeout: float = 30.0,
) -> Service:
    """Start ``args`` in a session of its own (a Ctrl-C reaches us, and we stop it in
    order) and wait until 127.0.0.1:``port`` accepts connections."""
    extra = unprivileged_popen_kwargs() if unprivileged else {}
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(cwd),
                env=env,
                start_new_session=True,
                **extra,
            )
        except OSError as exc:
            raise StartError(f"{name}: could not run {args[0]}: {exc}") from None
    service = Service(name, "127.0.0.1", port, log_path, proc)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise StartError(
                f"{name} exited with code {proc.returncode} before accepting connections "
                f"on port {port}; log {log_path}:\n{log_tail(log_path)}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return service
        except OSError:
            pass
        if time.monotonic() > deadline:
            service.stop()
            raise StartError(
                f"{name} did not accept connections on port {port} within {timeout:.0f}s; "
                f"log {log_path}:\n{log_tail(log_path)}"
            )
        time.sleep(0.05)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by ``pid`` and its live descendants."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the command name: state(0) ppid(1) ... utime(11) stime(12)
        child = int(entry)
        children.setdefault(int(fields[1]), []).append(child)
        times[child] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    if pid not in times:
        return None
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo.extend(children.get(current, ()))
    return total
