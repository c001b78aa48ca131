"""Sans-IO codec for the PostgreSQL 3.0 wire protocol (bytes in, messages out, and back).

Like h11: ``parser.feed(data)`` then ``parser.next_message()`` until it returns
``None``; ``encode_*`` functions turn messages into bytes. Nothing here touches a
socket. A message that breaks the protocol raises ``ProtocolViolation`` naming what
was wrong, with SQLSTATE 08P01 for the client.
"""
from __future__ import annotations

import struct
from enum import Enum

from .messages import (
    CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, PROTOCOL_3_0, SSL_REQUEST_CODE,
    Authentication, BackendKeyData, Bind, CancelRequest, Close, Describe,
    ErrorResponse, Execute, Flush, GSSENCRequest, Opaque, ParameterStatus, Parse,
    PasswordMessage, Query, ReadyForQuery, SSLRequest, StartupMessage, Sync, Terminate,
)

_I32 = struct.Struct("!i")
_HDR = struct.Struct("!ci")     # type byte + length (length counts itself, not the type)
_I16 = struct.Struct("!h")

DEFAULT_MAX_MESSAGE = 1 << 20   # 1 MiB; COPY data and big queries may need more (configurable)

#: PostgreSQL client encodings the gateway reads SQL in, as Python codecs. Only
#: encodings where every byte below 0x80 is ASCII (so quotes and backslashes cannot
#: hide inside a multibyte character): SJIS, BIG5, GBK, UHC, GB18030 and JOHAB are not.
CLIENT_ENCODINGS = {
    "UTF8": "utf-8", "UNICODE": "utf-8", "SQL_ASCII": "latin-1", "LATIN1": "latin-1",
    "LATIN2": "iso8859-2", "LATIN3": "iso8859-3", "LATIN4": "iso8859-4", "LATIN5": "iso8859-9",
    "LATIN6": "iso8859-10", "LATIN7": "iso8859-13", "LATIN8": "iso8859-14", "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16", "ISO_8859_5": "iso8859-5", "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7", "ISO_8859_8": "iso8859-8", "WIN866": "cp866", "WIN874": "cp874",
    "WIN1250": "cp1250", "WIN1251": "cp1251", "WIN1252": "cp1252", "WIN1253": "cp1253",
    "WIN1254": "cp1254", "WIN1255": "cp1255", "WIN1256": "cp1256", "WIN1257": "cp1257",
    "WIN1258": "cp1258", "KOI8R": "koi8-r", "KOI8U": "koi8-u", "EUC_JP": "euc_jp",
    "EUC_KR": "euc_kr", "EUC_CN": "gb2312",
}
MAX_STARTUP = 10_000            # PostgreSQL's own limit for a startup packet

#: message types a client may send once started (protocol 3.0)
FRONTEND_TYPES = frozenset(b"QPBDECSHXpdcfF")
#: message types a server may send
BACKEND_TYPES = frozenset(b"RSKZECDTtnNAIsGHWdcv123")


class ProtocolViolation(Exception):
    """The peer broke the protocol. ``sqlstate`` is what the client is told."""

    def __init__(self, message: str, sqlstate: str = "08P01"):
        super().__init__(message)
        self.sqlstate = sqlstate


def frontend_violation(mtype: int, length: int, max_message: int) -> ProtocolViolation:
    """What is wrong with a frontend message header that is not acceptable: an unknown
    type, a length under 4, or a message over the configured limit (54000)."""
    if mtype not in FRONTEND_TYPES:
        return ProtocolViolation(f"unknown frontend message type {chr(mtype)!r} (0x{mtype:02x})")
    if length < 4:
        return ProtocolViolation(f"invalid message length {length} for message type {chr(mtype)!r}")
    return ProtocolViolation(f"message of {length} bytes exceeds the gateway's limit of {max_message} "
                             "bytes (server.max_message_size)", "54000")


class ParserState(Enum):
    STARTUP = "startup"      # untyped messages: StartupMessage / SSLRequest / ...
    TYPED = "typed"          # after a StartupMessage: type byte + length


