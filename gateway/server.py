"""The asyncio server: accept, negotiate TLS, authenticate the gateway user, open the
upstream, then relay.

Shape of a connection::

    handshake (asyncio streams, readable async code)
      SSLRequest/GSSENCRequest -> StartupMessage -> SCRAM -> upstream -> ReadyForQuery
    relay (protocol callbacks on both transports: the hot path)
      client bytes  -> frames; Query/Parse/FunctionCall go through the Gate; others forwarded
      upstream bytes -> forwarded in bulk; only headers are read (ReadyForQuery status,
                        ErrorResponse when one must be rewritten or scrubbed)

The Gate (gateway.session) decides about statements; the server only moves bytes.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, NamedTuple

from .config import Config, GatewayUser
from .protocol import codec
from .protocol.codec import FrontendParser, ProtocolViolation
from .protocol.messages import (
    CancelRequest, GSSENCRequest, PasswordMessage, SSLRequest, StartupMessage,
)
from .protocol.scram import MECHANISM, ScramError, ScramServer, mock_salt
from .protocol.startup import StartupRefused, startup_settings
from .upstream import UpstreamConnection, UpstreamError, connect_upstream, send_cancel

log = logging.getLogger("piigate.server")

_I32 = struct.Struct("!i")
#: (type, length) of the message at an offset: one call per message on the hot path
_TYPE_LEN = struct.Struct("!Bi").unpack_from
_monotonic = time.monotonic
_CHR = tuple(map(chr, range(256)))


def _kinds(table: dict[bytes, int], default: int) -> bytes:
    out = bytearray(256)
    for t in codec.FRONTEND_TYPES:
        out[t] = default
    for t, k in table.items():
        out[t[0]] = k
    return bytes(out)


#: what the relay does with each frontend message type: 0 not a frontend message
#: (protocol violation), 1 forward (CopyData, ...), 2 Sync, 3 Query, 4 Parse,
#: 5 Terminate, 6 FunctionCall, 7 Bind, 8 Describe/Execute/Flush (more of an
#: extended-protocol batch), 9 CopyDone/CopyFail, 10 Close (as 8, and shown to the
#: Gate in sessions under policy: it ends a prepared statement or portal)
_CLIENT_KIND = _kinds({b"S": 2, b"Q": 3, b"P": 4, b"X": 5, b"F": 6, b"B": 7,
                       b"D": 8, b"E": 8, b"C": 10, b"H": 8, b"c": 9, b"f": 9}, 1)


def _statement_span(kind: int, buf: "bytes | bytearray", start: int, end: int) -> tuple[int, int] | None:
    """Where the SQL text lies in a Query (sql NUL) or Parse (name NUL sql NUL int16 n,
    n x int32) body, checked for the framing without decoding (plain sessions);
    None when the body is malformed."""
    if kind == 3:
        if end > start and buf[end - 1] == 0 and buf.find(0, start, end - 1) < 0:
            return start, end - 1
        return None
    i = buf.find(0, start, end)
    j = buf.find(0, i + 1, end) if i >= 0 else -1
    if j < 0 or end - (j + 1) < 2:
        return None
    if end - (j + 3) != 4 * int.from_bytes(buf[j + 1:j + 3], "big"):
        return None
    return i + 1, j


def _special(types: bytes) -> bytes:
    out = bytearray(256)
    for t in types:
        out[t] = 1
    return bytes(out)


#: backend message types the relay must see whole, by (watching errors, tracking
#: outcomes): ReadyForQuery, ParameterStatus, CopyBothResponse and ErrorResponse (a
#: FATAL one means the server is about to close) always; NoticeResponse and
#: NotificationResponse (its payload withheld) when errors are rewritten or scrubbed;
#: CommandComplete when outcomes are recorded
_UP_SPECIAL = (_special(b"ZSWE"), _special(b"ZSWCE"), _special(b"ZSAWEN"), _special(b"ZSAWCEN"))

class Verdict(NamedTuple):
    """What to do with one client message: bytes to forward upstream in its place,
    bytes to send the client at once (notices), and upstream errors to rewrite on
    their way back (``(marker, replacement_error_bytes)``: the first upstream
    ErrorResponse whose text contains ``marker`` is replaced). (A named tuple, not a
    frozen dataclass: one is made for every statement, and a frozen dataclass's
    __init__ costs four object.__setattr__ calls.)"""
    upstream: bytes
    client: bytes = b""
    rewrites: tuple[tuple[str, bytes], ...] = ()
    close: bool = False


def failing_verdict(kind: bytes, error: bytes, encoding: str, *, name: str = "",
                    before: tuple[str, ...] = ()) -> Verdict:
    """In place of a client message of ``kind`` (Query, Parse, Bind, FunctionCall), one
    that PostgreSQL fails at once (it names a function or statement that does not
    exist, ``piigate_refused_<random>``), with ``error`` sent to the client in place
    of PostgreSQL's. The protocol's replies keep their order: pipelined messages up to
    the client's Sync are skipped as after any error, and ReadyForQuery follows.
    ``before``: statements of a Query that run first; ``name``: the Parse's statement."""
    marker = f"piigate_refused_{secrets.token_hex(6)}"
    failing = f"SELECT pg_catalog.{marker}()"
    if kind == b"P":
        upstream = codec.encode_parse(name, failing, (), encoding)
    elif kind == b"B":           # binds the (missing) statement named by the marker
        upstream = codec.frame(b"B", b"\x00" + marker.encode() + b"\x00" + b"\x00\x00" * 3)
    else:                        # Query; a FunctionCall is answered as a Query is
        upstream = codec.encode_query(";\n".join([*before, failing]), encoding)
    return Verdict(upstream, rewrites=((marker, error),))


_CANCELLED = codec.encode_error("57014", "canceling statement due to user request")


