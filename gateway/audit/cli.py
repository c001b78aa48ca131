"""``piigate audit verify|search|report``.

The lead wires it with ``gateway.audit.cli.register(subparsers)``; each
subcommand sets ``func(args) -> int`` (the exit status). Standalone:
``python -m gateway.audit.cli verify FILE...``.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tomllib
from pathlib import Path

import orjson

from gateway.audit.chain import load_public_key, load_signing_key, verify
from gateway.audit.config import AuditConfig
from gateway.audit.query import (Filter, expand_paths, format_record, format_report, iter_records,
                                 parse_when, read_trail, report, search)
from gateway.audit.records import CHECKPOINT


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("audit", help="verify, search and report on the audit trail",
                              description="Verify, search and report on the audit trail.")
    sub = p.add_subparsers(dest="audit_command", metavar="{verify,search,report,keygen}")
    sub.required = True

    v = sub.add_parser("verify", help="prove a trail intact or name the first bad record")
    _files_args(v)
    v.add_argument("--public-key", metavar="FILE",
                   help="Ed25519 public key (PEM or base64 raw) to check checkpoint signatures")
    v.add_argument("--signing-key", metavar="FILE",
                   help="the signing key (PEM or base64 seed); its public half is used")
    v.add_argument("--anchors", metavar="FILE", action="append", default=[],
                   help="JSON lines holding checkpoints known from elsewhere (detects a cut tail)")
    v.add_argument("--anchors-redis", metavar="URL",
                   help="take the newest checkpoint of each instance from the Redis stream sink")
    v.add_argument("--stream", default=None, help="the Redis stream (default: from --config, "
                                                  "else piigate:audit)")
    v.add_argument("--json", action="store_true", help="machine-readable result")
    v.set_defaults(func=_guarded(cmd_verify))

    s = sub.add_parser("search", help="find records by user, column, category, table, time, "
                                      "request or grant")
    _files_args(s)
    _filter_args(s)
    s.add_argument("--type", action="append", default=[], dest="types",
                   help="record type or prefix (statement, request, grant.created, ...); repeatable")
    s.add_argument("--session")
    s.add_argument("--limit", type=int)
    s.add_argument("--json", action="store_true", help="one JSON record a line")
    s.set_defaults(func=_guarded(cmd_search))

    k = sub.add_parser("keygen", help="make an Ed25519 signing key for checkpoints")
    k.add_argument("--out", required=True, metavar="FILE",
                   help="where to write the private key (PEM, mode 0600; never overwritten)")
    k.set_defaults(func=_guarded(cmd_keygen))

    r = sub.add_parser("report", help="who accessed which PII categories over a period")
    _files_args(r)
    r.add_argument("--since", help="start (ISO-8601 or 24h, 7d ago); default: everything")
    r.add_argument("--until", help="end, exclusive (ISO-8601 or a duration ago)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_guarded(cmd_report))
    return p


def _files_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="trail files or directories (default: the file sink's files from --config)")
    p.add_argument("--config", metavar="TOML", help="the gateway config: its [audit] section")


def _filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user")
    p.add_argument("--column", help="ssn, customers.ssn or public.customers.ssn")
    p.add_argument("--category", help="a PII category (ssn, email, ...)")
    p.add_argument("--table", help="customers or public.customers")
    p.add_argument("--since", help="ISO-8601, or a duration ago: 30m, 24h, 7d")
    p.add_argument("--until", help="ISO-8601, or a duration ago (exclusive)")
    p.add_argument("--request", dest="request_id")
    p.add_argument("--grant", dest="grant_id")


class _UsageError(Exception):
    pass


def _config(args) -> AuditConfig | None:
    if not getattr(args, "config", None):
        return None
    try:
        with open(args.config, "rb") as f:
            table = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise _UsageError(f"{args.config}: {e}") from None
    try:
        return AuditConfig.from_table(table.get("audit", {}), args.config,
                                      default_redis_url=table.get("redis", {}).get("url"))
    except ValueError as e:
        raise _UsageError(str(e)) from None


def _files(args, cfg: AuditConfig | None) -> list[Path]:
    if args.files:
        files = expand_paths(args.files)
    elif cfg is not None and cfg.file is not None:
        from gateway.audit.sinks import FileSink
        files = FileSink(cfg.file).existing_files()
    else:
        raise _UsageError("no trail files given (name files or directories, or --config)")
    if not files:
        raise _UsageError("no trail files found")
    return files


def _read(files: list[Path]):
    try:
        return read_trail(files)
    except OSError as e:
        raise _UsageError(f"cannot read {e.filename}: {e.strerror}") from None


def cmd_verify(args) -> int:
    cfg = _config(args)
    files = _files(args, cfg)
    key = None
    try:
        if args.public_key:
            key = load_public_key(Path(args.public_key).read_bytes())
        elif args.signing_key:
            key = load_signing_key(Path(args.signing_key).read_bytes()).public_key()
        elif cfg is not None and cfg.signing_key is not None:
            key = cfg.signing_key.public_key()
    except (OSError, ValueError) as e:
        raise _UsageError(f"key: {e}") from None
    anchors = []
    for a in args.anchors:
        anchors.extend(r for r in iter_records(_read([Path(a)])) if r.get("type") == CHECKPOINT)
    redis_url = args.anchors_redis
    if redis_url:
        stream = args.stream or (cfg.redis.stream if cfg and cfg.redis else "piigate:audit")
        anchors.extend(asyncio.run(_redis_anchors(redis_url, stream)))
    result = verify(_read(files), public_key=key, anchors=anchors)
    if args.json:
        out = {"ok": result.ok, "records": result.records, "checkpoints": result.checkpoints,
               "signatures_checked": result.signatures_checked, "warnings": list(result.warnings),
               "heads": result.heads,
               "first_bad": None if result.first_bad is None else {
                   "kind": result.first_bad.kind, "file": result.first_bad.source,
                   "line": result.first_bad.line, "seq": result.first_bad.seq,
                   "message": result.first_bad.message}}
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(result.summary())
    return 0 if result.ok else 1


async def _redis_anchors(url: str, stream: str, scan: int = 10_000) -> list[dict]:
    """The newest checkpoint of each instance among the stream's last ``scan`` entries."""
    import redis.asyncio as aioredis
    client = aioredis.from_url(url)
    try:
        newest: dict[str, dict] = {}
        for _id, fields in await client.xrevrange(stream, count=scan):
            if fields.get(b"type") == CHECKPOINT.encode():
                rec = orjson.loads(fields[b"r"])
                newest.setdefault(rec["instance"], rec)
        return list(newest.values())
    finally:
        await client.aclose()