class FrontendParser:
    """Turns client bytes into frontend messages.

    Starts in STARTUP (untyped) state; ``started()`` switches to TYPED once the
    startup packet has been accepted (SSLRequest and GSSENCRequest keep it in
    STARTUP, as the real startup packet follows them).
    """

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE):
        self.max_message = max_message
        self.state = ParserState.STARTUP
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def started(self) -> None:
        if self.state is not ParserState.STARTUP:
            raise RuntimeError("FrontendParser.started() called twice")
        self.state = ParserState.TYPED

    def take_buffer(self) -> bytes:
        """Hand over unparsed bytes (when the relay takes over the connection)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def next_message(self):
        if self.state is ParserState.STARTUP:
            return self._next_startup()
        return self._next_typed()

    def _next_startup(self):
        buf = self._buf
        if len(buf) < 4:
            return None
        (length,) = _I32.unpack_from(buf, 0)
        if length < 8 or length > MAX_STARTUP:
            raise ProtocolViolation(
                f"invalid startup packet length {length}: this does not look like a "
                "PostgreSQL client (is it speaking TLS or HTTP to the database port?)")
        if len(buf) < length:
            return None
        body = bytes(buf[4:length])
        del buf[:length]
        (code,) = _I32.unpack_from(body, 0)
        if code == SSL_REQUEST_CODE and length == 8:
            return SSLRequest()
        if code == GSSENC_REQUEST_CODE and length == 8:
            return GSSENCRequest()
        if code == CANCEL_REQUEST_CODE:
            if not 12 <= length <= 12 + 256:
                raise ProtocolViolation("invalid CancelRequest length")
            (pid,) = _I32.unpack_from(body, 4)
            return CancelRequest(pid, body[8:])
        if code >> 16 != 3:
            raise ProtocolViolation(
                f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
                "piigate speaks protocol 3.0")
        return StartupMessage(code, _decode_params(body[4:]))

    def _next_typed(self):
        buf = self._buf
        if len(buf) < 5:
            return None
        mtype = buf[0]
        (length,) = _I32.unpack_from(buf, 1)
        if mtype not in FRONTEND_TYPES or length < 4 or length > self.max_message:
            raise frontend_violation(mtype, length, self.max_message)
        if len(buf) < length + 1:
            return None
        body = bytes(buf[5:length + 1])
        del buf[:length + 1]
        return decode_frontend(bytes([mtype]), body)


def _decode_params(body: bytes) -> dict:
    parts = body.split(b"\x00")
    # ends with b"", b"" (param list terminator)
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"":
        raise ProtocolViolation("malformed startup packet: parameter list is not terminated")
    parts = parts[:-2]
    if len(parts) % 2:
        raise ProtocolViolation("malformed startup packet: parameter without a value")
    try:
        return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts), 2)}
    except UnicodeDecodeError:
        raise ProtocolViolation("malformed startup packet: parameters are not UTF-8") from None


def _cstr(body: bytes, pos: int, encoding: str = "utf-8") -> tuple[str, int]:
    end = body.find(b"\x00", pos)
    if end < 0:
        raise ProtocolViolation("malformed message: string is not NUL-terminated")
    try:
        return body[pos:end].decode(encoding), end + 1
    except UnicodeDecodeError:
        raise ProtocolViolation("malformed message: invalid UTF-8 in string", "22021") from None


def decode_frontend(mtype: bytes, body: bytes, encoding: str = "utf-8"):
    """Decode one typed frontend message body (text in the client's encoding)."""
    try:
        if mtype == b"Q":
            sql, pos = _cstr(body, 0, encoding)
            _expect_end(body, pos, "Query")
            return Query(sql)
        if mtype == b"P":
            name, pos = _cstr(body, 0, encoding)
            sql, pos = _cstr(body, pos, encoding)
            (n,) = _I16.unpack_from(body, pos)
            if n < 0:
                raise ProtocolViolation("malformed Parse: negative parameter count")
            types = struct.unpack_from(f"!{n}I", body, pos + 2)
            _expect_end(body, pos + 2 + 4 * n, "Parse")
            return Parse(name, sql, tuple(types))
        if mtype == b"B":
            portal, pos = _cstr(body, 0)
            stmt, pos = _cstr(body, pos)
            return Bind(portal, stmt, body)
        if mtype == b"D":
            if not body:
                raise ProtocolViolation("malformed Describe: empty")
            name, pos = _cstr(body, 1)
            return Describe(chr(body[0]), name)
        if mtype == b"E":
            portal, pos = _cstr(body, 0)
            (max_rows,) = _I32.unpack_from(body, pos)
            return Execute(portal, max_rows)
        if mtype == b"C":
            if not body:
                raise ProtocolViolation("malformed Close: empty")
            name, pos = _cstr(body, 1)
            return Close(chr(body[0]), name)
        if mtype == b"S":
            return Sync()
        if mtype == b"H":
            return Flush()
        if mtype == b"X":
            return Terminate()
        if mtype == b"p":
            return PasswordMessage(body)
    except struct.error:
        raise ProtocolViolation(f"malformed {mtype.decode()!r} message: too short") from None
    return Opaque(mtype, body)


def _expect_end(body: bytes, pos: int, what: str) -> None:
    if pos != len(body):
        raise ProtocolViolation(f"malformed {what} message: {len(body) - pos} trailing bytes")


# --- backend message parsing (the gateway is a client of the upstream) ------------

class BackendParser:
    """Turns server bytes into typed backend messages (for the upstream handshake)."""

    def __init__(self, max_message: int = 1 << 30):
        self.max_message = max_message
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def take_buffer(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def next_message(self):
        buf = self._buf
        if len(buf) < 5:
            return None
        mtype = buf[0]
        (length,) = _I32.unpack_from(buf, 1)
        if length < 4 or length > self.max_message:
            raise ProtocolViolation(f"upstream sent an invalid message length {length}", "08006")
        if len(buf) < length + 1:
            return None
        body = bytes(buf[5:length + 1])
        del buf[:length + 1]
        return decode_backend(bytes([mtype]), body)


def decode_backend(mtype: bytes, body: bytes):
    try:
        return _decode_backend(mtype, body)
    except (struct.error, IndexError):
        raise ProtocolViolation(f"upstream sent a malformed {mtype.decode(errors='replace')!r} message "
                                f"({len(body)} bytes)", "08006") from None


def _decode_backend(mtype: bytes, body: bytes):
    if mtype == b"R":
        (code,) = _I32.unpack_from(body, 0)
        return Authentication(code, body[4:])
    if mtype in (b"E", b"N"):
        return decode_error_fields(body, notice=(mtype == b"N"))
    if mtype == b"Z":
        return ReadyForQuery(chr(body[0]))
    if mtype == b"K":
        (pid,) = _I32.unpack_from(body, 0)
        return BackendKeyData(pid, body[4:])
    if mtype == b"S":
        name, pos = _cstr(body, 0)
        value, _ = _cstr(body, pos)
        return ParameterStatus(name, value)
    return Opaque(mtype, body)


def decode_error_fields(body: bytes, notice: bool = False, encoding: str = "utf-8") -> ErrorResponse:
    """An ErrorResponse/NoticeResponse body; the server writes its text in the
    session's client_encoding (``encoding``, a Python codec)."""
    fields = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        end = body.find(b"\x00", pos + 1)
        if end < 0:
            break
        fields[code] = body[pos + 1:end].decode(encoding, "replace")
        pos = end + 1
    return ErrorResponse(fields, notice)


# --- encoding ----------------------------------------------------------------------

def frame(mtype: bytes, body: bytes = b"") -> bytes:
    return mtype + _I32.pack(len(body) + 4) + body


def encode_error(sqlstate: str, message: str, *, severity: str = "ERROR",
                 detail: str | None = None, hint: str | None = None,
                 notice: bool = False, extra: dict | None = None) -> bytes:
    fields = {"S": severity, "V": severity, "C": sqlstate, "M": message}
    if detail:
        fields["D"] = detail
    if hint:
        fields["H"] = hint
    if extra:
        fields.update(extra)
    return encode_error_fields(fields, notice=notice)


def encode_error_fields(fields: dict, notice: bool = False, encoding: str = "utf-8") -> bytes:
    body = b"".join(k.encode() + str(v).encode(encoding, "replace") + b"\x00" for k, v in fields.items()) + b"\x00"
    return frame(b"N" if notice else b"E", body)


def encode_notice(message: str, *, detail: str | None = None, hint: str | None = None,
                  sqlstate: str = "00000", severity: str = "NOTICE") -> bytes:
    return encode_error(sqlstate, message, severity=severity, detail=detail, hint=hint, notice=True)


def encode_auth(code: int, data: bytes = b"") -> bytes:
    return frame(b"R", _I32.pack(code) + data)


def encode_parameter_status(name: str, value: str) -> bytes:
    return frame(b"S", name.encode() + b"\x00" + value.encode() + b"\x00")


def encode_backend_key(pid: int, secret: bytes) -> bytes:
    return frame(b"K", _I32.pack(pid) + secret)


def encode_ready(status: str) -> bytes:
    return frame(b"Z", status.encode())


def encode_startup(params: dict, protocol: int = PROTOCOL_3_0) -> bytes:
    body = _I32.pack(protocol) + b"".join(
        k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in params.items()) + b"\x00"
    return _I32.pack(len(body) + 4) + body


def encode_ssl_request() -> bytes:
    return _I32.pack(8) + _I32.pack(SSL_REQUEST_CODE)


def encode_cancel(pid: int, secret: bytes) -> bytes:
    body = _I32.pack(CANCEL_REQUEST_CODE) + _I32.pack(pid) + secret
    return _I32.pack(len(body) + 4) + body


def encode_query(sql: str, encoding: str = "utf-8") -> bytes:
    return frame(b"Q", sql.encode(encoding) + b"\x00")


def encode_parse(name: str, sql: str, param_types: tuple[int, ...] = (), encoding: str = "utf-8") -> bytes:
    return frame(b"P", name.encode(encoding) + b"\x00" + sql.encode(encoding) + b"\x00"
                 + struct.pack(f"!h{len(param_types)}I", len(param_types), *param_types))


def encode_password(data: bytes) -> bytes:
    return frame(b"p", data)


def encode_sasl_initial(mechanism: str, data: bytes) -> bytes:
    return frame(b"p", mechanism.encode() + b"\x00" + _I32.pack(len(data)) + data)


def encode_message(msg) -> bytes:
    """Encode any frontend or backend message value back to bytes."""
    if isinstance(msg, Query):
        return encode_query(msg.sql)
    if isinstance(msg, Parse):
        return encode_parse(msg.name, msg.sql, msg.param_types)
    if isinstance(msg, Bind):
        return frame(b"B", msg.raw)
    if isinstance(msg, Describe):
        return frame(b"D", msg.kind.encode() + msg.name.encode() + b"\x00")
    if isinstance(msg, Execute):
        return frame(b"E", msg.portal.encode() + b"\x00" + _I32.pack(msg.max_rows))
    if isinstance(msg, Close):
        return frame(b"C", msg.kind.encode() + msg.name.encode() + b"\x00")
    if isinstance(msg, Sync):
        return frame(b"S")
    if isinstance(msg, Flush):
        return frame(b"H")
    if isinstance(msg, Terminate):
        return frame(b"X")
    if isinstance(msg, PasswordMessage):
        return frame(b"p", msg.data)
    if isinstance(msg, Opaque):
        return frame(msg.type, msg.body)
    if isinstance(msg, StartupMessage):
        return encode_startup(msg.params, msg.protocol)
    if isinstance(msg, SSLRequest):
        return encode_ssl_request()
    if isinstance(msg, GSSENCRequest):
        return _I32.pack(8) + _I32.pack(GSSENC_REQUEST_CODE)
    if isinstance(msg, CancelRequest):
        return encode_cancel(msg.pid, msg.secret)
    if isinstance(msg, ErrorResponse):
        return encode_error_fields(msg.fields, notice=msg.notice)
    if isinstance(msg, ReadyForQuery):
        return encode_ready(msg.status)
    if isinstance(msg, BackendKeyData):
        return encode_backend_key(msg.pid, msg.secret)
    if isinstance(msg, Authentication):
        return encode_auth(msg.code, msg.data)
    if isinstance(msg, ParameterStatus):
        return encode_parameter_status(msg.name, msg.value)
    raise TypeError(f"cannot encode {msg!r}")


__all__ = [
    "FrontendParser", "BackendParser", "ParserState", "ProtocolViolation", "decode_frontend",
    "decode_backend", "decode_error_fields", "frame", "encode_error", "encode_error_fields",
    "encode_notice", "encode_auth", "encode_parameter_status", "encode_backend_key",
    "encode_ready", "encode_startup", "encode_ssl_request", "encode_cancel", "encode_query",
    "encode_parse", "encode_password", "encode_sasl_initial", "encode_message",
    "DEFAULT_MAX_MESSAGE", "PROTOCOL_3_0",
]
