"""The sans-IO wire codec: every message encodes and decodes back to itself, any
split of the byte stream yields the same messages, and malformed input is a
ProtocolViolation with the SQLSTATE the client will be told."""
from __future__ import annotations

import struct

import pytest

from gateway.protocol import codec
from gateway.protocol.codec import (
    BackendParser, FrontendParser, ParserState, ProtocolViolation, decode_backend,
    encode_message,
)
from gateway.protocol.messages import (
    CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, PROTOCOL_3_0, SSL_REQUEST_CODE,
    Authentication, BackendKeyData, Bind, CancelRequest, Close, Describe, ErrorResponse,
    Execute, Flush, GSSENCRequest, Opaque, ParameterStatus, Parse, PasswordMessage, Query,
    ReadyForQuery, SSLRequest, StartupMessage, Sync, Terminate,
)

I32 = struct.Struct("!i")


def bind_body(portal: str, stmt: str, params: list[bytes | None], result_formats=(1,)) -> bytes:
    """A real Bind body: formats, parameter values (None = NULL), result formats."""
    out = portal.encode() + b"\0" + stmt.encode() + b"\0"
    out += struct.pack("!hh", 1, 1)                        # one format code: binary
    out += struct.pack("!h", len(params))
    for p in params:
        out += I32.pack(-1) if p is None else I32.pack(len(p)) + p
    out += struct.pack(f"!h{len(result_formats)}h", len(result_formats), *result_formats)
    return out


# Every frontend message type a client may send after startup (protocol 3.0).
TYPED_FRONTEND = [
    Query("SELECT 1"),
    Query("SELECT 'é', '日本'; SELECT 2"),
    Query(""),
    Parse("", "SELECT $1::int", (23,)),
    Parse("stmt_1", "INSERT INTO t VALUES ($1, $2)", (23, 25)),
    Parse("s", "SELECT 1"),
    Bind("", "", bind_body("", "", [])),
    Bind("p1", "stmt_1", bind_body("p1", "stmt_1", [b"\x00\x00\x00\x2a", None, b"x" * 300])),
    Describe("S", "stmt_1"),
    Describe("P", ""),
    Execute("", 0),
    Execute("p1", 100),
    Close("S", "stmt_1"),
    Close("P", "p1"),
    Sync(),
    Flush(),
    Terminate(),
    PasswordMessage(b"md5abcdef0123456789abcdef01234567\0"),
    PasswordMessage(b"SCRAM-SHA-256\0\0\0\0\x05n,,n="),
    Opaque(b"d", b"1\tone\n"),                             # CopyData
    Opaque(b"c", b""),                                     # CopyDone
    Opaque(b"f", b"no more rows\0"),                        # CopyFail
    Opaque(b"F", I32.pack(1598) + struct.pack("!hh", 0, 0) + struct.pack("!h", 0)),   # FunctionCall
]

UNTYPED_FRONTEND = [
    StartupMessage(PROTOCOL_3_0, {"user": "alice", "database": "db", "application_name": "tëst"}),
    StartupMessage(PROTOCOL_3_0, {}),
    StartupMessage((3 << 16) | 2, {"user": "u", "_pq_.x": "1"}),      # 3.2 is still protocol 3
    SSLRequest(),
    GSSENCRequest(),
    CancelRequest(12345, b"\x01\x02\x03\x04"),
    CancelRequest(7, bytes(range(32))),                   # protocol 3.2 allows longer keys
]

BACKEND = [
    Authentication(0),
    Authentication(5, b"salt"),
    Authentication(10, b"SCRAM-SHA-256\0\0"),
    Authentication(11, b"r=abc,s=c2FsdA==,i=4096"),
    Authentication(12, b"v=c2lnbmF0dXJl"),
    ParameterStatus("server_version", "15.4"),
    ParameterStatus("application_name", ""),
    BackendKeyData(4242, b"\xde\xad\xbe\xef"),
    ReadyForQuery("I"),
    ReadyForQuery("T"),
    ReadyForQuery("E"),
    ErrorResponse({"S": "ERROR", "V": "ERROR", "C": "42P01", "M": 'relation "x" does not exist',
                   "P": "15", "F": "parse_relation.c", "L": "1392", "R": "parserOpenTable"}),
    ErrorResponse({"S": "NOTICE", "C": "00000", "M": "hello"}, notice=True),
    Opaque(b"T", b"\x00\x00"),                               # RowDescription stays opaque
    Opaque(b"C", b"SELECT 1\0"),
]