class Gate:
    """Statement hook. The default lets everything through (issue 2's transparent relay)."""

    def session_started(self, relay: "Relay") -> None:
        pass

    def session_ended(self, relay: "Relay") -> None:
        pass

    def on_query(self, relay: "Relay", frame: bytes, sql: str) -> Verdict | Awaitable[Verdict]:
        return Verdict(frame)

    def on_parse(self, relay: "Relay", frame: bytes, name: str, sql: str) -> Verdict | Awaitable[Verdict]:
        return Verdict(frame)

    def on_function_call(self, relay: "Relay", frame: bytes) -> Verdict | Awaitable[Verdict]:
        return Verdict(frame)

    #: set by gates that audit or re-check each execution of a prepared statement
    watches_binds = False

    def on_bind(self, relay: "Relay", frame: bytes) -> "Verdict | None":
        """A Bind (one execution of a prepared statement): None forwards it as is."""
        return None

    def on_close(self, relay: "Relay", body: bytes) -> None:
        """A Close (body: 'S' or 'P', then the name) in a session under policy: the
        server forgets that prepared statement or portal, so the gate must too."""

    def on_upstream_error(self, relay: "Relay", body: bytes) -> bytes | None:
        """Return replacement ErrorResponse/Notice bytes, or None to pass it as is."""
        return None

    def scrubs_errors(self, relay: "Relay") -> bool:
        return False

    def under_policy(self, relay: "Relay") -> bool:
        """True when the session's statements are decided under PII policy: the relay
        then also holds the client to the message order PostgreSQL keeps in step with
        (see Relay._drain_client), since the gate's view of the session depends on it."""
        return False

    def on_ready(self, relay: "Relay", status: str) -> None:
        pass

    def on_ddl_committed(self, relay: "Relay") -> None:
        """The transaction in which ``relay`` forwarded DDL has ended (or the
        session did)."""

    def restricted(self, user: GatewayUser) -> bool:
        """True when this user's sessions are under PII policy: their startup
        settings are judged one by one (protocol.startup); others pass as sent."""
        return False

    def database_refusal(self, user: GatewayUser, database: str) -> "tuple[str, str] | None":
        """(message, hint) when ``user`` may not open a session on ``database``
        through this gate; None lets the session start."""
        return None

    def plain(self, relay: "Relay") -> bool:
        """True when this session needs no statement hooks at all (nothing to decide,
        record or re-check): the relay then only frames messages and forwards them in
        bulk, calling ``on_plain_statement`` with the SQL bytes of each Query/Parse."""
        return type(self) is Gate

    #: called in plain sessions with the SQL of each Query and Parse, undecoded (e.g.
    #: to notice DDL); None when nothing needs to see them. Returning True means "this
    #: text needs no second look": the same message again (a driver re-Parsing its
    #: statement) is then forwarded without calling the hook.
    on_plain_statement: "Callable[[Relay, bytes], bool] | None" = None
    #: SQL text (bytes) that on_plain_statement would let go at once: a Query whose
    #: text fullmatches it is forwarded without the call (what applications send all
    #: day, checked by one regex in C instead of a Python call per statement)
    plain_statement_skip: "re.Pattern[bytes] | None" = None


class SessionClosed(Exception):
    pass


@dataclass
class ClientInfo:
    user: GatewayUser
    database: str
    application_name: str
    client_addr: str
    params: dict
    tls: bool
    search_path: str | None = None      # set by the client at startup (see protocol.startup)
    session_id: str = field(default_factory=lambda: secrets.token_hex(8))
    connected_at: float = field(default_factory=time.time)


# ---------------------------------------------------------------------------------------
# relay: the hot path


class _ClientSide(asyncio.Protocol):
    __slots__ = ("relay", "data_received")

    def __init__(self, relay: "Relay"):
        self.relay = relay
        # the event loop looks data_received up once, at set_protocol: binding the
        # relay's method here saves a Python call per read on the hot path
        self.data_received = relay.from_client

    def eof_received(self):
        self.relay.close("client sent EOF")
        return False

    def connection_lost(self, exc) -> None:
        self.relay.close("client connection lost")

    def pause_writing(self) -> None:
        self.relay.upstream_transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.relay.closed:
            self.relay.upstream_transport.resume_reading()


class _UpstreamSide(asyncio.Protocol):
    __slots__ = ("relay", "data_received")

    def __init__(self, relay: "Relay"):
        self.relay = relay
        self.data_received = relay.from_upstream

    def eof_received(self):
        self.relay.upstream_lost()
        return False

    def connection_lost(self, exc) -> None:
        self.relay.upstream_lost()

    def pause_writing(self) -> None:
        if not self.relay.closed:
            self.relay.client_transport.pause_reading()

    def resume_writing(self) -> None:
        self.relay.resume_client()


