"""`piigate serve` as its own process, as operators run it: what only the real
command line shows (signal dispositions, process lifetime)."""
from __future__ import annotations

import subprocess
import time

import pytest

from gateway.protocol import codec

from .rawclient import RawClient
from .serve_process import free_port, serve_config, start_serve


@pytest.fixture
def serve_process(pg_server, sample_db, tmp_path):
    port = free_port()
    (tmp_path / "gw.toml").write_text(serve_config(pg_server, sample_db.dbname, port, {"app": "app"}))
    proc = start_serve(tmp_path / "gw.toml", port)
    try:
        yield proc, port, sample_db.dbname
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_client_writing_into_a_closed_upstream_does_not_end_the_gateway(serve_process):
    """PostgreSQL closes a session after a FATAL (here the session terminates its own
    backend) while its client keeps sending: the gateway's second write into that
    closed socket fails with EPIPE, and with SIGPIPE at its default disposition (as
    the CLI had set it for every command) the kernel ended the whole gateway, every
    other session with it: any user could stop the service. Found by fuzzing."""
    proc, port, dbname = serve_process
    query = codec.frame(b"Q", b"SELECT 1\x00")
    for _ in range(15):
        client = RawClient("127.0.0.1", port, "app", "pw", dbname, timeout=5)
        client.sock.sendall(codec.frame(b"Q", b"SELECT pg_terminate_backend(pg_backend_pid())\x00"))
        try:
            for _ in range(500):
                client.sock.send(query * 50)
        except OSError:
            pass                                    # the gateway closed this one: expected
        client.sock.close()
    time.sleep(0.5)
    assert proc.poll() is None, f"the gateway ended (status {proc.returncode})"
    other = RawClient("127.0.0.1", port, "app", "pw", dbname, timeout=5)
    try:
        msgs = other.query("SELECT 'still serving'")
        assert b"still serving" in other.received, msgs
    finally:
        other.close()
