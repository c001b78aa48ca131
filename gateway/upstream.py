"""Opening an upstream PostgreSQL connection with the gateway's own credentials.

The handshake (TLS, trust/cleartext/md5/SCRAM authentication, ParameterStatus,
BackendKeyData, ReadyForQuery) is done here with asyncio streams; the relay then
takes the transport over. Clients never see these credentials: failures are
reported to them as 08001/08006 errors without the upstream's details.
"""
from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

from .config import UpstreamConfig
from .protocol import codec
from .protocol.codec import BackendParser, ProtocolViolation
from .protocol.messages import (
    Authentication, BackendKeyData, ErrorResponse, ParameterStatus, ReadyForQuery,
)
from .protocol.scram import ScramClient, ScramError, md5_password


class UpstreamError(Exception):
    """The upstream could not be reached or refused us. ``sqlstate`` for the client;
    ``upstream_error`` carries the server's own ErrorResponse when there was one."""

    def __init__(self, sqlstate: str, message: str, hint: str | None = None,
                 upstream_error: ErrorResponse | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.hint = hint
        self.upstream_error = upstream_error


@dataclass
class UpstreamConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    parameters: dict = field(default_factory=dict)
    backend_pid: int = 0
    backend_secret: bytes = b""
    tx_status: str = "I"
    leftover: bytes = b""


def _ssl_context(cfg: UpstreamConfig) -> ssl.SSLContext:
    if cfg.sslmode in ("verify-ca", "verify-full"):
        ctx = ssl.create_default_context(cafile=cfg.sslrootcert)
        ctx.check_hostname = cfg.sslmode == "verify-full"
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def connect_upstream(cfg: UpstreamConfig, params: dict) -> UpstreamConnection:
    """Open and authenticate an upstream connection; ``params`` are the startup
    parameters to send (database, application_name, ...). The user is always ours."""
    try:
        return await asyncio.wait_for(_connect(cfg, params), cfg.connect_timeout_s)
    except asyncio.TimeoutError:
        raise UpstreamError("08001", f"the database did not answer within {cfg.connect_timeout_s:g} s",
                            "check that PostgreSQL is running and reachable from the gateway") from None
    except OSError as e:
        raise UpstreamError("08001", f"the gateway cannot reach the database: {e.strerror or e}",
                            "check that PostgreSQL is running; the gateway will connect again "
                            "on the next attempt") from None


async def _connect(cfg: UpstreamConfig, params: dict) -> UpstreamConnection:
    reader, writer = await asyncio.open_connection(cfg.host, cfg.port)
    try:
        if cfg.sslmode != "disable":
            writer.write(codec.encode_ssl_request())
            await writer.drain()
            answer = await reader.readexactly(1)
            if answer == b"S":
                server_hostname = cfg.host if cfg.sslmode == "verify-full" else None
                await writer.start_tls(_ssl_context(cfg), server_hostname=server_hostname)
            elif cfg.sslmode in ("require", "verify-ca", "verify-full"):
                raise UpstreamError("08001", "the database does not offer TLS but upstream.sslmode requires it")
        startup = {"user": cfg.user, **params}
        startup.setdefault("database", cfg.database)
        writer.write(codec.encode_startup(startup))
        await writer.drain()
        conn = UpstreamConnection(reader, writer)
        await _authenticate(conn, cfg)
        return conn
    except BaseException:
        writer.close()
        raise


async def _next(reader: asyncio.StreamReader, parser: BackendParser):
    while True:
        msg = parser.next_message()
        if msg is not None:
            return msg
        data = await reader.read(65536)
        if not data:
            raise UpstreamError("08006", "the database closed the connection during startup")
        parser.feed(data)


async def _authenticate(conn: UpstreamConnection, cfg: UpstreamConfig) -> None:
    parser = BackendParser()
    scram: ScramClient | None = None
    w = conn.writer
    while True:
        try:
            msg = await _next(conn.reader, parser)
        except ProtocolViolation as e:
            raise UpstreamError("08006", f"the database broke the protocol: {e}") from None
        if isinstance(msg, Authentication):
            if msg.code == 0:
                continue
            if cfg.password is None and msg.code in (3, 5, 10):
                raise UpstreamError("08001", "the database asks the gateway for a password, but none is configured",
                                    "set upstream.password or upstream.password_env in the gateway config")
            if msg.code == 3:
                w.write(codec.encode_password(cfg.password.encode() + b"\x00"))
            elif msg.code == 5:
                w.write(codec.encode_password(md5_password(cfg.user, cfg.password, msg.data) + b"\x00"))
            elif msg.code == 10:
                mechs = msg.data.split(b"\x00")
                if b"SCRAM-SHA-256" not in mechs:
                    raise UpstreamError("08001", "the database offers no SASL mechanism the gateway supports")
                scram = ScramClient(cfg.user, cfg.password)
                w.write(codec.encode_sasl_initial("SCRAM-SHA-256", scram.first()))
            elif msg.code == 11 and scram is not None:
                w.write(codec.encode_password(scram.final(msg.data)))
            elif msg.code == 12 and scram is not None:
                try:
                    scram.verify(msg.data)
                except ScramError as e:
                    raise UpstreamError("08001", str(e)) from None
                continue
            else:
                raise UpstreamError("08001", f"the database asks for authentication method {msg.code}, "
                                    "which the gateway does not support (use trust, md5 or scram-sha-256)")
            await w.drain()
        elif isinstance(msg, ErrorResponse):
            if msg.sqlstate.startswith("28"):
                raise UpstreamError("08001", "the gateway could not log in to the database",
                                    "an administrator must check upstream.user/password in the gateway config",
                                    upstream_error=msg)
            raise UpstreamError(msg.sqlstate or "08001", msg.message, upstream_error=msg)
        elif isinstance(msg, ParameterStatus):
            conn.parameters[msg.name] = msg.value
        elif isinstance(msg, BackendKeyData):
            conn.backend_pid, conn.backend_secret = msg.pid, msg.secret
        elif isinstance(msg, ReadyForQuery):
            conn.tx_status = msg.status
            conn.leftover = parser.take_buffer()
            return
        # NoticeResponse, NegotiateProtocolVersion: nothing to do during startup


async def send_cancel(cfg: UpstreamConfig, pid: int, secret: bytes) -> None:
    """Send a CancelRequest for an upstream backend (its own short connection)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(cfg.host, cfg.port), 5)
    except (OSError, asyncio.TimeoutError):
        return
    try:
        if cfg.sslmode != "disable":
            writer.write(codec.encode_ssl_request())
            await writer.drain()
            if await reader.readexactly(1) == b"S":
                await writer.start_tls(_ssl_context(cfg),
                                       server_hostname=cfg.host if cfg.sslmode == "verify-full" else None)
        writer.write(codec.encode_cancel(pid, secret))
        await writer.drain()
        await asyncio.wait_for(reader.read(1), 5)   # the server closes when done
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        writer.close()