TYPE_BYTES = {Query: b"Q", Parse: b"P", Bind: b"B", Describe: b"D", Execute: b"E", Close: b"C",
              Sync: b"S", Flush: b"H", Terminate: b"X", PasswordMessage: b"p"}


def parse_all(parser, chunks) -> list:
    """Feed chunks one by one, collecting every message; switch to typed after startup."""
    out = []
    for chunk in chunks:
        parser.feed(chunk)
        while True:
            msg = parser.next_message()
            if msg is None:
                break
            out.append(msg)
            if isinstance(msg, StartupMessage):
                parser.started()
    return out


def typed_parser() -> FrontendParser:
    p = FrontendParser()
    p.started()
    return p


# --- round trips ---------------------------------------------------------------------

@pytest.mark.parametrize("msg", TYPED_FRONTEND, ids=repr)
def test_typed_frontend_roundtrip(msg):
    data = encode_message(msg)
    expected_type = msg.type if isinstance(msg, Opaque) else TYPE_BYTES[type(msg)]
    assert data[0:1] == expected_type
    assert I32.unpack_from(data, 1)[0] == len(data) - 1
    assert parse_all(typed_parser(), [data]) == [msg]


@pytest.mark.parametrize("msg", UNTYPED_FRONTEND, ids=repr)
def test_untyped_frontend_roundtrip(msg):
    data = encode_message(msg)
    assert I32.unpack_from(data, 0)[0] == len(data)
    p = FrontendParser()
    assert parse_all(p, [data]) == [msg]
    assert p.take_buffer() == b""


def test_untyped_codes_are_postgresql_constants():
    # the numbers libpq sends: 1234.5679 / 1234.5680 / 1234.5678
    assert encode_message(SSLRequest()) == I32.pack(8) + I32.pack((1234 << 16) | 5679)
    assert encode_message(GSSENCRequest()) == I32.pack(8) + I32.pack((1234 << 16) | 5680)
    assert SSL_REQUEST_CODE == (1234 << 16) | 5679
    assert GSSENC_REQUEST_CODE == (1234 << 16) | 5680
    assert CANCEL_REQUEST_CODE == (1234 << 16) | 5678
    assert encode_message(CancelRequest(1, b"abcd")) == I32.pack(16) + I32.pack(CANCEL_REQUEST_CODE) + I32.pack(1) + b"abcd"


def test_startup_bytes_match_libpq_layout():
    data = codec.encode_startup({"user": "u", "database": "d"})
    assert data == I32.pack(len(data)) + I32.pack(PROTOCOL_3_0) + b"user\0u\0database\0d\0\0"


@pytest.mark.parametrize("msg", BACKEND, ids=repr)
def test_backend_roundtrip(msg):
    data = encode_message(msg)
    p = BackendParser()
    assert parse_all(p, [data]) == [msg]


def test_encode_error_fields_and_notice():
    data = codec.encode_error("28P01", "password authentication failed", severity="FATAL",
                              detail="d", hint="h")
    (msg,) = parse_all(BackendParser(), [data])
    assert msg == ErrorResponse({"S": "FATAL", "V": "FATAL", "C": "28P01",
                                 "M": "password authentication failed", "D": "d", "H": "h"})
    assert (msg.sqlstate, msg.message, msg.notice) == ("28P01", "password authentication failed", False)
    (note,) = parse_all(BackendParser(), [codec.encode_notice("careful", hint="x")])
    assert note.notice and note.fields["S"] == "NOTICE" and note.sqlstate == "00000"
    assert note.fields["H"] == "x"


def test_backend_decode_of_real_postgresql_bytes():
    # ErrorResponse exactly as PostgreSQL 15 sends it for SELECT * FROM nope
    body = (b"SERROR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0P15\0"
            b"Fparse_relation.c\0L1392\0RparserOpenTable\0\0")
    err = decode_backend(b"E", body)
    assert err.sqlstate == "42P01" and err.message == 'relation "nope" does not exist'
    assert err.fields["P"] == "15" and err.fields["R"] == "parserOpenTable"
    assert decode_backend(b"Z", b"T") == ReadyForQuery("T")
    assert decode_backend(b"S", b"TimeZone\0UTC\0") == ParameterStatus("TimeZone", "UTC")
    assert decode_backend(b"K", I32.pack(99) + b"\0\1\2\3") == BackendKeyData(99, b"\0\1\2\3")
    assert decode_backend(b"R", I32.pack(10) + b"SCRAM-SHA-256\0\0") == \
        Authentication(10, b"SCRAM-SHA-256\0\0")
    assert decode_backend(b"R", I32.pack(0)) == Authentication(0)
    # a message type the gateway does not interpret is passed as Opaque
    assert decode_backend(b"A", b"x") == Opaque(b"A", b"x")