def _filter(args) -> Filter:
    try:
        return Filter(user=args.user, column=args.column, category=args.category, table=args.table,
                      since=parse_when(args.since) if args.since else None,
                      until=parse_when(args.until) if args.until else None,
                      request_id=args.request_id, grant_id=args.grant_id,
                      types=tuple(getattr(args, "types", ()) or ()),
                      session=getattr(args, "session", None))
    except ValueError as e:
        raise _UsageError(str(e)) from None


def cmd_search(args) -> int:
    files = _files(args, _config(args))
    found = search(iter_records(_read(files)), _filter(args), limit=args.limit)
    for rec in found:
        if args.json:
            sys.stdout.write(orjson.dumps(rec).decode() + "\n")
        else:
            print(format_record(rec))
    if not args.json:
        print(f"({len(found)} record(s))", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    files = _files(args, _config(args))
    try:
        since = parse_when(args.since) if args.since else None
        until = parse_when(args.until) if args.until else None
    except ValueError as e:
        raise _UsageError(str(e)) from None
    rows = report(iter_records(_read(files)), since, until)
    if args.json:
        sys.stdout.write(orjson.dumps([r.as_dict() for r in rows], option=orjson.OPT_INDENT_2).decode()
                         + "\n")
    else:
        period = f"{args.since or 'the beginning'} .. {args.until or 'now'}"
        print(f"PII access, {period}:")
        print(format_report(rows) if rows else "(no statement touched catalogued PII)")
    return 0


def cmd_keygen(args) -> int:
    """Write a new private key; print the public key to give auditors (verify --public-key)."""
    import os
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from gateway.audit.chain import key_id, public_key_b64
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise _UsageError(f"{args.out} exists; not overwriting a signing key") from None
    except OSError as e:
        raise _UsageError(f"cannot create {args.out}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    print(f"private key: {args.out}  (set [audit] signing_key_file to it)")
    print(f"public key:  {public_key_b64(key.public_key())}  (key id {key_id(key.public_key())};"
          f" give it to auditors: piigate audit verify --public-key FILE)")
    return 0


def _guarded(fn):
    """The subcommand with usage errors turned into one line on stderr and exit 2."""
    def run(args) -> int:
        try:
            return fn(args)
        except _UsageError as e:
            print(f"piigate audit {args.audit_command}: {e}", file=sys.stderr)
            return 2
    run.__name__ = fn.__name__
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="piigate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
