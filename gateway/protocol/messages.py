"""PostgreSQL protocol 3.0 messages as small frozen values.

Only the messages the gateway must understand get a type of their own; every other
message travels as ``Opaque(type, body)`` and is forwarded untouched. See
https://www.postgresql.org/docs/current/protocol-message-formats.html
"""
from __future__ import annotations

from dataclasses import dataclass, field

PROTOCOL_3_0 = 196608          # 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


# --- messages sent by the client before the first typed message -----------------

@dataclass(frozen=True, slots=True)
class StartupMessage:
    protocol: int
    params: dict = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    secret: bytes            # 4 bytes in protocol 3.0, up to 256 in 3.2


# --- frontend (client -> server) typed messages ----------------------------------

@dataclass(frozen=True, slots=True)
class Query:                 # 'Q'
    sql: str


@dataclass(frozen=True, slots=True)
class Parse:                 # 'P'
    name: str
    sql: str
    param_types: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Bind:                  # 'B' (kept raw: parameters are forwarded, never logged)
    portal: str
    statement: str
    raw: bytes = b""


@dataclass(frozen=True, slots=True)
class Describe:              # 'D'
    kind: str                # 'S' statement or 'P' portal
    name: str


@dataclass(frozen=True, slots=True)
class Execute:               # 'E'
    portal: str
    max_rows: int


@dataclass(frozen=True, slots=True)
class Close:                 # 'C'
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Sync:                  # 'S'
    pass


@dataclass(frozen=True, slots=True)
class Flush:                 # 'H'
    pass


@dataclass(frozen=True, slots=True)
class Terminate:             # 'X'
    pass


@dataclass(frozen=True, slots=True)
class PasswordMessage:       # 'p' (password, SASLInitialResponse, SASLResponse)
    data: bytes


@dataclass(frozen=True, slots=True)
class Opaque:
    """Any message we forward without looking inside (CopyData, FunctionCall, ...)."""
    type: bytes
    body: bytes


# --- backend (server -> client) messages we build or read -------------------------

@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """ErrorResponse ('E') or NoticeResponse ('N'): field code -> value."""
    fields: dict = field(default_factory=dict, hash=False)
    notice: bool = False

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    status: str              # 'I' idle, 'T' in transaction, 'E' failed transaction


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    pid: int
    secret: bytes


@dataclass(frozen=True, slots=True)
class Authentication:
    """Authentication* ('R'): code 0 ok, 3 cleartext, 5 md5 (salt), 10 SASL
    (mechanisms), 11 SASLContinue, 12 SASLFinal (data)."""
    code: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    name: str
    value: str
