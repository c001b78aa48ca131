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
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit.records import CHECKPOINT, SEGMENT_START, stamp

GENESIS = "0" * 64


# --------------------------------------------------------------------------------------
# hashing


def canonical(record: Mapping[str, Any], exclude: tuple[str, ...] = ("hash",)) -> bytes:
    """The bytes that are hashed (and, for checkpoints, signed): sorted keys, no ``hash``."""
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


@dataclass(frozen=True, slots=True)
class ChainHead:
    """Where an instance's chain stands: the last record's seq and hash."""
    seq: int = 0
    hash: str = GENESIS


class Chain:
    """Turns events into chained records for one instance. Pure (the caller gives
    the time). Not thread-safe: one writer owns it."""

    def __init__(self, instance: str, head: ChainHead = ChainHead(),
                 signing_key: Ed25519PrivateKey | None = None):
        self.instance = instance
        self.head = head
        self.signing_key = signing_key
        self.key_id = key_id(signing_key.public_key()) if signing_key else None
        self.since_checkpoint = 0

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

    def checkpoint_event(self, reason: str = "periodic") -> dict:
        return {"type": CHECKPOINT, "reason": reason}


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


@dataclass
class _Entry:
    source: str
    lineno: int
    rec: dict | None
    line: Line | None


@dataclass
class _InstanceState:
    last: _Entry
    last_checkpoint: _Entry | None = None
    records: int = 0


_REQUIRED = ("instance", "type", "seq", "prev", "hash")


