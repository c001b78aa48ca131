"""``piigate catalog ...``: show the merged catalog, scan a database for PII.

    piigate catalog show [--config FILE] [--dsn DSN] [--catalog FILE] [--json]
    piigate catalog scan [--config FILE] [--dsn DSN] [--out proposals.toml]
                         [--sample-size N] [--schema S ...] [--json]

``--config`` reads the upstream connection and ``[catalog] file`` /
``comment_tags`` from the gateway config; ``--dsn`` and ``--catalog`` override
them (and work without a config). ``catalog show`` without any database prints
the catalog file alone. Exit status: 0 ok, 1 database unreachable, 2 bad
catalog/config file.

``register(subparsers, config=None)`` adds the subcommands; ``config`` (a
``gateway.config.Config``) is used when the caller already has one loaded.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any

from catalog.loader import (
    CatalogError, build_catalog, load_catalog_file, missing_columns, overridden_tags,
)


@dataclass(frozen=True)
class _Sources:
    connect: dict[str, Any] | None      # asyncpg.connect(**connect), or None: no database
    catalog_file: str | None
    comment_tags: bool = True


def register(subparsers, config=None) -> None:
    p = subparsers.add_parser("catalog", help="the PII catalog: show it, discover PII")
    sub = p.add_subparsers(dest="catalog_command", required=True)

    def common(sp) -> None:
        sp.add_argument("--config", "-c", help="gateway config file (upstream and [catalog])")
        sp.add_argument("--dsn", help="PostgreSQL DSN of the database (overrides --config)")
        sp.add_argument("--json", action="store_true", help="machine-readable output")

    show = sub.add_parser("show", help="print the merged catalog (file + comment tags + derived) "
                          "and where each entry came from")
    common(show)
    show.add_argument("--catalog", help="catalog file (overrides [catalog] file of --config)")
    show.set_defaults(func=lambda args: cmd_show(args, config))

    scan = sub.add_parser("scan", help="sample a database and propose catalog entries "
                          "(values are never printed)")
    common(scan)
    scan.add_argument("--out", "-o", help="write the proposals as a catalog TOML file to review")
    scan.add_argument("--sample-size", type=int, default=200, help="rows sampled per table (200)")
    scan.add_argument("--schema", action="append", help="scan only this schema (repeatable)")
    scan.set_defaults(func=lambda args: cmd_scan(args, config))


def _sources(args, config) -> _Sources:
    """Flags first, then ``--config``, then the ``config`` handed to register()."""
    if getattr(args, "config", None):
        from gateway.config import load_config
        config = load_config(args.config)   # ConfigError names the file and key
    connect = None
    catalog_file = getattr(args, "catalog", None)
    comment_tags = True
    if config is not None:
        up = config.upstream
        connect = {"host": up.host, "port": up.port, "user": up.user, "password": up.password,
                   "database": up.database, "timeout": up.connect_timeout_s,
                   "ssl": _ssl(up.sslmode, up.sslrootcert)}
        catalog_file = catalog_file or config.resolve_path(config.catalog_file)
        comment_tags = config.catalog_comment_tags
    if args.dsn:
        connect = {"dsn": args.dsn}
    return _Sources(connect, catalog_file, comment_tags)


def _ssl(sslmode: str, rootcert: str | None):
    """asyncpg's ``ssl`` argument for the config's [upstream] sslmode / sslrootcert."""
    if sslmode == "disable":
        return False
    if sslmode in ("verify-ca", "verify-full") and rootcert:
        import ssl
        ctx = ssl.create_default_context(cafile=rootcert)
        ctx.check_hostname = sslmode == "verify-full"
        return ctx
    return sslmode


async def _connect(connect: dict[str, Any]):
    import asyncpg
    return await asyncpg.connect(**connect)


def _describe(connect: dict[str, Any]) -> str:
    if "dsn" in connect:
        from urllib.parse import urlsplit
        parts = urlsplit(connect["dsn"])   # never echo a password
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or ''}"
    return f"{connect['host']}:{connect['port']}/{connect['database']}"


# ------------------------------------------------------------------------ show


def cmd_show(args, config=None) -> int:
    try:
        src = _sources(args, config)
        cfile = load_catalog_file(src.catalog_file) if src.catalog_file else None
    except (CatalogError, _config_error()) as exc:
        print(f"piigate: {exc}", file=sys.stderr)
        return 2
    if cfile is None and src.connect is None:
        print("piigate: nothing to show: give --catalog FILE, --dsn DSN or --config FILE",
              file=sys.stderr)
        return 2
    file_entries = cfile.entries if cfile else ()
    warnings: list[str] = []
    if src.connect is None:
        catalog = build_catalog(file_entries, ())
        where = "file only (no database: tags and derived entries need --dsn or --config)"
    else:
        try:
            tags, schema = asyncio.run(_read_database(src, cfile))
        except CatalogError as exc:
            print(f"piigate: {exc}", file=sys.stderr)
            return 2
        except (OSError, asyncio.TimeoutError, _pg_error()) as exc:
            print(f"piigate: cannot read the database at {_describe(src.connect)}: {exc}; "
                  "check the DSN / [upstream] and that the server is running", file=sys.stderr)
            return 1
        catalog = build_catalog(file_entries, tags, schema)
        warnings = missing_columns(file_entries, schema) + overridden_tags(file_entries, tags)
        where = f"database {_describe(src.connect)}, schema version {schema.version}"
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    rows = [catalog.entries[ref] for ref in sorted(catalog.entries)]
    if args.json:
        print(json.dumps({
            "version": catalog.version,
            "entries": [{"column": str(e.column), "category": e.category,
                         "sensitivity": e.sensitivity.name.lower(), "owner": e.owner,
                         "description": e.description, "source": e.source} for e in rows],
            "warnings": warnings,
        }, indent=2))
        return 0
    print(f"catalog {catalog.version}: {len(rows)} column(s); {where}")
    print(_table(["COLUMN", "CATEGORY", "SENSITIVITY", "SOURCE", "OWNER"],
                 [[str(e.column), e.category, e.sensitivity.name.lower(), e.source, e.owner]
                  for e in rows]))
    return 0


async def _read_database(src: _Sources, cfile):
    from gateway.introspect import load_comment_tags, load_live_schema
    conn = await _connect(src.connect)
    try:
        tags = await load_comment_tags(conn, cfile.categories if cfile else {}) \
            if src.comment_tags else []
        schema = await load_live_schema(conn)
    finally:
        await conn.close()
    return tags, schema


# ------------------------------------------------------------------------ scan


def cmd_scan(args, config=None) -> int:
    try:
        src = _sources(args, config)
    except _config_error() as exc:
        print(f"piigate: {exc}", file=sys.stderr)
        return 2
    if src.connect is None:
        print("piigate: catalog scan needs a database: give --dsn DSN or --config FILE",
              file=sys.stderr)
        return 2
    if args.sample_size < 1:
        print("piigate: --sample-size must be at least 1", file=sys.stderr)
        return 2
    skipped: list = []
    try:
        proposals = asyncio.run(_scan(src, args.sample_size, args.schema, skipped))
    except (OSError, asyncio.TimeoutError, _pg_error()) as exc:
        print(f"piigate: cannot scan the database at {_describe(src.connect)}: {exc}",
              file=sys.stderr)
        return 1
    for ref, reason in skipped:
        print(f"warning: {ref} not sampled: {reason}", file=sys.stderr)
    if args.out:
        from gateway.catalog_scan import write_proposal_file
        write_proposal_file(args.out, proposals,
                            header=f"scanned {_describe(src.connect)}, up to {args.sample_size} "
                                   "rows per table")
    if args.json:
        print(json.dumps([{"column": str(p.column), "category": p.category,
                           "confidence": p.confidence,
                           "sensitivity": p.sensitivity.name.lower(),
                           "evidence": list(p.evidence),
                           "masked_examples": list(p.masked_examples)} for p in proposals],
                         indent=2))
        return 0
    print(f"{len(proposals)} column(s) proposed from {_describe(src.connect)}"
          + (f"; written to {args.out} for review" if args.out else ""))
    print(_table(["COLUMN", "CATEGORY", "CONFIDENCE", "SENSITIVITY"],
                 [[str(p.column), p.category, f"{p.confidence:.2f}", p.sensitivity.name.lower()]
                  for p in proposals]))
    for p in proposals:
        print(f"\n{p.column}: {p.category} ({p.confidence:.2f})")
        for e in p.evidence:
            print(f"  evidence: {e}")
        if p.masked_examples:
            print(f"  masked examples: {', '.join(p.masked_examples)}")
    return 0


async def _scan(src: _Sources, sample_size: int, schemas, skipped):
    from gateway.catalog_scan import scan_database
    conn = await _connect(src.connect)
    try:
        return await scan_database(conn, sample_size=sample_size, schemas=schemas,
                                   skipped=skipped)
    finally:
        await conn.close()


# ----------------------------------------------------------------------- helpers


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def _pg_error():
    import asyncpg
    return asyncpg.PostgresError


def _config_error():
    try:
        from gateway.config import ConfigError
        return ConfigError
    except ImportError:  # pragma: no cover
        return CatalogError


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.catalog_cli catalog show ...`` (the same as ``piigate catalog``)."""
    parser = argparse.ArgumentParser(prog="piigate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
