"""``piigate policy check`` and ``piigate policy explain`` (a dry run).

``explain`` shows what the gateway would do with a statement for a user, and why:
the effect, the rule, the catalogued columns, the reasons, and for MASK the SQL
that would be forwarded. It analyses with the live schema of ``--dsn`` (or a
schema JSON file, the format of tests/data/analysis/security_schema.json) and
the catalog (``--catalog`` file merged with the database's comment tags).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from catalog.model import Catalog, RelationRef
from policies.model import Principal, RequestContext


def register(subparsers, config=None) -> None:
    p = subparsers.add_parser("policy", help="the access policy: validate it, explain a decision")
    sub = p.add_subparsers(dest="policy_command", required=True)

    check = sub.add_parser("check", help="validate a policy file (errors name file and line)")
    check.add_argument("--policy", "-p", required=True, help="the policy TOML file")
    check.set_defaults(func=cmd_check)

    ex = sub.add_parser("explain", help="dry run: what the gateway would do with SQL for a user, and why")
    ex.add_argument("--policy", "-p", required=True, help="the policy TOML file")
    ex.add_argument("--user", "-u", required=True, help="the gateway user")
    ex.add_argument("--roles", default="", help="comma-separated roles/groups of the user")
    ex.add_argument("--catalog", help="catalog TOML file (merged with COMMENT 'pii:...' tags)")
    ex.add_argument("--dsn", help="introspect this database for the live schema and comment tags")
    ex.add_argument("--schema-json", help="a frozen live schema (JSON) instead of --dsn")
    ex.add_argument("--search-path", default="public", help="session search_path (default public)")
    ex.add_argument("--client-addr", default="127.0.0.1")
    ex.add_argument("--application-name", default="psql")
    ex.add_argument("--reason", help="the reason the user gives (SET piigate.reason)")
    ex.add_argument("--pseudonym-installed", action="store_true", default=None,
                    help="assume piigate.pseudonym is installed (default: detected from the schema)")
    ex.add_argument("--json", action="store_true", help="machine-readable output")
    ex.add_argument("sql", help="the statement(s)")
    ex.set_defaults(func=cmd_explain)

    inst = sub.add_parser("install-masking", help="install piigate.pseudonym (keyed hash masking) "
                          "in a database; the key is read from a file, never put in masked queries")
    inst.add_argument("--dsn", required=True, help="DSN of a role that may create the piigate schema")
    inst.add_argument("--key-file", required=True,
                      help="file holding the secret key (created with 32 random bytes if missing)")
    inst.set_defaults(func=cmd_install_masking)


def cmd_check(args) -> int:
    from policies.loader import PolicyError, load_policy
    try:
        policy = load_policy(args.policy)
    except PolicyError as e:
        print(f"piigate: {e}", file=sys.stderr)
        return 2
    unrestricted = [r.name for r in policy.rules if r.unrestricted]
    print(f"{args.policy}: ok, {len(policy.rules)} rule(s), {len(policy.auto_approve)} auto-approve rule(s), "
          f"version {policy.version}")
    if unrestricted:
        print("not under PII policy (unrestricted): " + ", ".join(unrestricted))
    return 0


def cmd_explain(args) -> int:
    from catalog.loader import CatalogError
    from policies.loader import PolicyError, load_policy
    try:
        policy = load_policy(args.policy)
        catalog, schema = _catalog_and_schema(args)
    except (PolicyError, CatalogError, OSError, ValueError) as e:
        print(f"piigate: {e}", file=sys.stderr)
        return 2
    principal = Principal(args.user, frozenset(r.strip() for r in args.roles.split(",") if r.strip()))
    context = RequestContext(client_addr=args.client_addr, application_name=args.application_name,
                             now=time.time(), reason=args.reason)
    search_path = tuple(s.strip() for s in args.search_path.split(",") if s.strip())
    results = explain(args.sql, policy, catalog, schema, principal, context, search_path,
                      pseudonym_installed=args.pseudonym_installed)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        for i, r in enumerate(results, 1):
            if len(results) > 1:
                print(f"-- statement {i}: {r['statement']}")
            print("\n".join(r["lines"]))
            if "rewritten" in r:
                print(f"forwarded: {r['rewritten']}")
            if r.get("notes"):
                print("\n".join(f"note:    {n}" for n in r["notes"]))
            print()
    return 0


def explain(sql, policy, catalog: Catalog, schema, principal, context, search_path,
            *, pseudonym_installed: bool | None = None) -> list[dict]:
    """Pure: analyse, decide and (for MASK) rewrite each statement, as the gateway
    would. Returns one dict per statement (effect, rule, lines, rewritten SQL)."""
    from gateway.analysis import analyze
    from gateway.decisions import enforce
    from policies.decide import explain_lines
    from policies.model import Effect

    out = []
    for facts in analyze(sql, schema, search_path):
        e = enforce(facts, catalog, schema, policy, principal, context, (), search_path,
                    pseudonym_installed=pseudonym_installed)
        d = e.decision
        entry = {"statement": facts.sql, "effect": d.effect.value, "rule": d.rule,
                 "columns": [str(c) for c in d.columns], "reasons": list(d.reasons),
                 "lines": explain_lines(d)}
        if d.effect is Effect.MASK:
            entry["rewritten"] = e.sql
            entry["notes"] = list(e.notes)
        out.append(entry)
    return out


def _catalog_and_schema(args):
    if args.dsn:
        import asyncio

        import asyncpg

        from gateway.introspect import load_catalog_and_schema
        from gateway.lineage import with_view_lineage

        async def load():
            conn = await asyncpg.connect(args.dsn)
            try:
                catalog, schema, warnings = await load_catalog_and_schema(conn, args.catalog,
                                                                          annotate=with_view_lineage)
            finally:
                await conn.close()
            for w in warnings:
                print(f"warning: {w}", file=sys.stderr)
            return catalog, schema
        return asyncio.run(load())
    if args.schema_json:
        from catalog.loader import build_catalog, load_catalog_file
        from gateway.lineage import with_view_lineage
        schema = with_view_lineage(schema_from_json(Path(args.schema_json).read_text(encoding="utf-8")))
        entries = load_catalog_file(args.catalog).entries if args.catalog else ()
        return build_catalog(entries, (), schema), schema
    raise ValueError("policy explain needs the live schema: give --dsn DSN (introspects the database) "
                     "or --schema-json FILE")


def schema_from_json(text: str):
    """A LiveSchema from the JSON written by tests/gateway/analysis/make_security_schema.py."""
    from gateway.schema import Column, Function, LiveSchema, Relation
    d = json.loads(text)
    rels = [Relation(RelationRef(r["schema"], r["name"]), r["kind"],
                     tuple(Column(c[0], c[1]) for c in r["columns"]),
                     tuple(RelationRef(p[0], p[1]) for p in r.get("parents", [])),
                     r.get("view_definition"))
            for r in d["relations"]]
    funcs = [Function(f[0], f[1], tuple(f[2]), f[3], f[4], f[5], f[6], f[7], f[8]) for f in d.get("functions", [])]
    return LiveSchema.of(rels, funcs, tuple(d.get("search_path", ["public"])))


def cmd_install_masking(args) -> int:
    import asyncio
    import os

    import asyncpg

    from gateway.rewrite.pseudonym import install_statements

    path = Path(args.key_file)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
        print(f"created a new key in {path} (mode 600); keep it: pseudonyms change with the key")
    key = path.read_bytes()
    if len(key) < 16:
        print(f"piigate: {path} holds {len(key)} bytes; use at least 16 (32 random bytes recommended)",
              file=sys.stderr)
        return 2

    async def install() -> None:
        conn = await asyncpg.connect(args.dsn)
        try:
            async with conn.transaction():
                for stmt in install_statements(key):
                    await conn.execute(stmt)
        finally:
            await conn.close()
    try:
        asyncio.run(install())
    except (OSError, asyncpg.PostgresError) as e:
        print(f"piigate: installing piigate.pseudonym failed: {e}", file=sys.stderr)
        return 2
    print("installed piigate.pseudonym; run the gateway with hash masking enabled")
    return 0
