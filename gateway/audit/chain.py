"""The hash chain, signed checkpoints and verification. Pure: bytes and dicts in, values out.

Each record carries ``prev`` (the ``hash`` of the record before it in the same
instance's chain, ``GENESIS`` for the very first) and ``hash``: sha256 over the
record's canonical bytes (orjson, sorted keys, without ``hash``). Every file the
file sink writes starts with a ``segment.start`` record that chains to the last
record of the previous file, so a file missing from the middle breaks the chain.
Every ``checkpoint_every`` records (and at rotation and shutdown) a ``checkpoint``
record carries the chain head and count and an Ed25519 signature over its own
canonical bytes: an attacker who rewrites records *and* recomputes every hash
still cannot produce the next signed checkpoint.

``verify`` walks records in chain order and names the first record that was
altered, inserted, deleted or reordered, by source (file) and line number.
"""
from __future__ import annotations

import base64
import hashlib
import secrets
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, NamedTuple

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit.records import utc_second, utc_timestamp, CHECKPOINT, COMPLETION_FIELDS, \
    SEGMENT_START, STATEMENT_COMPLETE, stamp

GENESIS = "0" * 64


# --------------------------------------------------------------------------------------
# hashing


def canonical(record: Mapping[str, Any], exclude: tuple[str, ...] = ("hash",)) -> bytes:
    """The bytes that are hashed (and, for checkpoints, signed): sorted keys, no ``hash``."""
    if not any(k in record for k in exclude):      # the common case while sealing
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    return orjson.dumps({k: v for k, v in record.items() if k not in exclude},
                        option=orjson.OPT_SORT_KEYS)


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


def encode_line(record: Mapping[str, Any]) -> bytes:
    """One JSON line as written to a file (field order as built: readable)."""
    return orjson.dumps(record) + b"\n"


# --------------------------------------------------------------------------------------
# keys and signatures