def verify(records: Iterable[Line | Mapping[str, Any]], public_key: Ed25519PublicKey | None = None,
           anchors: Iterable[Mapping[str, Any]] = (), partial: bool = False) -> VerifyResult:
    """Prove a trail intact, or name the first record altered, inserted, deleted or
    reordered.

    ``records``: ``Line`` values (from ``split_lines``, files in chain order) or
    already parsed dicts. ``public_key``: checkpoints' signatures are checked when
    given (a bad one is ``forged_signature``). ``anchors``: checkpoint records known
    from elsewhere (the Redis stream, a copy shipped off the host); a trail that
    ends before an anchor's seq was truncated, one whose record at that seq has
    another hash was rewritten. ``partial``: the records are a window (a capped
    Redis stream), so each instance may start mid-chain.
    """
    entries = [_entry(i, x) for i, x in enumerate(records)]
    by_hash: dict[str, int] = {}
    for i, e in enumerate(entries):
        if e.rec is not None and isinstance(e.rec.get("hash"), str):
            by_hash.setdefault(e.rec["hash"], i)
    by_seq: dict[tuple[str, int], int] = {}
    state: dict[str, _InstanceState] = {}
    warnings: list[str] = []
    verified = checkpoints = 0

    def result(problem: Problem | None) -> VerifyResult:
        heads = {inst: {"seq": s.last.rec["seq"], "hash": s.last.rec["hash"],
                        "source": s.last.source, "line": s.last.lineno} for inst, s in state.items()}
        if problem is None:
            for inst, s in state.items():
                after = s.records if s.last_checkpoint is None else \
                    s.last.rec["seq"] - s.last_checkpoint.rec["seq"]
                if after and s.last.rec.get("type") != CHECKPOINT:
                    warnings.append(
                        f"instance {inst}: {after} record(s) after the last checkpoint "
                        f"are protected by the hash chain only (a cut there needs an anchor to detect)")
        return VerifyResult(problem is None, verified, problem, tuple(warnings), heads,
                            checkpoints, public_key is not None)

    for i, e in enumerate(entries):
        if e.rec is None:
            if e.line is not None and e.line.last_in_source and not e.line.terminated:
                warnings.append(f"{e.source}:{e.lineno}: incomplete last record ({len(e.line.raw)} bytes, "
                                f"no newline): cut by a crash or a truncation; not counted")
                continue
            return result(Problem("corrupt", e.source, e.lineno, None,
                                  "not a JSON audit record (edited or damaged)"))
        rec = e.rec
        missing = [k for k in _REQUIRED if k not in rec]
        if missing:
            return result(Problem("corrupt", e.source, e.lineno, rec.get("seq"),
                                  f"missing field(s) {', '.join(missing)}"))
        if record_hash(rec) != rec["hash"]:
            return result(Problem("altered", e.source, e.lineno, rec["seq"],
                                  "the record's content does not match its hash"))
        first = by_hash[rec["hash"]]
        if first != i:
            return result(Problem("duplicate", e.source, e.lineno, rec["seq"],
                                  f"same record as {entries[first].source}:{entries[first].lineno} (replayed)"))
        inst = rec["instance"]
        st = state.get(inst)
        if st is None:
            if rec["prev"] != GENESIS and rec["type"] != SEGMENT_START and not partial:
                return result(Problem("missing_start", e.source, e.lineno, rec["seq"],
                                      "the trail does not begin with a segment.start record: "
                                      "records before this one are missing or were moved"))
            if rec["prev"] == GENESIS and rec["seq"] != 1:
                return result(Problem("altered", e.source, e.lineno, rec["seq"],
                                      "a chain start (prev = genesis) with seq other than 1"))
            if rec["prev"] != GENESIS:
                warnings.append(f"instance {inst}: chain starts mid-way at seq {rec['seq']} "
                                f"({e.source}:{e.lineno}); earlier files were not given, so they "
                                f"are not verified")
            st = state[inst] = _InstanceState(last=e)
        else:
            p = st.last
            if rec["prev"] != p.rec["hash"]:
                gap = _declared_gap(rec, p)
                if gap is None:
                    return result(_classify(entries, by_hash, i, p, st, public_key))
                warnings.append(gap)
            elif rec["seq"] <= p.rec["seq"]:
                return result(Problem("inserted", e.source, e.lineno, rec["seq"],
                                      f"seq {rec['seq']} again after seq {p.rec['seq']} "
                                      f"({p.source}:{p.lineno}): a record was inserted and the "
                                      f"chain recomputed from there"))
            elif rec["seq"] != p.rec["seq"] + 1:
                return result(Problem("deleted", e.source, e.lineno, rec["seq"],
                                      f"seq {rec['seq']} follows seq {p.rec['seq']}: records were "
                                      f"removed and the chain recomputed from there"))
        if rec["type"] == CHECKPOINT:
            if rec.get("head") != rec["prev"] or rec.get("count") != rec["seq"] - 1:
                return result(Problem("bad_checkpoint", e.source, e.lineno, rec["seq"],
                                      "checkpoint head/count do not match its place in the chain"))
            if public_key is not None and not signature_valid(rec, public_key):
                c = st.last_checkpoint
                since = "the start" if c is None else f"the previous checkpoint ({c.source}:{c.lineno})"
                return result(Problem("forged_signature", e.source, e.lineno, rec["seq"],
                                      f"checkpoint signature does not verify with the given public "
                                      f"key: this checkpoint was forged, or records since {since} "
                                      f"were rewritten and the chain recomputed"))
            st.last_checkpoint = e
            checkpoints += 1
        st.last = e
        st.records += 1
        by_seq[(inst, rec["seq"])] = i
        verified += 1

    for a in anchors:
        problem = _check_anchor(a, entries, by_seq, state, public_key)
        if problem is not None:
            return result(problem)
    return result(None)


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


def _declared_gap(rec: Mapping[str, Any], p: _Entry) -> str | None:
    """A segment.start that says which records its file lacks (a sink failure) and
    matches the previous file's last complete record is a gap, not tampering."""
    gap = rec.get("gap")
    if rec["type"] != SEGMENT_START or not isinstance(gap, dict) or p.source == "":
        return None
    if gap.get("after_hash") != p.rec["hash"] or gap.get("after_seq") != p.rec["seq"]:
        return None
    if gap.get("count") != rec["seq"] - 1 - p.rec["seq"]:
        return None
    return (f"{p.source} ends at seq {p.rec['seq']}; the next file starts at seq {rec['seq']}: "
            f"{gap['count']} record(s) were not written to the file because the sink failed "
            f"({gap.get('error', 'unknown error')}); declared by the writer, chain continues")


