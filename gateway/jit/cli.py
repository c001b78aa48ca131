"""``piigate requests|grants|tokens ...``: approvers in a terminal, through the admin API.

    piigate requests list [--state pending] [--user alice]
    piigate requests show REQ
    piigate requests approve REQ --duration 15m [--scope statement|columns] [--uses 1]
                                 [--comment TEXT] [--totp CODE]
    piigate requests deny REQ --reason TEXT
    piigate grants list [--user alice]
    piigate grants revoke GRANT
    piigate tokens issue --user ci-bot --action read --scope columns
                         --column public.customers.email --ttl 1h --duration 15m

The API is found with ``--url`` or $PIIGATE_ADMIN_URL (default http://127.0.0.1:8080)
and the approver token with ``--token`` or $PIIGATE_ADMIN_TOKEN. ``--json`` prints the
API's JSON instead of a table. Exit status: 0 done, 1 refused or failed, 2 usage.

Plain urllib: a CLI call is one request, and it must not need an event loop.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Sequence

DEFAULT_URL = "http://127.0.0.1:8080"


class ApiFailure(Exception):
    def __init__(self, message: str, status: int | None = None):
        self.status = status
        super().__init__(message)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help=f"admin API base URL (env PIIGATE_ADMIN_URL, "
                                               f"default {DEFAULT_URL})")
    p.add_argument("--token", default=None, help="approver bearer token (env PIIGATE_ADMIN_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the API's JSON")


def register(subparsers: Any) -> None:
    """Add ``requests``, ``grants`` and ``tokens`` to the ``piigate`` command."""
    req = subparsers.add_parser("requests", help="list, show, approve and deny access requests")
    rs = req.add_subparsers(dest="requests_command", required=True)
    p = rs.add_parser("list", help="list access requests (newest first)")
    p.add_argument("--state", choices=["pending", "approved", "denied", "abandoned", "expired"])
    p.add_argument("--user")
    _common(p)
    p.set_defaults(func=cmd_requests_list)
    p = rs.add_parser("show", help="show one access request")
    p.add_argument("id")
    _common(p)
    p.set_defaults(func=cmd_requests_show)
    p = rs.add_parser("approve", help="approve an access request")
    p.add_argument("id")
    p.add_argument("--duration", required=True, help="how long the grant lasts: 900, 15m, 2h")
    p.add_argument("--scope", choices=["statement", "columns"], default="statement",
                   help="this statement only (default) or these columns for the action")
    p.add_argument("--uses", type=int, help="number of uses (1 = one-time); default unlimited")
    p.add_argument("--comment", default="")
    p.add_argument("--totp", help="your TOTP code, when the policy asks approvers for one")
    _common(p)
    p.set_defaults(func=cmd_requests_approve)
    p = rs.add_parser("deny", help="deny an access request")
    p.add_argument("id")
    p.add_argument("--reason", required=True, help="what the requester is told")
    _common(p)
    p.set_defaults(func=cmd_requests_deny)

    gr = subparsers.add_parser("grants", help="list and revoke grants")
    gs = gr.add_subparsers(dest="grants_command", required=True)
    p = gs.add_parser("list", help="list live grants")
    p.add_argument("--user")
    _common(p)
    p.set_defaults(func=cmd_grants_list)
    p = gs.add_parser("revoke", help="revoke a grant on every gateway instance")
    p.add_argument("id")
    _common(p)
    p.set_defaults(func=cmd_grants_revoke)

    tk = subparsers.add_parser("tokens", help="issue one-time grant tokens")
    ts = tk.add_subparsers(dest="tokens_command", required=True)
    p = ts.add_parser("issue", help="issue a signed single-use grant token for a user")
    p.add_argument("--user", required=True, help="the gateway user who may redeem it")
    p.add_argument("--action", required=True, help="read, write, delete, export, ...")
    p.add_argument("--scope", choices=["statement", "columns"], required=True)
    p.add_argument("--column", action="append", default=[], help="schema.table.column (repeat)")
    p.add_argument("--category", action="append", default=[], help="PII category (repeat)")
    p.add_argument("--statement-key", "--fingerprint", dest="fingerprint", metavar="KEY",
                   help="scope statement: the access request's statement key (sk1:..., shown by "
                        "'requests show'); a fingerprint is refused, it matches other statements")
    p.add_argument("--ttl", required=True, help="redeem before: 1h, 30m ...")
    p.add_argument("--duration", required=True, help="the grant lasts: 15m ...")
    p.add_argument("--uses", type=int, default=1)
    _common(p)
    p.set_defaults(func=cmd_tokens_issue)


# ---------------------------------------------------------------- HTTP


def call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    base = (args.url or os.environ.get("PIIGATE_ADMIN_URL") or DEFAULT_URL).rstrip("/")
    token = args.token or os.environ.get("PIIGATE_ADMIN_TOKEN")
    if not token:
        raise ApiFailure("no approver token: pass --token or set PIIGATE_ADMIN_TOKEN")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}/api/v1/{path}", data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json",
        "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read())["error"]
            message = err["message"]
        except (ValueError, KeyError, TypeError):
            message = e.reason
        raise ApiFailure(f"{message} (HTTP {e.code})", e.code) from None
    except urllib.error.URLError as e:
        raise ApiFailure(f"cannot reach the admin API at {base}: {e.reason}; check --url or "
                         "PIIGATE_ADMIN_URL") from None


def _run(fn):
    def wrapper(args: argparse.Namespace) -> int:
        try:
            fn(args)
            return 0
        except ApiFailure as e:
            print(f"piigate: {e}", file=sys.stderr)
            return 1
    wrapper.__name__ = fn.__name__
    return wrapper


# ---------------------------------------------------------------- output


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def _scope_text(d: dict) -> str:
    cols = [".".join(c) for c in d.get("columns", [])]
    cats = [f"[{c}]" for c in d.get("categories", [])]
    return ", ".join(cols + cats)


def _left(expires_at: float) -> str:
    s = int(expires_at - time.time())
    return "expired" if s <= 0 else f"{s // 60}m{s % 60:02d}s"


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else text)


def _statement_text(g: dict) -> str:
    """A statement grant: the redacted text the approver saw and its key's head (the
    key binds the exact text and search_path)."""
    key = g.get("statement_key") or ""
    shown = g.get("redacted_sql") or g.get("fingerprint") or "-"
    return f"statement {shown} [{key[:12] + '...' if key else 'no key: covers nothing'}]"


def _request_text(r: dict) -> str:
    need = r.get("requirement", {}).get("approvals", 1)
    lines = [f"request   {r['id']}  ({r['state']})",
             f"user      {r['principal']}  roles {', '.join(r.get('roles', [])) or '-'}",
             f"action    {r['action']}",
             f"touches   {_scope_text(r) or '-'}",
             f"statement {r.get('redacted_sql') or '-'}",
             f"key       {r.get('statement_key') or '- (scope columns only)'}",
             f"reason    {r.get('reason') or '-'}",
             f"created   {_when(r['created_at'])}  session {r.get('session_id') or '-'}",
             f"approvals {len(r.get('approvals', []))}/{need}: "
             + (", ".join(a['approver'] for a in r.get('approvals', [])) or "-")]
    if r.get("decided_by"):
        lines.append(f"decided   by {r['decided_by']} at {_when(r.get('decided_at'))}")
    if r.get("denial_reason"):
        lines.append(f"denied    {r['denial_reason']}")
    if r.get("grant_id"):
        lines.append(f"grant     {r['grant_id']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- commands


@_run
def cmd_requests_list(args: argparse.Namespace) -> None:
    q = {k: v for k, v in (("state", args.state), ("user", args.user)) if v}
    data = call(args, "GET", "requests" + (f"?{urllib.parse.urlencode(q)}" if q else ""))
    rows = [(r["id"], r["state"], r["principal"], r["action"], _scope_text(r),
             f"{len(r['approvals'])}/{r.get('requirement', {}).get('approvals', 1)}",
             _when(r["created_at"]), (r.get("reason") or "")[:40]) for r in data["requests"]]
    _emit(args, data, table(rows, ["ID", "STATE", "USER", "ACTION", "COLUMNS", "APPROVALS",
                                   "CREATED", "REASON"]) if rows else "no access requests")


@_run
def cmd_requests_show(args: argparse.Namespace) -> None:
    data = call(args, "GET", f"requests/{urllib.parse.quote(args.id)}")
    _emit(args, data, _request_text(data))


@_run
def cmd_requests_approve(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"duration": int(args.duration) if args.duration.isdigit() else args.duration,
                            "scope": args.scope, "comment": args.comment}
    if args.uses is not None:
        body["uses"] = args.uses
    if args.totp:
        body["totp"] = args.totp
    data = call(args, "POST", f"requests/{urllib.parse.quote(args.id)}/approve", body)
    g = data.get("grant")
    if g:
        text = (f"approved {args.id}: grant {g['id']} for {g['principal']} ({g['scope']}), "
                f"expires {_when(g['expires_at'])}, uses "
                f"{'unlimited' if g['uses_left'] is None else g['uses_left']}")
    else:
        q = data["quorum"]
        text = f"approval recorded for {args.id}: {q['have']} of {q['needed']} approvals"
    _emit(args, data, text)


@_run
def cmd_requests_deny(args: argparse.Namespace) -> None:
    data = call(args, "POST", f"requests/{urllib.parse.quote(args.id)}/deny", {"reason": args.reason})
    _emit(args, data, f"denied {args.id}: {data.get('denial_reason')}")


@_run
def cmd_grants_list(args: argparse.Namespace) -> None:
    q = f"?{urllib.parse.urlencode({'user': args.user})}" if args.user else ""
    data = call(args, "GET", f"grants{q}")
    rows = [(g["id"], g["principal"], g["action"],
             _statement_text(g) if g["scope"] == "statement" else _scope_text(g),
             _left(g["expires_at"]), "unlimited" if g["uses_left"] is None else g["uses_left"],
             ",".join(g["approved_by"]), g["how"]) for g in data["grants"]]
    _emit(args, data, table(rows, ["ID", "USER", "ACTION", "SCOPE", "LEFT", "USES", "APPROVED BY",
                                   "HOW"]) if rows else "no live grants")


@_run
def cmd_grants_revoke(args: argparse.Namespace) -> None:
    data = call(args, "POST", f"grants/{urllib.parse.quote(args.id)}/revoke", {})
    _emit(args, data, f"revoked {args.id} ({data['revoked']['principal']})")


@_run
def cmd_tokens_issue(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"user": args.user, "action": args.action, "scope": args.scope,
                            "columns": args.column, "categories": args.category,
                            "ttl": args.ttl, "duration": args.duration, "uses": args.uses}
    if args.fingerprint:
        body["statement_key"] = args.fingerprint
    data = call(args, "POST", "tokens", body)
    _emit(args, data, f"{data['token']}\n\nfor {data['user']}, redeem before "
                      f"{_when(data['expires_at'])} with:\n  {data['how_to_use']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="piigate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