def test_error_with_invalid_utf8_is_decoded_with_replacement():
    err = decode_backend(b"E", b"SERROR\0C22021\0Mbad \xff byte\0\0")
    assert err.sqlstate == "22021" and "\ufffd" in err.message


# --- splitting at every byte boundary ---------------------------------------------------

def _stream(msgs) -> bytes:
    return b"".join(encode_message(m) for m in msgs)


FRONTEND_SESSION = [SSLRequest(), GSSENCRequest(), UNTYPED_FRONTEND[0]] + TYPED_FRONTEND


def test_frontend_stream_split_at_every_boundary():
    data = _stream(FRONTEND_SESSION)
    expected = FRONTEND_SESSION
    assert parse_all(FrontendParser(), [data]) == expected
    for i in range(len(data) + 1):
        assert parse_all(FrontendParser(), [data[:i], data[i:]]) == expected, f"split at {i}"


def test_frontend_stream_fed_byte_by_byte_and_in_three_pieces():
    data = _stream(FRONTEND_SESSION)
    assert parse_all(FrontendParser(), [data[i:i + 1] for i in range(len(data))]) == FRONTEND_SESSION
    step = 7
    for i in range(0, len(data), step):
        for j in range(i, len(data), step * 5):
            chunks = [data[:i], data[i:j], data[j:]]
            assert parse_all(FrontendParser(), chunks) == FRONTEND_SESSION, (i, j)


def test_each_message_split_at_every_boundary():
    for msg in TYPED_FRONTEND:
        data = encode_message(msg)
        for i in range(len(data) + 1):
            p = typed_parser()
            p.feed(data[:i])
            if i < len(data):
                assert p.next_message() is None, (msg, i)
            p.feed(data[i:])
            assert p.next_message() == msg
            assert p.next_message() is None
    for msg in UNTYPED_FRONTEND:
        data = encode_message(msg)
        for i in range(len(data) + 1):
            assert parse_all(FrontendParser(), [data[:i], data[i:]]) == [msg], (msg, i)


def test_cancel_request_split_at_every_boundary():
    data = encode_message(CancelRequest(31337, b"\x00\xff\x00\xff"))
    for i in range(len(data) + 1):
        assert parse_all(FrontendParser(), [data[:i], data[i:]]) == [CancelRequest(31337, b"\x00\xff\x00\xff")]


def test_backend_stream_split_at_every_boundary():
    data = _stream(BACKEND)
    for i in range(len(data) + 1):
        assert parse_all(BackendParser(), [data[:i], data[i:]]) == BACKEND, f"split at {i}"
    assert parse_all(BackendParser(), [data[i:i + 1] for i in range(len(data))]) == BACKEND


def test_take_buffer_hands_over_the_unparsed_rest():
    p = FrontendParser()
    startup = encode_message(UNTYPED_FRONTEND[0])
    rest = encode_message(Query("SELECT 1"))[:3]
    p.feed(startup + rest)
    assert isinstance(p.next_message(), StartupMessage)
    p.started()
    assert p.state is ParserState.TYPED
    assert p.next_message() is None
    assert p.take_buffer() == rest
    assert p.take_buffer() == b""
    with pytest.raises(RuntimeError):
        p.started()


# --- malformed input ---------------------------------------------------------------------

def violation(parser, data: bytes) -> ProtocolViolation:
    parser.feed(data)
    with pytest.raises(ProtocolViolation) as exc:
        while parser.next_message() is not None:
            pass
    return exc.value


@pytest.mark.parametrize("length", [-1, 0, 3])
def test_typed_length_below_four(length):
    e = violation(typed_parser(), b"Q" + I32.pack(length) + b"x\0")
    assert e.sqlstate == "08P01"
    assert "length" in str(e)


@pytest.mark.parametrize("mtype", [b"Z", b"A", b"\x00", b"\xff", b"R", b"K", b"x", b"G"])
def test_unknown_frontend_type(mtype):
    e = violation(typed_parser(), mtype + I32.pack(4))
    assert e.sqlstate == "08P01"
    assert "unknown frontend message type" in str(e)


