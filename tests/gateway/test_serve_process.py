"""`piigate serve` as its own process, as operators run it: what only the real
command line shows (signal dispositions, process lifetime)."""
from __future__ import annotations

import socket
import struct
import time
import uuid

import psycopg

import pytest

from gateway.protocol import codec
from gateway.protocol.codec import BackendParser
from gateway.protocol.scram import ScramClient

from .rawclient import RawClient
from .serve_process import free_port, serve_config, start_serve, stop_serve


@pytest.fixture
def serve_process(pg_server, sample_db, tmp_path):
    port = free_port()
    (tmp_path / "gw.toml").write_text(serve_config(pg_server, sample_db.dbname, port, {"app": "app"}))
    proc = start_serve(tmp_path / "gw.toml", port, log=tmp_path / "serve.log")
    try:
        yield proc, port, sample_db.dbname
    finally:
        stop_serve(proc)


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


def test_a_client_reset_while_the_gateway_connects_upstream_ends_that_upstream_session(
        serve_process, pg_server, tmp_path):
    """A client that sends its last SCRAM message and resets the connection at once,
    while the gateway connects upstream (psycopg2's suite does it, closing connections
    still being made): under uvloop, which `piigate serve` runs, writing the startup
    answer into that closed transport raised, so each such client logged "unexpected
    error during startup" with a traceback and left its upstream session open."""
    proc, port, dbname = serve_process
    app = f"piigate-reset-{uuid.uuid4().hex[:8]}"
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        parser = BackendParser()

        def recv():
            while (msg := parser.next_message()) is None:
                parser.feed(sock.recv(65536))
            return msg
        sock.sendall(codec.encode_startup({"user": "app", "database": dbname, "application_name": app}))
        assert recv().code == 10
        scram = ScramClient("", "pw")
        sock.sendall(codec.encode_sasl_initial("SCRAM-SHA-256", scram.first()))
        sock.sendall(codec.encode_password(scram.final(recv().data)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()                                # RST, before the gateway's answer
    deadline = time.monotonic() + 10
    while True:
        with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
            left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                (app,)).fetchone()[0]
        if left == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert left == 0, f"{left} upstream session(s) of reset clients still open"
    assert proc.poll() is None
    log = (tmp_path / "serve.log").read_text()
    assert "unexpected error" not in log, log[-2000:]