def load_signing_key(data: bytes | str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS#8) or a base64 raw 32-byte seed."""
    raw = data.encode() if isinstance(data, str) else data
    if b"-----BEGIN" in raw:
        key = serialization.load_pem_private_key(raw, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the PEM key is not an Ed25519 private key")
        return key
    try:
        seed = base64.b64decode(raw.strip(), validate=True)
    except Exception:  # noqa: BLE001
        raise ValueError("expected a PEM Ed25519 private key or a base64 32-byte seed") from None
    if len(seed) != 32:
        raise ValueError(f"the base64 seed decodes to {len(seed)} bytes; an Ed25519 seed is 32")
    return Ed25519PrivateKey.from_private_bytes(seed)


def load_public_key(data: bytes | str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (public, or a private key to derive it from) or
    base64 of the raw 32-byte public key."""
    raw = data.encode() if isinstance(data, str) else data
    if b"PRIVATE KEY" in raw:
        return load_signing_key(raw).public_key()
    if b"-----BEGIN" in raw:
        key = serialization.load_pem_public_key(raw)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the PEM key is not an Ed25519 public key")
        return key
    try:
        pub = base64.b64decode(raw.strip(), validate=True)
    except Exception:  # noqa: BLE001
        raise ValueError("expected a PEM Ed25519 public key or base64 of its 32 raw bytes") from None
    if len(pub) != 32:
        raise ValueError(f"the base64 public key decodes to {len(pub)} bytes; expected 32")
    return Ed25519PublicKey.from_public_bytes(pub)


def public_key_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw)).decode()


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


_SIGNED_EXCLUDE = ("hash", "sig")


def sign_record(record: Mapping[str, Any], key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.sign(canonical(record, _SIGNED_EXCLUDE))).decode()


def signature_valid(record: Mapping[str, Any], key: Ed25519PublicKey) -> bool:
    try:
        key.verify(base64.b64decode(record.get("sig") or ""), canonical(record, _SIGNED_EXCLUDE))
        return True
    except (InvalidSignature, ValueError):
        return False


# --------------------------------------------------------------------------------------
# building the chain


class ChainHead(NamedTuple):
    """Where an instance's chain stands: the last record's seq and hash. (A named
    tuple, not a frozen dataclass: one is made per record, and this is 2x cheaper.)"""
    seq: int = 0
    hash: str = GENESIS


class Chain:
    """Turns events into chained records for one instance. Pure (the caller gives
    the time). Not thread-safe: one writer owns it.

    ``head`` is the last record's (seq, hash); the fast paths keep it as ``_seq``,
    ``_hash`` and ``_prev`` (the hash as bytes, what the next record's line
    needs) and make the ChainHead only when someone asks."""

    __slots__ = ("instance", "signing_key", "key_id", "since_checkpoint", "_seq", "_hash", "_prev",
                 "_head", "_ts_sec", "_ts_prefix", "_complete_head", "_complete_hash", "_complete_format")

    def __init__(self, instance: str, head: ChainHead = ChainHead(),
                 signing_key: Ed25519PrivateKey | None = None):
        self.instance = instance
        self.head = head
        self.signing_key = signing_key
        self.key_id = key_id(signing_key.public_key()) if signing_key else None
        self.since_checkpoint = 0
        self._ts_sec = -1
        self._ts_prefix = b""
        # the canonical bytes of a statement.complete record (sorted keys: fields,
        # instance, prev, seq, session, statements, ts, type), every value but the
        # chain's own and the session's rows serialised once; the fixed head is
        # hashed once
        self._complete_head = (b'{"fields":' + orjson.dumps(COMPLETION_FIELDS)
                               + b',"instance":' + orjson.dumps(instance) + b',"prev":')
        self._complete_hash = hashlib.sha256(self._complete_head)
        self._complete_format = (b'"%b","seq":%d,"session":%b,"statements":%b,"ts":"%b.%06dZ","type":'
                                 + orjson.dumps(STATEMENT_COMPLETE) + b"}")

    @property
    def head(self) -> ChainHead:
        h = self._head
        if h is None:
            h = self._head = ChainHead(self._seq, self._hash)
        return h

    @head.setter
    def head(self, head: ChainHead) -> None:
        self._head = head
        self._seq = head.seq
        self._hash = head.hash
        self._prev = head.hash.encode()

    @property
    def seq(self) -> int:
        """The last record's seq (``head.seq`` without making a ChainHead)."""
        return self._seq

    def seal(self, event: Mapping[str, Any], unix_time: float) -> dict:
        """The next record: stamped, linked, signed if a checkpoint, hashed."""
        record = stamp(event, instance=self.instance, seq=self.head.seq + 1, unix_time=unix_time)
        record["prev"] = self.head.hash
        if record["type"] == CHECKPOINT:
            record["head"] = self.head.hash
            record["count"] = self.head.seq
            record["key_id"] = self.key_id
            record["sig"] = sign_record(record, self.signing_key) if self.signing_key else None
            self.since_checkpoint = 0
        else:
            self.since_checkpoint += 1
        record["hash"] = record_hash(record)
        self.head = ChainHead(record["seq"], record["hash"])
        return record

    def seal_line(self, event: dict, unix_time: float) -> tuple[dict, bytes]:
        """The fast path for ordinary records (not checkpoints): ``event`` (a fresh dict
        the caller owns) becomes the record, and the line written is the canonical
        bytes themselves (sorted keys) with the hash appended: one serialisation, and
        ``verify`` reads it like any other line."""
        record = event
        record["ts"] = utc_timestamp(unix_time)
        record["instance"] = self.instance
        record["seq"] = seq = self.head.seq + 1
        record["prev"] = self.head.hash
        record.pop("hash", None)
        canon = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(canon).hexdigest()
        record["hash"] = digest
        self.since_checkpoint += 1
        self.head = ChainHead(seq, digest)
        return record, canon[:-1] + b',"hash":"' + digest.encode() + b'"}\n'

    def seal_template(self, template: "RecordTemplate", unix_time: float) -> bytes:
        """The fastest path: a record whose fields are all fixed but the chain's own
        (``prev``, ``seq``, ``ts``), rendered from its template without building or
        serialising a dict. Produces the same bytes as ``seal_line`` would. (It runs
        before every statement under policy is forwarded, so the timestamp and
        sealing steps are written out here and in ``seal_completion``: a call to a
        shared helper cost more than the lines it saved.)"""
        # the canonical bytes: the template's fixed head (hashed once, in advance)
        # and this tail
        seq = self._seq + 1
        sec = int(unix_time)
        if sec != self._ts_sec:
            self._ts_prefix = utc_second(sec).encode()
            self._ts_sec = sec
        tail = template._tail % (self._prev, seq, self._ts_prefix, int((unix_time - sec) * 1_000_000))
        h = template._head_hash.copy()
        h.update(tail)
        digest = h.hexdigest()
        self.since_checkpoint += 1
        self._seq = seq
        self._hash = digest
        self._head = None
        prev = self._prev = digest.encode()
        return b"".join((template._head, tail[:-1], b',"hash":"', prev, b'"}\n'))

    def seal_completion(self, session: str, entries: list, unix_time: float,
                        session_json: bytes | None = None) -> bytes:
        """A ``statement.complete`` record (``{"type", "session", "fields",
        "statements": entries}``) rendered straight into its canonical bytes: the
        same line ``seal_line`` gives for that event (orjson writes each value as it
        would inside the whole record). ``session_json``: ``orjson.dumps(session)``
        when the caller has it already."""
        seq = self._seq + 1
        sec = int(unix_time)
        if sec != self._ts_sec:
            self._ts_prefix = utc_second(sec).encode()
            self._ts_sec = sec
        tail = self._complete_format % (self._prev, seq, session_json or orjson.dumps(session),
                                        orjson.dumps(entries, option=orjson.OPT_SORT_KEYS),
                                        self._ts_prefix, int((unix_time - sec) * 1_000_000))
        h = self._complete_hash.copy()
        h.update(tail)
        digest = h.hexdigest()
        self.since_checkpoint += 1
        self._seq = seq
        self._hash = digest
        self._head = None
        prev = self._prev = digest.encode()
        return b"".join((self._complete_head, tail[:-1], b',"hash":"', prev, b'"}\n'))

    def checkpoint_event(self, reason: str = "periodic") -> dict:
        return {"type": CHECKPOINT, "reason": reason}


class RecordTemplate:
    """The canonical bytes of a record, prepared once for an event that repeats (the
    decision record of one statement shape in one session): everything but the
    chain's own fields ``prev``, ``seq`` and ``ts`` is serialised in advance.

    Keys are sorted in canonical bytes, and ``prev`` < ``seq`` < ``ts`` whatever
    the other keys are, so the three values always go into the same three holes,
    in that order. The holes are found by serialising the record with a random
    marker in each; if a marker does not come out exactly once (it could only be
    in the event by guessing 64 random bits) the template is not ``usable`` and
    the caller seals the event the ordinary way."""
    __slots__ = ("event", "type", "_format", "_head", "_head_hash", "_tail")

    def __init__(self, event: Mapping[str, Any], instance: str):
        self.event = dict(event)
        self.type = self.event.get("type")
        self._format = self._tail = None
        nonce = secrets.token_hex(8)
        marks = {k: f"piigate-{nonce}-{k}" for k in ("prev", "seq", "ts")}
        record = {k: v for k, v in self.event.items() if k != "hash"}
        record.update(marks)
        record["instance"] = instance
        canon = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        tokens = [b'"' + marks[k].encode() + b'"' for k in ("prev", "seq", "ts")]
        if any(canon.count(t) != 1 for t in tokens):
            return
        a, rest = canon.split(tokens[0])
        b, rest = rest.split(tokens[1])
        c, d = rest.split(tokens[2])
        esc = [x.replace(b"%", b"%%") for x in (a, b, c, d)]
        self._format = esc[0] + b'"%s"' + esc[1] + b"%d" + esc[2] + b'"%s"' + esc[3]
        # for Chain.seal_template: the bytes before the first hole, and their sha256
        # state (most of a decision record: hashed once, not per statement), then
        # the rest, whose ts hole takes the second's prefix and the microseconds
        self._head = a
        self._head_hash = hashlib.sha256(a)
        self._tail = b'"%b"' + esc[1] + b"%d" + esc[2] + b'"%b.%06dZ"' + esc[3]

    @property
    def usable(self) -> bool:
        return self._format is not None

    def render(self, prev: str, seq: int, ts: str) -> bytes:
        return self._format % (prev.encode(), seq, ts.encode())


def segment_start_event(*, segment: int, file: str, reason: str,
                        gap: Mapping[str, Any] | None = None) -> dict:
    """The first record of every file. ``gap`` declares records of the instance's
    chain that this file does not hold because its sink failed: ``{"after_seq",
    "after_hash", "count", "error"}`` (verify reports it as a warning, not tampering,
    when it matches the previous file's last record)."""
    ev = {"type": SEGMENT_START, "segment": segment, "file": file, "reason": reason}
    if gap is not None:
        ev["gap"] = dict(gap)
    return ev


# --------------------------------------------------------------------------------------
# verification


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a trail as read: where it came from and its bytes."""
    source: str
    lineno: int                      # 1-based
    raw: bytes
    last_in_source: bool = False
    terminated: bool = True          # ended with a newline


def split_lines(source: str, data: bytes) -> list[Line]:
    """The lines of one file's content, marking the last one and whether it was
    newline-terminated (a line cut short by a crash is not)."""
    parts = data.split(b"\n")
    terminated_last = data.endswith(b"\n")
    if terminated_last:
        parts = parts[:-1]
    out = []
    for i, raw in enumerate(parts):
        last = i == len(parts) - 1
        out.append(Line(source, i + 1, raw, last, (not last) or terminated_last))
    return out


@dataclass(frozen=True, slots=True)
class Problem:
    """The first thing wrong with a trail."""
    kind: str        # altered | inserted | deleted | reordered | duplicate | truncated |
    #                  corrupt | forged_signature | bad_checkpoint | missing_start
    source: str
    line: int
    seq: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.kind}: {self.message}"


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int                                     # records verified (before any problem)
    first_bad: Problem | None = None
    warnings: tuple[str, ...] = ()
    heads: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)   # per instance
    checkpoints: int = 0
    signatures_checked: bool = False

    def summary(self) -> str:
        lines = []
        if self.ok:
            sig = "signatures verified" if self.signatures_checked else "signatures NOT checked (no public key)"
            lines.append(f"intact: {self.records} records, {self.checkpoints} checkpoints, {sig}")
        else:
            lines.append(f"NOT intact: {self.first_bad}")
            lines.append(f"  {self.records} records verified before it")
        for inst, h in sorted(self.heads.items()):
            lines.append(f"  instance {inst}: head seq {h['seq']} at {h['source']}:{h['line']}")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


@dataclass(slots=True)
class _Entry:
    source: str
    lineno: int
    rec: dict | None
    line: Line | None


@dataclass(slots=True)
class _Pos:
    """Where a record was seen (kept for every record in the index window)."""
    source: str
    lineno: int
    seq: int
    instance: str
    successor: tuple[str, int, int] | None = None    # (source, line, seq) of the record after it


@dataclass
class _InstanceState:
    first: _Entry
    last: _Entry
    last_checkpoint: _Entry | None = None
    after_checkpoint: _Entry | None = None           # first record after the last checkpoint
    records: int = 0


_REQUIRED = ("instance", "type", "seq", "prev", "hash")
#: how many records back verify remembers (to name an inserted, moved or replayed
#: record precisely); memory stays bounded on multi-gigabyte trails
INDEX_WINDOW = 1_000_000


def verify(records: Iterable[Line | Mapping[str, Any]], public_key: Ed25519PublicKey | None = None,
           anchors: Iterable[Mapping[str, Any]] = (), partial: bool = False) -> VerifyResult:
    """Prove a trail intact, or name the first record altered, inserted, deleted or
    reordered.

    ``records``: ``Line`` values (from ``split_lines``/``read_trail``, files in chain
    order) or already parsed dicts; consumed once, as a stream. ``public_key``:
    checkpoints' signatures are checked when given (a bad one is
    ``forged_signature``). ``anchors``: checkpoint records known from elsewhere (the
    Redis stream, a copy shipped off the host); a trail that ends before an
    anchor's seq was truncated, one whose record at that seq has another hash was
    rewritten. ``partial``: the records are a window (a capped Redis stream), so
    each instance may start mid-chain.
    """
    return _Verifier(public_key, anchors, partial).run(iter(records))


class _Verifier:
    def __init__(self, public_key, anchors, partial):
        self.public_key = public_key
        self.partial = partial
        self.anchors: dict[tuple[str, int], Mapping[str, Any]] = {}
        self.anchor_list = list(anchors)
        for a in self.anchor_list:
            self.anchors[(a.get("instance"), a.get("seq"))] = a
        self.index: dict[bytes, _Pos] = {}
        self.state: dict[str, _InstanceState] = {}
        self.warnings: list[str] = []
        self.verified = 0
        self.checkpoints = 0

    def run(self, it) -> VerifyResult:
        for a in self.anchor_list:
            if self.public_key is not None and a.get("type") == CHECKPOINT \
                    and not signature_valid(a, self.public_key):
                return self.result(Problem(
                    "forged_signature", "<anchor>", 0, a.get("seq"),
                    f"anchor checkpoint for instance {a.get('instance')} seq {a.get('seq')} "
                    f"has an invalid signature"))
        i = 0
        for x in it:
            e = _entry(i, x)
            i += 1
            problem = self.step(e, it)
            if problem is not None:
                return self.result(problem)
        return self.result(self.finish())

    # -- one record ---------------------------------------------------------------------

    def step(self, e: _Entry, rest) -> Problem | None:
        if e.rec is None:
            if e.line is not None and e.line.last_in_source and not e.line.terminated:
                self.warnings.append(
                    f"{e.source}:{e.lineno}: incomplete last record ({len(e.line.raw)} bytes, "
                    f"no newline): cut by a crash or a truncation; not counted")
                return None
            return Problem("corrupt", e.source, e.lineno, None, "not a JSON audit record (edited or damaged)")
        rec = e.rec
        missing = [k for k in _REQUIRED if k not in rec]
        if missing:
            return Problem("corrupt", e.source, e.lineno, rec.get("seq"),
                           f"missing field(s) {', '.join(missing)}")
        if record_hash(rec) != rec["hash"]:
            return Problem("altered", e.source, e.lineno, rec["seq"],
                           "the record's content does not match its hash")
        seen = self.index.get(_key(rec["hash"]))
        if seen is not None:
            return Problem("duplicate", e.source, e.lineno, rec["seq"],
                           f"same record as {seen.source}:{seen.lineno} (replayed)")
        inst = rec["instance"]
        st = self.state.get(inst)
        if st is None:
            problem = self._first_of_instance(e)
            if problem is not None:
                return problem
            st = self.state[inst] = _InstanceState(first=e, last=e)
        else:
            p = st.last
            if rec["prev"] != p.rec["hash"]:
                gap = _declared_gap(rec, p)
                if gap is None:
                    return self._classify(e, p, st, rest)
                self.warnings.append(gap)
            elif rec["seq"] <= p.rec["seq"]:
                return Problem("inserted", e.source, e.lineno, rec["seq"],
                               f"seq {rec['seq']} again after seq {p.rec['seq']} "
                               f"({p.source}:{p.lineno}): a record was inserted and the "
                               f"chain recomputed from there")
            elif rec["seq"] != p.rec["seq"] + 1:
                return Problem("deleted", e.source, e.lineno, rec["seq"],
                               f"seq {rec['seq']} follows seq {p.rec['seq']}: records were "
                               f"removed and the chain recomputed from there")
            pp = self.index.get(_key(p.rec["hash"]))
            if pp is not None:
                pp.successor = (e.source, e.lineno, rec["seq"])
        if rec["type"] == CHECKPOINT:
            problem = self._checkpoint(e, st)
            if problem is not None:
                return problem
        elif st.after_checkpoint is None and st.last_checkpoint is not None:
            st.after_checkpoint = e
        anchor = self.anchors.get((inst, rec["seq"]))
        if anchor is not None and anchor.get("hash") != rec["hash"]:
            return Problem("altered", e.source, e.lineno, rec["seq"],
                           "differs from the anchored checkpoint with the same seq")
        st.last = e
        st.records += 1
        self._remember(rec, e)
        self.verified += 1
        return None

    def _first_of_instance(self, e: _Entry) -> Problem | None:
        rec = e.rec
        if rec["prev"] != GENESIS and rec["type"] != SEGMENT_START and not self.partial:
            return Problem("missing_start", e.source, e.lineno, rec["seq"],
                           "the trail does not begin with a segment.start record: "
                           "records before this one are missing or were moved")
        if rec["prev"] == GENESIS and rec["seq"] != 1:
            return Problem("altered", e.source, e.lineno, rec["seq"],
                           "a chain start (prev = genesis) with seq other than 1")
        if rec["prev"] != GENESIS:
            self.warnings.append(f"instance {rec['instance']}: chain starts mid-way at seq {rec['seq']} "
                                 f"({e.source}:{e.lineno}); earlier records were not given, so they "
                                 f"are not verified")
        return None

    def _checkpoint(self, e: _Entry, st: _InstanceState) -> Problem | None:
        rec = e.rec
        if rec.get("head") != rec["prev"] or rec.get("count") != rec["seq"] - 1:
            return Problem("bad_checkpoint", e.source, e.lineno, rec["seq"],
                           "checkpoint head/count do not match its place in the chain")
        if self.public_key is not None and not signature_valid(rec, self.public_key):
            c = st.last_checkpoint
            since = "the start" if c is None else f"the previous checkpoint ({c.source}:{c.lineno})"
            return Problem("forged_signature", e.source, e.lineno, rec["seq"],
                           f"checkpoint signature does not verify with the given public "
                           f"key: this checkpoint was forged, or records since {since} "
                           f"were rewritten and the chain recomputed")
        st.last_checkpoint = e
        st.after_checkpoint = None
        self.checkpoints += 1
        return None

    def _remember(self, rec: dict, e: _Entry) -> None:
        if len(self.index) >= INDEX_WINDOW:
            self.index.pop(next(iter(self.index)))      # dicts keep insertion order: oldest
        self.index[_key(rec["hash"])] = _Pos(sys.intern(e.source), e.lineno, rec["seq"],
                                             sys.intern(str(rec["instance"])))

    # -- what went wrong --------------------------------------------------------------

    def _classify(self, e: _Entry, p: _Entry, st: _InstanceState, rest) -> Problem:
        """Record ``e`` does not chain to ``p``, the record before it: say what happened."""
        rec = e.rec
        where = "" if e.source == p.source else \
            f" (the previous file {p.source} ends at seq {p.rec['seq']})"
        if rec["prev"] == p.rec["prev"]:
            return Problem("inserted", p.source, p.lineno, p.rec["seq"],
                           f"this record was inserted: the next record ({e.source}:{e.lineno}) chains "
                           f"to the record before it")
        earlier = self.index.get(_key(rec["prev"]))
        if earlier is not None:
            # chains to something before p: what lies between does not belong here
            src, line, seq = earlier.successor or (p.source, p.lineno, p.rec["seq"])
            return Problem("inserted", src, line, seq,
                           f"does not belong here: {e.source}:{e.lineno} chains directly to "
                           f"{earlier.source}:{earlier.lineno}")
        later = _find_later(rest, rec["prev"])
        if later is not None:
            return Problem("reordered", e.source, e.lineno, rec["seq"],
                           f"out of order: its predecessor (seq {later[2]}) comes later, at "
                           f"{later[0]}:{later[1]}")
        if rec["type"] == CHECKPOINT and self.public_key is not None \
                and signature_valid(rec, self.public_key):
            c = st.last_checkpoint
            start = "the start of the trail" if c is None else f"the checkpoint at {c.source}:{c.lineno}"
            first = st.first if c is None else (st.after_checkpoint or p)
            return Problem("altered", first.source, first.lineno, first.rec.get("seq"),
                           f"the signed checkpoint at {e.source}:{e.lineno} does not match the chain "
                           f"before it: records between {start} and it were rewritten and their hashes "
                           f"recomputed (this is the first record of that range)")
        if rec["seq"] > p.rec["seq"] + 1:
            n = rec["seq"] - p.rec["seq"] - 1
            return Problem("deleted", e.source, e.lineno, rec["seq"],
                           f"{n} record(s) missing before this one (seq {p.rec['seq'] + 1}.."
                           f"{rec['seq'] - 1}){where}" + (": a rotated file is missing?"
                                                           if e.source != p.source else ""))
        if rec["seq"] == p.rec["seq"] + 1:
            return Problem("altered", p.source, p.lineno, p.rec["seq"],
                           f"the next record ({e.source}:{e.lineno}) chains to a different hash: this "
                           f"record was rewritten and its hash recomputed (or the next one's prev was)")
        return Problem("reordered", e.source, e.lineno, rec["seq"],
                       f"seq {rec['seq']} after seq {p.rec['seq']}: out of order or replayed")

    # -- the end ------------------------------------------------------------------------

    def finish(self) -> Problem | None:
        for (inst, seq), a in self.anchors.items():
            st = self.state.get(inst)
            if st is None:
                continue          # an anchor for an instance this trail does not contain
            last = st.last
            if seq > last.rec["seq"]:
                return Problem("truncated", last.source, last.lineno, last.rec["seq"],
                               f"the trail of instance {inst} ends at seq {last.rec['seq']} here, "
                               f"but a checkpoint at seq {seq} is known: {seq - last.rec['seq']} "
                               f"or more record(s) were cut from the end")
        return None

    def result(self, problem: Problem | None) -> VerifyResult:
        heads = {inst: {"seq": s.last.rec["seq"], "hash": s.last.rec["hash"],
                        "source": s.last.source, "line": s.last.lineno} for inst, s in self.state.items()}
        warnings = list(self.warnings)
        if problem is None:
            for inst, s in self.state.items():
                after = s.records if s.last_checkpoint is None else \
                    s.last.rec["seq"] - s.last_checkpoint.rec["seq"]
                if after and s.last.rec.get("type") != CHECKPOINT:
                    warnings.append(
                        f"instance {inst}: {after} record(s) after the last checkpoint "
                        f"are protected by the hash chain only (a cut there needs an anchor to detect)")
        return VerifyResult(problem is None, self.verified, problem, tuple(warnings), heads,
                            self.checkpoints, self.public_key is not None)


def _entry(i: int, x: Line | Mapping[str, Any]) -> _Entry:
    if isinstance(x, Line):
        try:
            rec = orjson.loads(x.raw)
        except orjson.JSONDecodeError:
            rec = None
        if not isinstance(rec, dict):
            rec = None
        return _Entry(x.source, x.lineno, rec, x)
    return _Entry("<records>", i + 1, dict(x), None)


def _key(h: Any) -> bytes:
    """The index key of a hash: its first 16 bytes (memory: ~50 bytes, not ~110)."""
    try:
        return bytes.fromhex(h[:32])
    except (TypeError, ValueError):
        return str(h).encode()


def _find_later(rest, wanted: str) -> tuple[str, int, int] | None:
    """Read on (only after a break) to see whether the missing predecessor comes later."""
    i = 0
    for x in rest:
        e = _entry(i, x)
        i += 1
        if e.rec is not None and e.rec.get("hash") == wanted:
            return e.source, e.lineno, e.rec.get("seq")
    return None


def _declared_gap(rec: Mapping[str, Any], p: _Entry) -> str | None:
    """A segment.start that says which records its file lacks (a sink failure) and
    matches the previous file's last complete record is a gap, not tampering."""
    gap = rec.get("gap")
    if rec["type"] != SEGMENT_START or not isinstance(gap, dict):
        return None
    if gap.get("after_hash") != p.rec["hash"] or gap.get("after_seq") != p.rec["seq"]:
        return None
    if gap.get("count") != rec["seq"] - 1 - p.rec["seq"]:
        return None
    return (f"{p.source} ends at seq {p.rec['seq']}; the next file starts at seq {rec['seq']}: "
            f"{gap['count']} record(s) were not written to the file because the sink failed "
            f"({gap.get('error', 'unknown error')}); declared by the writer, chain continues")