def test_unknown_type_after_good_messages_is_detected_after_them():
    p = typed_parser()
    p.feed(encode_message(Sync()) + b"Z" + I32.pack(5) + b"I")
    assert p.next_message() == Sync()
    with pytest.raises(ProtocolViolation):
        p.next_message()


def test_oversize_message_is_54000_before_it_arrives():
    p = FrontendParser(max_message=2048)
    p.started()
    # only the header: the limit must be enforced before buffering the whole message
    e = violation(p, b"Q" + I32.pack(2049))
    assert e.sqlstate == "54000"
    assert "2049" in str(e) and "2048" in str(e) and "max_message_size" in str(e)
    ok = typed_parser()
    ok.max_message = 2048
    msg = Query("x" * (2048 - 5))            # exactly at the limit: length 2048
    assert parse_all(ok, [encode_message(msg)]) == [msg]


@pytest.mark.parametrize("length", [0, 4, 7, 10_001, 1 << 30, -8])
def test_startup_packet_bad_length(length):
    e = violation(FrontendParser(), I32.pack(length) + I32.pack(PROTOCOL_3_0) + b"\0" * 8)
    assert e.sqlstate == "08P01"
    assert "startup packet length" in str(e)


def test_startup_packet_too_long_even_if_well_formed():
    msg = StartupMessage(PROTOCOL_3_0, {"user": "u", "application_name": "a" * 10_100})
    e = violation(FrontendParser(), encode_message(msg))
    assert e.sqlstate == "08P01"


@pytest.mark.parametrize("body", [
    b"user\0alice",                  # last value not terminated
    b"user\0alice\0",                # list terminator missing
    b"user\0alice\0database\0",      # key without value ... then the terminator missing
    b"",                              # no terminator at all
])
def test_unterminated_startup_params(body):
    data = I32.pack(PROTOCOL_3_0) + body
    e = violation(FrontendParser(), I32.pack(len(data) + 4) + data)
    assert e.sqlstate == "08P01"
    assert "malformed startup packet" in str(e)


def test_startup_param_without_value():
    # key "orphan", then only the list terminator: the value is missing
    data = I32.pack(PROTOCOL_3_0) + b"user\0alice\0orphan\0\0"
    e = violation(FrontendParser(), I32.pack(len(data) + 4) + data)
    assert e.sqlstate == "08P01"
    assert "parameter without a value" in str(e)
    # key "orphan" with the empty value, then the terminator: valid
    data = I32.pack(PROTOCOL_3_0) + b"user\0alice\0orphan\0\0\0"
    p = FrontendParser()
    p.feed(I32.pack(len(data) + 4) + data)
    assert p.next_message() == StartupMessage(PROTOCOL_3_0, {"user": "alice", "orphan": ""})


def test_startup_params_not_utf8():
    data = I32.pack(PROTOCOL_3_0) + b"user\0\xff\xfe\0\0"
    e = violation(FrontendParser(), I32.pack(len(data) + 4) + data)
    assert e.sqlstate == "08P01"


@pytest.mark.parametrize("version", [(2, 0), (1, 0), (4, 0), (0, 0)])
def test_bad_protocol_version(version):
    major, minor = version
    data = I32.pack((major << 16) | minor) + b"user\0u\0\0"
    e = violation(FrontendParser(), I32.pack(len(data) + 4) + data)
    assert e.sqlstate == "08P01"
    assert f"{major}.{minor}" in str(e)


def test_cancel_request_bad_length():
    data = I32.pack(CANCEL_REQUEST_CODE) + I32.pack(1)      # no secret at all: 12 bytes is ok
    p = FrontendParser()
    p.feed(I32.pack(len(data) + 4) + data)
    assert p.next_message() == CancelRequest(1, b"")
    data = I32.pack(CANCEL_REQUEST_CODE) + b"\0\0"         # 10 bytes: too short
    e = violation(FrontendParser(), I32.pack(len(data) + 4) + data)
    assert e.sqlstate == "08P01"