def _classify(entries: list[_Entry], by_hash: dict[str, int], i: int, p: _Entry,
              st: _InstanceState, public_key: Ed25519PublicKey | None) -> Problem:
    """Record ``i`` does not chain to ``p``, the record before it: say what happened."""
    e = entries[i]
    rec = e.rec
    where = "" if e.source == p.source else f" (the previous file {p.source} ends at seq {p.rec['seq']})"
    if rec["prev"] == p.rec["prev"]:
        return Problem("inserted", p.source, p.lineno, p.rec["seq"],
                       f"this record was inserted: the next record ({e.source}:{e.lineno}) chains "
                       f"to the record before it")
    pos = by_hash.get(rec["prev"])
    if pos is not None and pos > i:
        q = entries[pos]
        return Problem("reordered", e.source, e.lineno, rec["seq"],
                       f"out of order: its predecessor (seq {q.rec['seq']}) comes later, at "
                       f"{q.source}:{q.lineno}")
    if pos is not None:
        # chains to something earlier than p: what lies between does not belong here
        nxt = next((k for k in range(pos + 1, i) if entries[k].rec is not None
                    and entries[k].rec.get("instance") == rec["instance"]), i)
        q = entries[nxt]
        return Problem("inserted", q.source, q.lineno, q.rec.get("seq"),
                       f"does not belong here: {e.source}:{e.lineno} chains directly to "
                       f"{entries[pos].source}:{entries[pos].lineno}")
    if rec["type"] == CHECKPOINT and public_key is not None and signature_valid(rec, public_key):
        c = st.last_checkpoint
        start = "the start of the trail" if c is None else f"the checkpoint at {c.source}:{c.lineno}"
        first = _first_after(entries, c, rec["instance"]) if c is not None else _first_of(entries, rec["instance"])
        return Problem("altered", first.source, first.lineno, first.rec.get("seq"),
                       f"the signed checkpoint at {e.source}:{e.lineno} does not match the chain "
                       f"before it: records between {start} and it were rewritten and their hashes "
                       f"recomputed (this is the first record of that range)")
    if rec["seq"] > p.rec["seq"] + 1:
        n = rec["seq"] - p.rec["seq"] - 1
        return Problem("deleted", e.source, e.lineno, rec["seq"],
                       f"{n} record(s) missing before this one (seq {p.rec['seq'] + 1}.."
                       f"{rec['seq'] - 1}){where}" + (" : a rotated file is missing?"
                                                       if e.source != p.source else ""))
    if rec["seq"] == p.rec["seq"] + 1:
        return Problem("altered", p.source, p.lineno, p.rec["seq"],
                       f"the next record ({e.source}:{e.lineno}) chains to a different hash: this "
                       f"record was rewritten and its hash recomputed (or the next one's prev was)")
    return Problem("reordered", e.source, e.lineno, rec["seq"],
                   f"seq {rec['seq']} after seq {p.rec['seq']}: out of order or replayed")


def _first_after(entries: list[_Entry], c: _Entry, instance: str) -> _Entry:
    start = entries.index(c)
    for e in entries[start + 1:]:
        if e.rec is not None and e.rec.get("instance") == instance:
            return e
    return c


def _first_of(entries: list[_Entry], instance: str) -> _Entry:
    return next(e for e in entries if e.rec is not None and e.rec.get("instance") == instance)


def _check_anchor(a: Mapping[str, Any], entries: list[_Entry], by_seq: dict, state: dict,
                  public_key: Ed25519PublicKey | None) -> Problem | None:
    inst, seq, h = a.get("instance"), a.get("seq"), a.get("hash")
    if public_key is not None and a.get("type") == CHECKPOINT and not signature_valid(a, public_key):
        return Problem("forged_signature", "<anchor>", 0, seq,
                       f"anchor checkpoint for instance {inst} seq {seq} has an invalid signature")
    st = state.get(inst)
    if st is None:
        return None      # an anchor for an instance this trail does not contain
    last = st.last
    if seq > last.rec["seq"]:
        return Problem("truncated", last.source, last.lineno, last.rec["seq"],
                       f"the trail of instance {inst} ends at seq {last.rec['seq']} here, but a "
                       f"checkpoint at seq {seq} is known: {seq - last.rec['seq']} or more record(s) "
                       f"were cut from the end")
    pos = by_seq.get((inst, seq))
    if pos is not None and entries[pos].rec["hash"] != h:
        e = entries[pos]
        return Problem("altered", e.source, e.lineno, seq,
                       "differs from the anchored checkpoint with the same seq")
    return None