class Relay:
    """One client session in relay mode. Sync callbacks; async work only when the
    Gate asks for it (audit, grants, holds), during which client input is paused and
    queued, so statements keep their order."""

    def __init__(self, gateway: "Gateway", info: ClientInfo, client_transport, upstream: UpstreamConnection,
                 key: tuple[int, bytes]):
        self.gateway = gateway
        self.info = info
        self.gate = gateway.gate
        self.client_transport = client_transport
        self.upstream_transport = upstream.writer.transport
        self.upstream_conn = upstream
        self.key = key
        self.tx_status = upstream.tx_status
        self.closed = False
        self.last_activity = time.monotonic()
        self.max_message = gateway.config.server.max_message_size
        self.state: dict = {}               # the Gate's per-session state
        self._cbuf = bytearray()            # unparsed client bytes
        self._busy = False                  # an async Gate verdict is in progress
        self._up_pending = b""              # partial upstream message we must see whole
        self._up_skip = 0                   # bytes of the current upstream message still to pass
        self.plain = False                  # no statement hooks (Gate.plain), set at start
        self._plain_last: bytes | None = None   # the last Query/Parse a plain session's hook let go
        #: [marker, replacement error, ReadyForQuery messages still to come before the
        #: one that ends the marker's sync point]
        self._rewrites: list[list] = []
        self._scrub = False
        self._verdict_task: asyncio.Task | None = None
        self.done = asyncio.get_running_loop().create_future()
        self.set_client_encoding(upstream.parameters.get("client_encoding", "UTF8"))
        #: standard_conforming_strings is on (how the analyser reads string literals)
        self.standard_strings = upstream.parameters.get("standard_conforming_strings", "on") == "on"
        self.inflight = 0                   # Query/Sync/FunctionCall forwarded, not yet answered
        #: DDL was forwarded: when the transaction ends, Gate.on_ddl_committed
        self.ddl_pending = False
        #: outcome tracking for completion records (set by the Gate when auditing)
        self.track = False
        self._out_error: str | None = None
        self._out_rows = 0
        self._out_bytes = 0
        #: the server sent a FATAL (or PANIC) error: it closes next, and that error,
        #: not one of ours, is what the client must see
        self._upstream_fatal = False
        #: ErrorResponses and ReadyForQuery messages from the server so far (a Gate
        #: compares counts to learn whether what it forwarded in a sync group ran)
        self.errors_seen = 0
        self.ready_count = 0
        self.swept_ready = 0                # ready_count at the idle sweeper's last look
        #: the client message whose verdict is being awaited (the session is busy)
        self.pending_frame = b""
        #: a CancelRequest came while that message was still in the gateway
        self.cancel_requested = False
        #: sessions under policy (Gate.under_policy): see _drain_client
        self.strict = False
        #: extended-protocol messages were forwarded after the last Sync
        self.unsynced = False
        #: a COPY ... FROM STDIN was forwarded (set by the Gate): the ReadyForQuery
        #: that ends its Query, and how many copies it still starts before that
        self.copy_until = 0
        self.copies_pending = 0

    # -- wiring -------------------------------------------------------------------------
    def start(self, leftover_client: bytes, leftover_upstream: bytes) -> None:
        self._scrub = self.gate.scrubs_errors(self)
        self.strict = self.gate.under_policy(self)
        self.plain = self.gate.plain(self)
        if self.plain:
            self.from_client = self._from_client_plain
        self.client_transport.set_protocol(_ClientSide(self))
        self.upstream_transport.set_protocol(_UpstreamSide(self))
        self.client_transport.resume_reading()
        self.upstream_transport.resume_reading()
        if leftover_upstream:
            self.from_upstream(leftover_upstream)
        if leftover_client:
            self.from_client(leftover_client)

    def close(self, why: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if not self.upstream_transport.is_closing():
                self.upstream_transport.write(codec.frame(b"X"))
        except Exception:
            pass
        self.upstream_transport.close()
        self.client_transport.close()
        task = self._verdict_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()          # e.g. a held statement whose client went away
        if self.ddl_pending:
            # its transaction ends with the connection (a COMMIT sent just before
            # Terminate may still be running): read the schema a moment later
            self.ddl_pending = False
            asyncio.get_running_loop().call_later(0.2, self.gate.on_ddl_committed, self)
        if not self.done.done():
            self.done.set_result(why)

    def upstream_lost(self) -> None:
        if self.closed:
            return
        if self._upstream_fatal:
            # e.g. pg_terminate_backend: the client has the server's own FATAL
            # (57P01 "terminating connection due to administrator command")
            self.close("upstream ended the session")
            return
        try:
            self.client_transport.write(codec.encode_error(
                "08006", "the connection to the database was lost",
                severity="FATAL", hint="reconnect; if it keeps happening, check the database server"))
        except Exception:
            pass
        self.close("upstream lost")

    def resume_client(self) -> None:
        if not self.closed and not self._busy:
            self.client_transport.resume_reading()

    def send_client(self, data: bytes) -> None:
        if not self.closed:
            self.client_transport.write(data)

    def fatal(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        self.send_client(codec.encode_error(sqlstate, message, severity="FATAL", hint=hint))
        self.close(message)

    # -- client -> upstream ----------------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        self.last_activity = _monotonic()
        if self._cbuf or self._busy:
            self._cbuf += data
            if not self._busy:
                self._drain_client(self._cbuf)
        else:
            # the common case, whole messages in one read: framed and forwarded from
            # the bytes as received, without copying them into the buffer and out
            self._drain_client(data)

    def _consumed(self, buf: "bytes | bytearray", upto: int) -> None:
        """Keep what follows ``upto`` for the next read (the buffer is empty when
        ``buf`` is a read's own bytes)."""
        if buf is self._cbuf:
            del buf[:upto]
        elif upto < len(buf):
            self._cbuf += buf[upto:]

    def _drain_client(self, buf: "bytes | bytearray") -> None:
        """Frame the client's bytes. Runs of messages that pass unchanged are written
        upstream as one slice; only Query/Parse/FunctionCall (and Bind, for gates that
        watch executions) are shown to the Gate."""
        n = len(buf)
        pos = 0
        start = 0               # first byte of the run of unchanged messages
        out: list | None = None  # chunks, once something was replaced
        kinds = _CLIENT_KIND
        max_message = self.max_message
        binds = self.gate.watches_binds
        strict = self.strict
        try:
            while n - pos >= 5:
                t, length = _TYPE_LEN(buf, pos)
                end = pos + 1 + length
                kind = kinds[t]
                if kind == 0 or length < 4 or length > max_message:
                    raise codec.frontend_violation(t, length, max_message)
                if end > n:
                    break
                if kind == 1:                                # nothing to look at
                    pos = end
                    continue
                if strict:
                    # PostgreSQL drops what it receives in some states without a word:
                    # a Sync during COPY FROM STDIN (a Query then is lost in an error),
                    # and a Query after an extended-protocol message that failed, up to
                    # the Sync. The gate would count and believe such a message (a SET
                    # search_path, a DEALLOCATE) while the server never ran it, so a
                    # session under policy may not send one.
                    if self.copies_pending and kind != 9 and self.copy_until > self.ready_count:
                        raise ProtocolViolation(
                            "only CopyData, CopyDone and CopyFail may follow COPY ... FROM STDIN until it ends")
                    if self.unsynced and (kind == 3 or kind == 6):
                        raise ProtocolViolation(
                            "a Query or FunctionCall was sent before the Sync that ends the extended-protocol "
                            "messages before it")
                if kind >= 8:
                    if kind != 9:                            # Describe/Execute/Flush/Close
                        self.unsynced = True
                        if kind == 10 and strict:            # Close: the gate forgets the name
                            self.gate.on_close(self, buf[pos + 5:end])
                    elif self.copies_pending:                # CopyDone/CopyFail: that copy ends
                        self.copies_pending -= 1
                    pos = end
                    continue
                if kind == 2:                                # Sync: a ReadyForQuery will answer
                    self.inflight += 1
                    self.unsynced = False
                    pos = end
                    continue
                if kind == 5:                                # Terminate
                    self._write_upstream(out, buf, start, end)
                    self._consumed(buf, end)
                    self.close("client terminated")
                    return
                if kind == 7:                                # Bind
                    self.unsynced = True
                    if not binds:
                        pos = end
                        continue
                    frame = bytes(buf[pos:end])
                    verdict = self.gate.on_bind(self, frame)
                    if verdict is None:
                        pos = end
                        continue
                elif kind == 3:                              # Query
                    self.inflight += 1
                    frame = bytes(buf[pos:end])
                    sql = None
                    if frame[-1] == 0 and frame.find(0, 5, len(frame) - 1) < 0:
                        try:
                            sql = frame[5:-1].decode(self.encoding)
                        except UnicodeDecodeError:
                            pass
                    if sql is None:                          # malformed: the codec says how
                        sql = codec.decode_frontend(b"Q", frame[5:], self.encoding).sql
                    verdict = self.gate.on_query(self, frame, sql)
                elif kind == 4:                              # Parse
                    self.unsynced = True
                    frame = bytes(buf[pos:end])
                    # drivers send the same Parse again and again (pgbench -M extended,
                    # JDBC before it prepares): its name and text are read once
                    parsed = self._parses.get(frame)
                    if parsed is None:
                        msg = codec.decode_frontend(b"P", frame[5:], self.encoding)
                        parsed = (msg.name, msg.sql)
                        if length <= 8192:                   # (bounded: 256 small texts)
                            if len(self._parses) >= 256:
                                self._parses.clear()
                            self._parses[frame] = parsed
                    verdict = self.gate.on_parse(self, frame, parsed[0], parsed[1])
                else:                                        # FunctionCall
                    self.inflight += 1
                    frame = bytes(buf[pos:end])
                    verdict = self.gate.on_function_call(self, frame)
                if isinstance(verdict, Verdict):
                    if (verdict.upstream is frame and not verdict.client and not verdict.rewrites
                            and not verdict.close):
                        pos = end                            # passes as is: stays in the run
                        continue
                    if out is None:
                        out = []
                    if pos > start:
                        out.append(bytes(buf[start:pos]))
                    pos = start = end
                    self._apply(verdict, out)
                    if verdict.close:
                        return
                else:
                    # async verdict: flush what we have, pause the client, resume after
                    self._write_upstream(out, buf, start, pos)
                    self._consumed(buf, end)
                    self._busy = True
                    self.pending_frame = frame
                    self.cancel_requested = False
                    self.client_transport.pause_reading()
                    task = self._verdict_task = asyncio.ensure_future(self._await_verdict(verdict))
                    self.gateway.track(task)
                    return
        except ProtocolViolation as e:
            self._write_upstream(out, buf, start, pos)
            self.fatal(e.sqlstate, f"protocol violation: {e}", "the client sent something that is not "
                       "PostgreSQL protocol 3.0; this connection is closed, others are unaffected")
            return
        if out is None:                                  # (_write_upstream's common case)
            if pos > start:
                self.upstream_transport.write(buf if pos - start == n and type(buf) is bytes else buf[start:pos])
        else:
            self._write_upstream(out, buf, start, pos)
        if pos < n or buf is self._cbuf:
            self._consumed(buf, pos)

    def _from_client_plain(self, data: bytes) -> None:
        """from_client of a plain session (Gate.plain): frame the messages, show the
        Gate's on_plain_statement the SQL it has not let go yet, forward in bulk. The
        relay's hottest code: one frame per read, no verdicts, nothing ever paused."""
        self.last_activity = _monotonic()
        cbuf = self._cbuf
        buf = data
        if cbuf:
            cbuf += data
            buf = cbuf
        n = len(buf)
        pos = 0
        kinds = _CLIENT_KIND
        max_message = self.max_message
        try:
            while n - pos >= 5:
                t, length = _TYPE_LEN(buf, pos)
                end = pos + 1 + length
                kind = kinds[t]
                if kind == 0 or length < 4 or length > max_message:
                    raise codec.frontend_violation(t, length, max_message)
                if end > n:
                    break
                if kind >= 7 or kind == 1:                   # nothing to look at
                    pos = end
                    continue
                if kind == 3:                                # Query
                    self.inflight += 1
                    skip = self.gate.plain_statement_skip
                    if (buf[end - 1] != 0 or skip is None or skip.fullmatch(buf, pos + 5, end - 1) is None):
                        self._plain_statement(kind, buf, pos, end)
                elif kind == 4:                              # Parse
                    # drivers re-Parse the same statement: the same text as last time
                    # has been seen
                    if buf[pos:end] != self._plain_last:
                        self._plain_statement(kind, buf, pos, end)
                elif kind == 5:                              # Terminate
                    self.upstream_transport.write(buf[:end])
                    self._consumed(buf, end)
                    self.close("client terminated")
                    return
                else:                                        # Sync, FunctionCall: a
                    self.inflight += 1                       # ReadyForQuery will answer
                pos = end
        except ProtocolViolation as e:
            if pos:
                self.upstream_transport.write(buf[:pos])
            self.fatal(e.sqlstate, f"protocol violation: {e}", "the client sent something that is not "
                       "PostgreSQL protocol 3.0; this connection is closed, others are unaffected")
            return
        if pos:
            # a bytearray's slice is a copy the transport may keep while it changes
            self.upstream_transport.write(data if buf is data and pos == n else buf[:pos])
        if buf is cbuf:
            del cbuf[:pos]
        elif pos < n:
            cbuf += buf[pos:]

    def _plain_statement(self, kind: int, buf: "bytes | bytearray", pos: int, end: int) -> None:
        """A plain session's Query or Parse the Gate has not let go yet: check its
        framing, show it the SQL (Gate.on_plain_statement)."""
        span = _statement_span(kind, buf, pos + 5, end)
        if span is None:
            raise ProtocolViolation(f"malformed {'Query' if kind == 3 else 'Parse'} message")
        hook = self.gate.on_plain_statement
        if hook is None or hook(self, bytes(buf[span[0]:span[1]])):
            self._plain_last = bytes(buf[pos:end])

    def _write_upstream(self, out: list | None, buf: "bytes | bytearray", start: int, pos: int) -> None:
        """Write the chunks gathered so far plus the unchanged run buf[start:pos]
        (a slice is a copy, so the transport may keep it while the buffer changes)."""
        if out:
            if pos > start:
                out.append(buf[start:pos])
            self.upstream_transport.write(b"".join(out))
        elif pos > start:
            self.upstream_transport.write(buf if pos - start == len(buf) and type(buf) is bytes else buf[start:pos])

    def _apply(self, verdict: Verdict, out: list) -> None:
        if verdict.client:
            self.client_transport.write(verdict.client)
        if verdict.rewrites:
            # answered after the ReadyForQuery of everything sent before it (a Query
            # counts itself in inflight; a Parse/Bind's Sync is not counted yet)
            ahead = self.inflight - (1 if (verdict.upstream or b"")[:1] == b"Q" else 0)
            self._rewrites.extend([marker, error, ahead] for marker, error in verdict.rewrites)
        if verdict.upstream:
            out.append(verdict.upstream)
        if verdict.close:
            if out:
                self.upstream_transport.write(b"".join(out))
            self.close("closed by the gateway")

    async def _await_verdict(self, pending: Awaitable[Verdict]) -> None:
        try:
            verdict = await pending
        except asyncio.CancelledError:
            self.close("cancelled")
            raise
        except Exception as e:                     # a bug must not leave the session hanging
            log.exception("gate failed")
            verdict = Verdict(b"", codec.encode_error("XX000", f"piigate internal error: {e}",
                                                      hint="the statement was not run; report this"))
            self.fatal("XX000", "piigate internal error; the session is closed to stay safe")
            return
        if self.closed:
            return
        if self.cancel_requested:
            self.cancel_requested = False
            if verdict.upstream and not verdict.rewrites and not verdict.close:
                verdict = self.cancelled_verdict()
        out: list = []
        self._apply(verdict, out)
        if out:
            self.upstream_transport.write(b"".join(out))
        self._busy = False
        if self.closed:
            return
        self._drain_client(self._cbuf)
        if not self._busy and not self.closed:
            self.client_transport.resume_reading()

    def cancelled_verdict(self) -> Verdict:
        """The client cancelled the statement it is waiting for while that statement was
        still in the gateway (its audit record being written, or waiting for a schema
        read): PostgreSQL drops a cancel that reaches an idle backend, so the gateway
        answers the statement with 57014 itself and it never runs."""
        frame = self.pending_frame
        kind = frame[:1]
        name = codec.decode_frontend(b"P", frame[5:], self.encoding).name if kind == b"P" else ""
        return failing_verdict(kind, _CANCELLED, self.encoding, name=name)

    def set_client_encoding(self, name: str) -> None:
        """The client's encoding decides how Query/Parse bytes are read. Encodings that
        can hide ASCII quotes inside multibyte characters are read as Latin-1 and
        flagged (the Gate refuses statements of sessions under policy then)."""
        self.client_encoding = name
        self._parses = {}             # Parse frame -> (name, text), read in this encoding
        codec_name = codec.CLIENT_ENCODINGS.get(name.upper().replace("-", "_"))
        self.encoding_supported = codec_name is not None
        self.encoding = codec_name or "latin-1"

    def take_outcome(self) -> tuple[str | None, int, int]:
        """(first SQLSTATE or None, rows, bytes) since the last call."""
        out = (self._out_error, self._out_rows, self._out_bytes)
        self._out_error, self._out_rows, self._out_bytes = None, 0, 0
        return out

    # -- upstream -> client -------------------------------------------------------------------
    def from_upstream(self, data: bytes) -> None:
        """Forward upstream bytes in bulk. Only the headers are read; a message is
        looked at (and held back until it is whole) when its type is special in this
        session: ReadyForQuery, ParameterStatus, NotificationResponse and
        CopyBothResponse always, errors/notices when they may be rewritten or
        scrubbed, CommandComplete/ErrorResponse when outcomes are recorded."""
        if self._up_pending:
            data = self._up_pending + data
            self._up_pending = b""
        n = len(data)
        track = self.track
        if track:
            self._out_bytes += n
        pos = self._up_skip
        if pos >= n:
            self._up_skip = pos - n
            self.client_transport.write(data)
            return
        watch_errors = bool(self._rewrites) or self._scrub
        special = _UP_SPECIAL[(2 if watch_errors else 0) + (1 if track else 0)]
        pieces = None           # set when we must change something
        last = 0                # start of bytes not yet copied into pieces
        while True:
            if n - pos < 5:
                self._up_pending = data[pos:]
                cut = pos
                self._up_skip = 0
                break
            t, length = _TYPE_LEN(data, pos)
            end = pos + 1 + length
            while not special[t] and end <= n - 5:          # a run nobody needs to see
                pos = end
                t, length = _TYPE_LEN(data, pos)
                end = pos + 1 + length
            if special[t]:
                if end > n:                                 # seen again when it is whole
                    self._up_pending = data[pos:]
                    cut = pos
                    self._up_skip = 0
                    if track:
                        self._out_bytes -= n - pos
                    break
                if t == 0x5A:                               # ReadyForQuery
                    # (the idle sweeper notices ready_count move: no clock read here)
                    self.tx_status = _CHR[data[pos + 5]]
                    self.ready_count += 1
                    if self.inflight > 0:
                        self.inflight -= 1
                    if self._rewrites:
                        # a rewrite never outlives its sync point; later ones wait for theirs
                        self._rewrites = [r for r in self._rewrites if r[2] > 0]
                        for r in self._rewrites:
                            r[2] -= 1
                        watch_errors = bool(self._rewrites) or self._scrub
                        special = _UP_SPECIAL[(2 if watch_errors else 0) + (1 if track else 0)]
                    if not self.plain:
                        self.gate.on_ready(self, self.tx_status)
                    if self.ddl_pending and self.tx_status == "I":
                        self.ddl_pending = False
                        self.gate.on_ddl_committed(self)
                elif t == 0x45 or t == 0x4E:                # ErrorResponse / NoticeResponse
                    if t == 0x45:
                        self.errors_seen += 1
                        err = codec.decode_error_fields(data[pos + 5:end])
                        if (err.fields.get("V") or err.fields.get("S")) in ("FATAL", "PANIC"):
                            self._upstream_fatal = True
                        if track and self._out_error is None:
                            self._out_error = err.sqlstate or "XX000"
                    if watch_errors:
                        replacement = self._rewrite_error(t, data[pos + 5:end])
                        if replacement is not None:
                            if pieces is None:
                                pieces = []
                            pieces.append(data[last:pos])
                            pieces.append(replacement)
                            last = end
                elif t == 0x43:                             # CommandComplete (outcomes recorded)
                    # the tag's last word, when a number, counts rows ("SELECT 1",
                    # "INSERT 0 5"); "BEGIN" has none
                    sp = data.rfind(b" ", pos + 6, end)
                    if sp > 0:
                        count = data[sp + 1:end - 1]
                        if count.isdigit():
                            self._out_rows += int(count)
                elif t == 0x53:                             # ParameterStatus
                    name, _, rest = data[pos + 5:end].partition(b"\x00")
                    if name == b"client_encoding":
                        self.set_client_encoding(rest.rstrip(b"\x00").decode("ascii", "replace"))
                    elif name == b"standard_conforming_strings":
                        self.standard_strings = rest.rstrip(b"\x00") == b"on"
                elif t == 0x41:                             # NotificationResponse
                    # under PII policy a payload is withheld: a trigger can send
                    # row_to_json(NEW) of a customer, and nothing there is masked.
                    # (The sender's pid needs no translating: clients' keys carry
                    # the upstream backends' own pids.)
                    channel_end = data.find(b"\x00", pos + 9, end) if self._scrub else -1
                    if channel_end >= 0 and channel_end + 2 < end:
                        if pieces is None:
                            pieces = []
                        pieces.append(data[last:pos])
                        channel = data[pos + 9:channel_end + 1]
                        pieces.append(b"A" + _I32.pack(4 + 4 + len(channel) + 1) + data[pos + 5:pos + 9]
                                      + channel + b"\x00")
                        last = end
                else:                                       # CopyBothResponse: replication only
                    self.fatal("0A000", "COPY BOTH (replication) is not supported through piigate")
                    return
            pos = end
            if pos >= n:
                self._up_skip = pos - n
                cut = n
                break
        if pieces is None:
            if cut:
                self.client_transport.write(data if cut == n else data[:cut])
        else:
            pieces.append(data[last:cut])
            self.client_transport.write(b"".join(pieces))

    def _rewrite_error(self, t: int, body: bytes) -> bytes | None:
        if t == 0x45 and self._rewrites:
            for i, (marker, replacement, _) in enumerate(self._rewrites):
                if marker.encode() in body:
                    del self._rewrites[i]
                    return replacement
        if self._scrub:
            return self.gate.on_upstream_error(self, body if t == 0x45 else b"N" + body)
        return None


# ---------------------------------------------------------------------------------------
# the server


class Gateway:
    def __init__(self, config: Config, gate: Gate | None = None):
        self.config = config
        self.gate = gate or Gate()
        self.sessions: dict[tuple[int, bytes], Relay] = {}
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._connections: set[asyncio.Task] = set()   # one per client connection, to its end
        self._handshakes: set[asyncio.Task] = set()
        self._ssl_ctx = self._make_ssl()
        self._sweeper: asyncio.Task | None = None
        self.auth_failures = 0
        self.on_auth_failure: Callable[[str, str], None] | None = None
        #: (user, database, client address, SQLSTATE, message): an authenticated user got no session
        self.on_session_refused: Callable[[str, str, str, str, str], None] | None = None
        self.on_session: Callable[[str, ClientInfo], None] | None = None
        counts: dict[int, int] = {}
        for u in config.users.values():
            counts[u.verifier.iterations] = counts.get(u.verifier.iterations, 0) + 1
        self._mock_iterations = max(counts, key=counts.get) if counts else 4096

    def _make_ssl(self) -> ssl.SSLContext | None:
        s = self.config.server
        if not s.tls_cert:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(s.tls_cert, s.tls_key)
        return ctx

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    def track(self, task: asyncio.Task) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        s = self.config.server
        self._server = await asyncio.start_server(self._on_connect, s.host, s.port, backlog=1024,
                                                  reuse_address=True)
        if s.idle_timeout_s > 0:
            self._sweeper = asyncio.ensure_future(self._sweep_idle(s.idle_timeout_s))
        log.info("piigate listening on %s:%d", s.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._sweeper:
            self._sweeper.cancel()
        for relay in list(self.sessions.values()):
            relay.fatal("57P01", "the gateway is shutting down", "reconnect in a moment")
        for t in list(self._handshakes) + list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._handshakes, *self._tasks, return_exceptions=True)
        # each ended session's own task records its end (session_ended: the audit
        # trail's session.close record), and the trail is closed after this returns
        connections = [t for t in self._connections if t is not asyncio.current_task()]
        if connections:
            await asyncio.wait(connections, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    async def serve_forever(self) -> None:
        await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def _sweep_idle(self, idle: float) -> None:
        while True:
            await asyncio.sleep(min(idle / 2, 5))
            now = time.monotonic()
            for relay in list(self.sessions.values()):
                if relay.ready_count != relay.swept_ready:
                    # answers came since the last sweep (the relay does not read the
                    # clock per ReadyForQuery): the session was active until now
                    relay.swept_ready = relay.ready_count
                    relay.last_activity = now
                elif (now - relay.last_activity > idle and relay.tx_status == "I" and not relay._busy
                        and relay.inflight == 0):
                    relay.fatal("57P05", f"closed after {idle:g} s idle (server.idle_timeout)",
                                "reconnect when you need the connection again")

    # -- one connection --------------------------------------------------------------------
    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            await self._connection(task, reader, writer)
        finally:
            self._connections.discard(task)

    async def _connection(self, task: asyncio.Task, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self._handshakes.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.config.server.tcp_keepalive:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:
                pass
        relay = None
        try:
            relay = await asyncio.wait_for(self._handshake(reader, writer),
                                           self.config.server.startup_timeout_s)
        except asyncio.TimeoutError:
            _try_write(writer, codec.encode_error("08006", "startup took too long; closing",
                                                  severity="FATAL"))
        except _Refused as r:
            _try_write(writer, r.payload)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        except asyncio.CancelledError:
            writer.close()
            raise
        except Exception:
            log.exception("unexpected error during startup")
            _try_write(writer, codec.encode_error("XX000", "piigate internal error during startup",
                                                  severity="FATAL"))
        finally:
            self._handshakes.discard(task)
        if relay is None:
            writer.close()
            return
        try:
            why = await relay.done
        finally:
            self.sessions.pop(relay.key, None)
            relay.close()
            try:
                self.gate.session_ended(relay)
            except Exception:
                log.exception("session_ended hook failed")
            if self.on_session:
                self.on_session("close", relay.info)

    async def _handshake(self, reader, writer) -> "Relay | None":
        s = self.config.server
        parser = FrontendParser(s.max_message_size)
        tls = False
        peer = writer.get_extra_info("peername")
        client_addr = peer[0] if isinstance(peer, tuple) else "local"
        while True:
            msg = await _read_message(reader, parser)
            if isinstance(msg, SSLRequest):
                if tls:
                    raise _refuse("08P01", "SSLRequest received twice")
                if self._ssl_ctx is None:
                    writer.write(b"N")
                    continue
                if parser.take_buffer():
                    raise _refuse("08P01", "data received after SSLRequest before the TLS handshake")
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self._ssl_ctx)
                tls = True
                continue
            if isinstance(msg, GSSENCRequest):
                writer.write(b"N")
                continue
            if isinstance(msg, CancelRequest):
                await self._cancel(msg)
                return None
            if isinstance(msg, StartupMessage):
                break
            raise _refuse("08P01", "expected a startup message")
        if s.require_tls and not tls:
            raise _refuse("28000", "this gateway requires TLS",
                          "connect with sslmode=require (or stronger)")
        params = msg.params
        negotiate = _negotiation(msg)
        if negotiate:
            writer.write(negotiate)
        user_name = params.get("user", "")
        if not user_name:
            raise _refuse("28000", "no user name in the startup packet", "connect with a user name")
        parser.started()       # from here on every client message is typed
        user = await self._authenticate(reader, writer, parser, user_name, client_addr)
        database = params.get("database") or user_name
        try:
            return await self._open_session(reader, writer, parser, params, user, database, client_addr, tls)
        except _Refused as r:
            # an authenticated user who got no session (no access to the database, a
            # refused startup option, the database unreachable): the auditor sees it
            if self.on_session_refused is not None:
                try:
                    self.on_session_refused(user.name, database, client_addr, r.sqlstate, r.message)
                except Exception:
                    log.exception("on_session_refused hook failed")
            raise

    async def _open_session(self, reader, writer, parser: FrontendParser, params: dict, user, database: str,
                            client_addr: str, tls: bool) -> "Relay":
        """After authentication: check the user may have this session, connect
        upstream, hand the client the upstream's parameters and the gateway's key."""
        if user.databases and database not in user.databases:
            raise _refuse("42501", f"gateway user \"{user.name}\" may not connect to database \"{database}\"")
        refused = self.gate.database_refusal(user, database)
        if refused is not None:
            raise _refuse("42501", *refused)
        try:
            settings = startup_settings(params, restricted=self.gate.restricted(user))
        except StartupRefused as e:
            raise _refuse(e.sqlstate, str(e), e.hint) from None
        upstream_params = dict(settings.upstream)
        upstream_params["database"] = database
        try:
            upstream = await connect_upstream(self.config.upstream, upstream_params)
        except UpstreamError as e:
            if e.upstream_error is not None and not e.sqlstate.startswith("08"):
                # e.g. 3D000 database does not exist: the client needs the real reason
                raise _Refused(codec.encode_error(e.sqlstate, e.upstream_error.message, severity="FATAL",
                                                  hint=e.upstream_error.fields.get("H")),
                               e.sqlstate, e.upstream_error.message) from None
            raise _refuse(e.sqlstate, str(e), e.hint) from None
        info = ClientInfo(user, database, params.get("application_name", ""), client_addr, params, tls,
                          search_path=settings.search_path)
        if writer.transport.is_closing():
            # the client reset the connection while we connected upstream: uvloop's
            # write would raise (an "unexpected error" logged, the upstream session
            # left open until collected); end the upstream session now instead
            upstream.writer.write(codec.frame(b"X"))
            upstream.writer.close()
            raise ConnectionResetError("the client disconnected during startup")
        key = self._new_key(upstream.backend_pid)
        out = [codec.encode_auth(0)]
        for name, value in upstream.parameters.items():
            out.append(codec.encode_parameter_status(name, value))
        out.append(codec.encode_backend_key(*key))
        writer.write(b"".join(out))
        relay = Relay(self, info, writer.transport, upstream, key)
        try:
            self.gate.session_started(relay)
        except Exception as e:
            upstream.writer.close()
            raise _refuse("XX000", f"piigate could not start the session: {e}") from None
        self.sessions[key] = relay
        if self.on_session:
            self.on_session("open", info)
        writer.write(codec.encode_ready(upstream.tx_status))
        leftover = parser.take_buffer() + _take_stream_buffer(reader)
        # the client may have gone while we connected upstream: its EOF went to the
        # StreamReader, which the relay replaces, so look now
        client_gone = writer.transport.is_closing() or reader.at_eof() or reader.exception() is not None
        relay.start(leftover, upstream.leftover + _take_stream_buffer(upstream.reader))
        if client_gone:
            relay.close("client disconnected during startup")
        return relay

    async def _authenticate(self, reader, writer, parser, user_name: str, client_addr: str) -> GatewayUser:
        user = self.config.users.get(user_name)
        scram = ScramServer(user.verifier if user else None, mock_salt=mock_salt(user_name),
                            mock_iterations=self._mock_iterations)
        writer.write(codec.encode_auth(10, MECHANISM.encode() + b"\x00\x00"))
        try:
            first = await _read_message(reader, parser)
            if not isinstance(first, PasswordMessage):
                raise _refuse("08P01", "expected a SASLInitialResponse")
            mech, _, rest = first.data.partition(b"\x00")
            if mech.decode(errors="replace") != MECHANISM or len(rest) < 4:
                raise _refuse("28000", f"unsupported SASL mechanism; piigate uses {MECHANISM}")
            (n,) = _I32.unpack_from(rest, 0)
            server_first = scram.client_first(rest[4:4 + n] if n >= 0 else b"")
            writer.write(codec.encode_auth(11, server_first))
            final = await _read_message(reader, parser)
            if not isinstance(final, PasswordMessage):
                raise _refuse("08P01", "expected a SASLResponse")
            server_final = scram.client_final(final.data)
        except ScramError:
            self.auth_failures += 1
            if self.on_auth_failure:
                self.on_auth_failure(user_name, client_addr)
            raise _refuse("28P01", f"password authentication failed for user \"{user_name}\"",
                          "check the user name and password of your gateway account") from None
        writer.write(codec.encode_auth(12, server_final))
        return user

    def _new_key(self, upstream_pid: int) -> tuple[int, bytes]:
        """The client's BackendKeyData: the upstream backend's own pid, so that
        pg_backend_pid(), pg_terminate_backend() and NOTIFY senders mean to the client
        what they mean to PostgreSQL, with a secret of the gateway's own: the
        upstream's secret never leaves the gateway, and a CancelRequest is honoured
        only with the secret this client was given."""
        while True:
            key = (upstream_pid or secrets.randbits(31) or 1, secrets.token_bytes(4))
            if key not in self.sessions:
                return key

    async def _cancel(self, msg: CancelRequest) -> None:
        relay = self.sessions.get((msg.pid, msg.secret))
        if relay is None:
            return           # like PostgreSQL: no answer, whatever the key
        held = relay.state.get("cancel")
        if held is not None:
            held.set()       # a statement held (approval, schema read): never sent upstream
            return
        if relay._busy:
            relay.cancel_requested = True      # still in the gateway: answered with 57014
        up = relay.upstream_conn
        await send_cancel(self.config.upstream, up.backend_pid, up.backend_secret)


class _Refused(Exception):
    """A connection refused during startup: ``payload`` is the ErrorResponse to send."""

    def __init__(self, payload: bytes, sqlstate: str = "", message: str = ""):
        self.payload = payload
        self.sqlstate = sqlstate
        self.message = message


def _refuse(sqlstate: str, message: str, hint: str | None = None) -> _Refused:
    return _Refused(codec.encode_error(sqlstate, message, severity="FATAL", hint=hint), sqlstate, message)


def _negotiation(msg: StartupMessage) -> bytes:
    """NegotiateProtocolVersion when the client asks for a newer minor or _pq_ options."""
    minor = msg.protocol & 0xFFFF
    unsupported = [k for k in msg.params if k.startswith("_pq_.")]
    if minor == 0 and not unsupported:
        return b""
    body = _I32.pack(3 << 16) + _I32.pack(len(unsupported)) + b"".join(
        k.encode() + b"\x00" for k in unsupported)
    return codec.frame(b"v", body)


async def _read_message(reader: asyncio.StreamReader, parser: FrontendParser):
    while True:
        try:
            msg = parser.next_message()
        except ProtocolViolation as e:
            raise _refuse(e.sqlstate, f"protocol violation: {e}") from None
        if msg is not None:
            return msg
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("client closed the connection during startup")
        parser.feed(data)


def _take_stream_buffer(reader: asyncio.StreamReader) -> bytes:
    # The relay takes the transport over from the StreamReader; bytes the reader already
    # buffered (a pipelining client) must not be lost.
    buf = getattr(reader, "_buffer", None)
    if not buf:
        return b""
    data = bytes(buf)
    buf.clear()
    return data


def _try_write(writer: asyncio.StreamWriter, data: bytes) -> None:
    try:
        if not writer.is_closing():
            writer.write(data)
    except Exception:
        pass


def install_uvloop() -> bool:
    """Use uvloop when available: measured +5-10 % TPS for the relay."""
    if os.environ.get("PIIGATE_NO_UVLOOP"):
        return False
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