def test_http_request_before_startup():
    e = violation(FrontendParser(), b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert e.sqlstate == "08P01"
    assert "HTTP" in str(e)


def test_tls_client_hello_before_startup():
    # first bytes of a TLS 1.2 ClientHello record (a client speaking TLS without SSLRequest)
    hello = bytes.fromhex("16030100c8010000c40303") + b"\x00" * 40
    e = violation(FrontendParser(), hello)
    assert e.sqlstate == "08P01"
    assert "TLS" in str(e)


def test_typed_message_before_startup_is_garbage():
    # a client skipping the startup packet: 'Q' + length reads as a huge startup length
    e = violation(FrontendParser(), encode_message(Query("SELECT 1")))
    assert e.sqlstate == "08P01"


@pytest.mark.parametrize("mtype,body,what", [
    (b"Q", b"SELECT 1", "NUL"),                       # not terminated
    (b"Q", b"SELECT 1\0junk", "trailing"),
    (b"P", b"s\0SELECT 1\0", "too short"),             # no parameter count
    (b"P", b"s\0SELECT 1\0\x00\x02\x00\x00\x00\x17", "too short"),   # 2 types announced, 1 sent
    (b"P", b"s\0SELECT 1\0\xff\xff", "negative"),
    (b"P", b"s\0SELECT 1\0\x00\x00zz", "trailing"),
    (b"B", b"portal-without-nul", "NUL"),
    (b"D", b"", "empty"),
    (b"D", b"Sname", "NUL"),
    (b"E", b"\0\0\0", "too short"),                     # max_rows cut short
    (b"E", b"portal", "NUL"),
    (b"C", b"", "empty"),
])
def test_malformed_typed_messages(mtype, body, what):
    e = violation(typed_parser(), codec.frame(mtype, body))
    assert e.sqlstate == "08P01"
    assert what in str(e)


def test_invalid_utf8_in_query_is_22021():
    # like PostgreSQL's "invalid byte sequence for encoding UTF8"
    e = violation(typed_parser(), codec.frame(b"Q", b"SELECT '\xff'\0"))
    assert e.sqlstate == "22021"


def test_backend_parser_rejects_bad_lengths():
    for length in (3, 0, -5):
        p = BackendParser()
        p.feed(b"Z" + I32.pack(length) + b"I")
        with pytest.raises(ProtocolViolation) as exc:
            p.next_message()
        assert exc.value.sqlstate == "08006"
    p = BackendParser(max_message=100)
    p.feed(b"D" + I32.pack(101))
    with pytest.raises(ProtocolViolation):
        p.next_message()


def test_encode_message_refuses_unknown_values():
    with pytest.raises(TypeError):
        encode_message(object())


@pytest.mark.parametrize("mtype,body", [(b"Z", b""), (b"R", b"\0\0"), (b"K", b"\0")])
def test_malformed_backend_messages_are_protocol_violations(mtype, body):
    p = BackendParser()
    p.feed(codec.frame(mtype, body))
    with pytest.raises(ProtocolViolation):
        p.next_message()


def test_backend_parameter_status_without_nul_is_a_violation():
    p = BackendParser()
    p.feed(codec.frame(b"S", b"name-without-terminator"))
    with pytest.raises(ProtocolViolation):
        p.next_message()


# --- real clients' bytes (tests/data/protocol/clients.json, made by make_corpus.py) ---------

import json  # noqa: E402
from pathlib import Path  # noqa: E402

CORPUS = json.loads((Path(__file__).resolve().parents[2] / "data" / "protocol" / "clients.json").read_text())


@pytest.mark.parametrize("session", CORPUS, ids=[s["client"] for s in CORPUS])
def test_real_client_streams_decode_and_reencode_exactly(session):
    front, back = bytes.fromhex(session["frontend"]), bytes.fromhex(session["backend"])
    fmsgs = parse_all(FrontendParser(), [front])
    assert isinstance(fmsgs[0], StartupMessage) and isinstance(fmsgs[-1], Terminate)
    assert b"".join(encode_message(m) for m in fmsgs) == front
    bmsgs = parse_all(BackendParser(), [back])
    assert b"".join(encode_message(m) for m in bmsgs) == back
    assert isinstance(bmsgs[-1], ReadyForQuery)
    assert any(isinstance(m, BackendKeyData) for m in bmsgs)
    # every split of either stream gives the same messages
    for i in range(len(front) + 1):
        assert parse_all(FrontendParser(), [front[:i], front[i:]]) == fmsgs, i
    for i in range(len(back) + 1):
        assert parse_all(BackendParser(), [back[:i], back[i:]]) == bmsgs, i


def test_corpus_covers_the_interesting_messages():
    kinds = set()
    for s in CORPUS:
        for m in parse_all(FrontendParser(), [bytes.fromhex(s["frontend"])]):
            kinds.add(m.type if isinstance(m, Opaque) else type(m).__name__)
    assert {"StartupMessage", "Query", "Parse", "Bind", "Describe", "Execute", "Sync", "Terminate",
            b"d", b"c"} <= kinds, kinds
