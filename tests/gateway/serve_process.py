"""`piigate serve` as a process of its own, for tests that need the real command line
(signal dispositions, kill -9, child processes): its config and its start."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from gateway.protocol.scram import make_verifier

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_config(pg_server, dbname: str, port: int, users: dict[str, str], extra: str = "") -> str:
    """A config for a gateway on ``port`` in front of ``dbname``; ``users``: name ->
    role, each with the password "pw"."""
    password = f'password = "{pg_server.password}"\n' if pg_server.password else ""
    accounts = "".join(f'[users.{name}]\npassword_verifier = "{make_verifier("pw", iterations=64)}"\n'
                       f'roles = ["{role}"]\n' for name, role in users.items())
    return (f'[server]\nlisten = "127.0.0.1:{port}"\n[upstream]\nhost = "{pg_server.host}"\n'
            f'port = {pg_server.port}\nuser = "{pg_server.user}"\n{password}database = "{dbname}"\n'
            + accounts + extra)


def start_serve(config: Path, port: int, timeout: float = 30, log: Path | None = None) -> subprocess.Popen:
    """``python -m gateway.cli serve --config CONFIG`` (run in the config's folder, so
    relative paths in it are the folder's), once it accepts connections; its output
    goes to ``log`` if given."""
    out = open(log, "wb") if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                                cwd=config.parent, env=dict(os.environ, PYTHONPATH=str(REPO)),
                                stdout=out, stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL)
    finally:
        if log is not None:
            out.close()
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                proc.wait()
                raise AssertionError("the gateway did not start") from None
            time.sleep(0.1)


def stop_serve(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout``; idempotent."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
